"""Where a training step's GPU time goes: torch.profiler over a few adversarial steps.

Prints the step time, the number of kernel launches per step and the top kernels by CUDA time,
to tell launch overhead (many tiny kernels, idle GPU) from arithmetic. GPU only.

    python benchmarks/profile_step.py --size 128 --batch 64
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml
from torch.profiler import ProfilerActivity, profile

from brainsynth.config import load, with_overrides
from brainsynth.data.embedded import build_cohort
from brainsynth.model import blocks
from brainsynth.training.engine import Trainer

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value overrides")
    parser.add_argument("--downsample", choices=["avgpool", "mean"], default="avgpool",
                        help="mean: 2x2 pooling as a mean over a reshaped view (candidate replacement)")
    parser.add_argument("--table", help="write the profiler's kernel table to this file")
    args = parser.parse_args()
    if args.downsample == "mean":
        blocks.downsample2x = lambda x: x.unflatten(3, (x.shape[3] // 2, 2)).unflatten(2, (x.shape[2] // 2, 2)).mean(dim=(3, 5))
    overrides = {"data.image_size": args.size, "train.batch_size": args.batch, "train.compile": args.compile, "train.hflip": False}
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = yaml.safe_load(value)
    cfg = with_overrides(load(REPO / "params.yaml"), overrides)
    cohort = build_cohort(with_overrides(cfg, {"data.embedded.n_subjects": 8}).data.embedded, args.size, seed=0)
    trainer = Trainer(cfg, cohort.images, cohort.labels, 3, torch.device("cuda"))
    progress = max(1.0, cfg.loss.adv_start_epoch, cfg.loss.kl_warmup_epochs)  # the full adversarial step
    batches = [trainer.batch(torch.arange(i * args.batch, (i + 1) * args.batch, device="cuda") % len(cohort.images)) for i in range(4)]

    def run(n: int) -> None:
        for i in range(n):
            trainer.train_step(*batches[i % 4], progress)

    run(10)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    run(30)
    torch.cuda.synchronize()
    step_ms = (time.perf_counter() - t0) / 30 * 1e3
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run(args.steps)
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type.name == "CUDA"]
    launches = sum(e.count for e in kernels) / args.steps
    gpu_ms = sum(e.self_device_time_total for e in kernels) / args.steps / 1e3
    print(f"{torch.cuda.get_device_name()} {args.size}px b{args.batch} compile={args.compile}/{cfg.train.compile_mode} "
          f"channels_last={cfg.train.channels_last} downsample={args.downsample} {' '.join(args.set)}: "
          f"step {step_ms:.2f} ms = {args.batch / step_ms * 1e3:.0f} img/s; kernels {gpu_ms:.2f} ms ({100 * gpu_ms / step_ms:.0f}% busy), "
          f"{launches:.0f} launches/step, peak mem {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    table = events.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=70)
    if args.table:
        with open(args.table, "w") as handle:
            handle.write(table)
    else:
        print(table)


if __name__ == "__main__":
    main()
