"""Data-parallel throughput: the training engine under torchrun with 1, 2, … processes, the same
global batch (``train.batch_size``), the default params.yaml model, the full adversarial step
(critic + penalty + generator). Prints one line per process count with global images/second.

On a 2-core CPU no speed-up is expected (two gloo processes share the cores that one process
already uses); the point there is the cost of the gradient all-reduce. On a GPU machine the
process count is capped by the GPUs present.

    python benchmarks/bench_distributed.py --nproc 1 2 --size 64 --batch 32 --steps 20   # CPU
    python benchmarks/bench_distributed.py --nproc 1 --size 128 --batch 64 --steps 100   # one GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from brainsynth.config import with_overrides

REPO = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    """One rank: train ``--steps`` timed steps after ``--warmup`` untimed ones; rank 0 reports."""
    from brainsynth import distributed
    from brainsynth.config import load
    from brainsynth.data.embedded import build_cohort
    from brainsynth.device import resolve_device
    from brainsynth.training.engine import LossMeter, Trainer

    world = distributed.world_from_env()
    cuda = resolve_device("auto").type == "cuda"
    device = distributed.init(world, cuda) or torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world.size))
    cfg = with_overrides(load(REPO / "params.yaml"), {"data.image_size": args.size, "train.batch_size": args.batch,
                                                        "loss.adv_start_epoch": 0, "loss.kl_warmup_epochs": 0})
    per_subject = cfg.data.embedded.slices_per_subject
    n_subjects = max(3, -(-args.images // per_subject))  # just enough subjects for --images slices
    cohort = build_cohort(with_overrides(cfg, {"data.embedded.n_subjects": n_subjects}).data.embedded, args.size, cfg.seed)
    images, labels = cohort.images[: args.images], cohort.labels[: args.images]
    trainer = Trainer(cfg, images, labels, 3, device, world)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0)).to(trainer.device)

    def run(steps: int) -> None:
        meter = LossMeter()
        for step in range(steps):
            first = (step * trainer.batch_size) % (len(images) - trainer.batch_size) + world.rank * trainer.local_batch
            x, y = trainer.batch(order[first : first + trainer.local_batch])
            meter.merge(trainer.train_step(x, y, progress=1.0))
        trainer._checked(meter)  # one host sync (and all-reduce) per run, as at a log point

    run(args.warmup)
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    run(args.steps)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if world.is_main:
        name = torch.cuda.get_device_name() if cuda else f"CPU, {os.cpu_count()} cores"
        Path(args.report).write_text(json.dumps({"device": name, "images_per_second": args.steps * trainer.batch_size / seconds,
                                                 "local_batch": trainer.local_batch}))
    distributed.shutdown(world)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    for nproc in args.nproc:
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "report.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", __file__, "--worker",
                   "--report", str(report), *(f"--{k}={getattr(args, k)}" for k in ("size", "batch", "images", "steps", "warmup"))]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
            subprocess.run(cmd, check=True, env=env, stderr=subprocess.DEVNULL if nproc == 1 else None)
            result = json.loads(report.read_text())
        print(f"{nproc} process(es) × batch {result['local_batch']} (global {args.batch}), {args.size}², {result['device']}: "
              f"{result['images_per_second']:.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
