"""Where a CPU training step's time goes, against this machine's own roofline.

1. Roofline: a plain fp32 ``a @ b`` (2048², best of 5) and a 64-channel 3×3 convolution at 32²
   (batch 32, forward + backward) — what the processor does on dense work, in GFLOP/s.
2. The step: one full adversarial training step of the default ``params.yaml`` model at 64², batch
   32 (every term on: critic, gradient penalty, grade consistency, Fader), images/s, model FLOPs per
   image (``bench_engine.flops_per_image``) and the achieved GFLOP/s as a share of both roofline figures.
3. By phase: ``torch.profiler`` over ``--steps`` steps with the decoder pass, each part's update
   (critic with its gradient penalty, Fader), the generator update with its backward and the EMA
   wrapped in a ``record_function`` label, inclusive milliseconds per step.
4. By op: self CPU time per op and input shape (convolutions by channel width, GroupNorm, upsampling,
   attention's matmuls, the optimiser's foreach kernels).
5. By module (``--modules``): forward + backward of each building block at the shapes the step uses,
   alone, in NCHW and NHWC, with its GFLOP/s (FLOPs counted by torch's FlopCounterMode) against the
   roofline: convolutions by width, GroupNorm, CBAM, self-attention, upsampling, pooling, the frozen
   consistency ensemble (separate members with torchvision's blur, and side by side), the gradient penalty.

    python benchmarks/profile_cpu.py                    # 2 threads, the default model
    python benchmarks/profile_cpu.py --modules          # only the roofline and the per-module table
    python benchmarks/profile_cpu.py --set loss.consistency.weight=0 --rows 40

Not a test: the latest figures are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections import defaultdict
from pathlib import Path

import torch
import yaml
from torch.profiler import ProfilerActivity, profile, record_function

from brainsynth.config import load, with_overrides
from brainsynth.data.embedded import build_cohort
from brainsynth.training.engine import Trainer

REPO = Path(__file__).resolve().parents[1]


def best_seconds(fn, repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def roofline() -> tuple[float, float]:
    """(sgemm GFLOP/s, 64-channel 3×3 conv fwd+bwd GFLOP/s) on this machine at the current thread count."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    sgemm = 2 * 2048**3 / best_seconds(lambda: a @ b) / 1e9
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    x = torch.randn(32, 64, 32, 32, requires_grad=True)

    def step() -> None:
        conv(x).sum().backward()

    flops = 3 * 2 * 32 * 64 * 64 * 9 * 32 * 32  # forward, input gradient, weight gradient
    return sgemm, flops / best_seconds(step) / 1e9


def labelled(trainer: Trainer) -> None:
    """Wrap the decoder pass, each part's update, the generator update and the EMA of this trainer in
    a profiler label (the engine itself stays unlabelled)."""
    targets = [(trainer, "decode_batch", "decode_batch"), (trainer, "generator_update", "generator_update"),
               (trainer, "update_ema", "update_ema"), *((part, "update", f"{part.name}_update") for part in trainer.parts)]
    for owner, name, label in targets:
        method = getattr(owner, name)

        @functools.wraps(method)
        def wrapped(*args, _method=method, _label=label, **kwargs):
            with record_function(f"phase::{_label}"):
                return _method(*args, **kwargs)

        setattr(owner, name, wrapped)


def module_table(sgemm: float, conv: float) -> None:
    """Forward + backward of each building block alone, NCHW and NHWC (section 5)."""
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode
    from torchvision.transforms.v2.functional import gaussian_blur as torchvision_blur

    from brainsynth.classifiers.ensemble import BlurredEnsemble
    from brainsynth.classifiers.slice import SliceClassifier
    from brainsynth.config import ModelConfig
    from brainsynth.model.blocks import CBAM, SelfAttention
    from brainsynth.model.vaegan import Critic
    from brainsynth.training import losses

    cfg = load(REPO / "params.yaml")
    model_cfg: ModelConfig = cfg.model
    members = [SliceClassifier(3, cfg.evaluate.classifier.width, cfg.evaluate.classifier.dropout).eval()
               for _ in range(cfg.loss.consistency.members)]
    for member in members:
        member.requires_grad_(False)

    class SeparateMembers(nn.Module):  # the ensemble without the CPU surgery: torchvision's blur, one call per member
        def forward(self, x):
            return torch.stack([m(torchvision_blur(x, [7, 7], [1.0, 1.0])) for m in members]).mean(dim=0)

    critic = Critic(model_cfg, 64, 3)
    labels = torch.randint(0, 3, (32,))

    class Penalty(nn.Module):  # the WGAN-GP term as the critic phase computes it (double backward)
        def forward(self, x):
            return losses.gradient_penalty(critic, x, x.flip(0), labels)

    blocks = [
        *[(f"conv 3×3 {c}→{c} at {s}², batch {b}", nn.Conv2d(c, c, 3, padding=1), (b, c, s, s)) for c, s, b in
          ((8, 64, 64), (16, 64, 80), (32, 32, 80), (64, 16, 80), (128, 8, 80))],
        ("GroupNorm + SiLU 16 ch at 64², batch 80", nn.Sequential(nn.GroupNorm(8, 16), nn.SiLU()), (80, 16, 64, 64)),
        ("CBAM 32 ch at 32², batch 80", CBAM(32, model_cfg.cbam_reduction), (80, 32, 32, 32)),
        ("self-attention 64 ch at 16², batch 80", SelfAttention(64), (80, 64, 16, 16)),
        ("bilinear 2× upsampling 16 ch 32²→64², batch 48", nn.Upsample(scale_factor=2.0, mode="bilinear"), (48, 16, 32, 32)),
        ("2×2 average pooling 16 ch at 64², batch 80", nn.AvgPool2d(2), (80, 16, 64, 64)),
        ("consistency ensemble, separate members, 7×7 blur conv, batch 64", SeparateMembers(), (64, 1, 64, 64)),
        ("consistency ensemble, members side by side, matrix blur, batch 64", BlurredEnsemble(members, 1.0), (64, 1, 64, 64)),
        ("gradient penalty (critic, double backward), batch 32", Penalty(), (32, 1, 64, 64)),
    ]
    print("\nby module (forward + backward, input gradient included; best of 5):")
    print("| module | NCHW ms | NHWC ms | NHWC GFLOP/s | % of sgemm | % of conv figure |\n|---|---|---|---|---|---|")
    for name, block, shape in blocks:
        times = {}
        for layout in (torch.contiguous_format, torch.channels_last):
            module = block.to(memory_format=layout)
            x = torch.randn(*shape).contiguous(memory_format=layout).requires_grad_()

            def step() -> None:
                module(x).float().sum().backward()

            times[layout] = best_seconds(step)
        try:
            with FlopCounterMode(display=False) as counter:
                step()
            rate = counter.get_total_flops() / times[torch.channels_last] / 1e9
        except Exception:  # FlopCounterMode cannot trace every double backward
            rate = float("nan")
        cells = ("–", "–", "–") if not rate == rate or rate == 0 else (f"{rate:.0f}", f"{100 * rate / sgemm:.0f} %", f"{100 * rate / conv:.0f} %")
        print(f"| {name} | {times[torch.contiguous_format] * 1e3:.1f} | {times[torch.channels_last] * 1e3:.1f} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="0 = torch's default")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--set", nargs="*", default=[], help="params.yaml overrides, key=value")
    parser.add_argument("--modules", action="store_true", help="only the roofline and the per-module table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from bench_engine import flops_per_image  # beside this script

    overrides = {"data.image_size": args.size, "train.batch_size": args.batch, "train.device": "cpu", "train.hflip": False}
    overrides.update({key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)})
    cfg = with_overrides(load(REPO / "params.yaml"), overrides)
    cohort = build_cohort(with_overrides(cfg, {"data.embedded.n_subjects": 24}).data.embedded, args.size, seed=0)
    sgemm, conv = roofline()
    print(f"CPU, {torch.get_num_threads()} threads; roofline: sgemm 2048² {sgemm:.0f} GFLOP/s, conv 64ch 3×3 32² fwd+bwd {conv:.0f} GFLOP/s")
    if args.modules:
        module_table(sgemm, conv)
        return

    trainer = Trainer(cfg, cohort.images, cohort.labels, 3, torch.device("cpu"))
    # Past the warm-ups and ramps: the full step, every term on.
    progress = max(1.0, cfg.loss.adv_start_epoch + cfg.loss.consistency.ramp_epochs, cfg.loss.kl_warmup_epochs)
    batches = [trainer.batch(torch.arange(i * args.batch, (i + 1) * args.batch) % len(cohort.images)) for i in range(4)]

    def run(n: int) -> None:
        for i in range(n):
            trainer.train_step(*batches[i % 4], progress)

    run(3)
    step_s = min(best_seconds(lambda: run(args.steps), repeats=2) / args.steps, float("inf"))
    counted, gp = flops_per_image(cfg, cohort.images, cohort.labels, torch.device("cpu"))
    rate = args.batch / step_s
    achieved = (counted + gp) * rate / 1e9
    print(f"step: {step_s * 1e3:.0f} ms = {rate:.1f} images/s; {(counted + gp) / 1e9:.2f} GFLOP per image "
          f"({counted / 1e9:.2f} counted + {gp / 1e9:.2f} gradient penalty estimate) = {achieved:.0f} GFLOP/s "
          f"({100 * achieved / sgemm:.0f} % of sgemm, {100 * achieved / conv:.0f} % of the conv figure)")

    labelled(trainer)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        run(args.steps)
    events = prof.key_averages()
    print("\nby phase (inclusive ms per step; the generator update includes the backward of encoder and decoder):")
    print("| phase | ms/step | share |\n|---|---|---|")
    for event in sorted((e for e in events if e.key.startswith("phase::")), key=lambda e: -e.cpu_time_total):
        ms = event.cpu_time_total / 1e3 / args.steps
        print(f"| {event.key[7:]} | {ms:.1f} | {100 * ms / (step_s * 1e3):.0f} % |")

    by_shape = prof.key_averages(group_by_input_shape=True)
    total_self = sum(e.self_cpu_time_total for e in events)
    print(f"\nby op and input shape (self time; {args.rows} largest of {total_self / 1e3 / args.steps:.0f} ms per step):")
    print("| op | input shapes | calls/step | ms/step | share | GFLOP/s |\n|---|---|---|---|---|---|")
    for event in sorted(by_shape, key=lambda e: -e.self_cpu_time_total)[: args.rows]:
        ms = event.self_cpu_time_total / 1e3 / args.steps
        gflops = f"{event.flops / (event.self_cpu_time_total / 1e6) / 1e9:.0f}" if event.flops else "–"
        shapes = str(event.input_shapes)[:60] if event.input_shapes else ""
        print(f"| {event.key} | {shapes} | {event.count / args.steps:.0f} | {ms:.2f} | {100 * event.self_cpu_time_total / total_self:.1f} % | {gflops} |")
    families: dict[str, float] = defaultdict(float)
    for event in events:
        families[event.key] += event.self_cpu_time_total
    print("\nby op (self ms per step, all shapes):")
    for key, value in sorted(families.items(), key=lambda kv: -kv[1])[: args.rows]:
        print(f"  {key:45s} {value / 1e3 / args.steps:8.1f}  {100 * value / total_self:5.1f} %")


if __name__ == "__main__":
    main()
