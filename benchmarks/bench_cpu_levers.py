"""CPU speed levers of the training step, measured side by side in one process.

Each lever is a ``params.yaml`` override set (``--lever NAME=key=value,key=value``; the first one
is the reference). A trainer is built per lever from the same seed and data; the timing rounds
interleave the levers (``--repeats`` rounds of ``--steps`` full adversarial steps each, the best
round kept), so machine noise hits them alike. Then every lever trains ``--curve-steps`` steps on
the same batch sequence from the same initial weights, and the mean of each loss term over the last
half is printed beside the reference's: a lever is kept only at equal numerics.

    python benchmarks/bench_cpu_levers.py --lever base= --lever nhwc=train.channels_last=true
    python benchmarks/bench_cpu_levers.py --lever base=train.channels_last=false --lever auto= --curve-steps 200

Not a test: the latest figures are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from brainsynth.config import load, with_overrides
from brainsynth.data.embedded import build_cohort
from brainsynth.training.engine import LossMeter, Trainer

REPO = Path(__file__).resolve().parents[1]


def parse_lever(text: str) -> tuple[str, dict]:
    name, _, settings = text.partition("=")
    overrides = {}
    for item in filter(None, re.split(r",(?![^\[]*\])", settings)):  # commas inside [..] belong to a list value
        key, value = item.split("=", 1)
        overrides[key] = yaml.safe_load(value)
    return name, overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lever", action="append", required=True, help="NAME=key=value,key=value (first: the reference)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--curve-steps", type=int, default=0, help="steps of the numerics check (0: skip)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = with_overrides(load(REPO / "params.yaml"), {"data.image_size": args.size, "train.batch_size": args.batch, "train.device": "cpu"})
    cohort = build_cohort(with_overrides(base, {"data.embedded.n_subjects": 24}).data.embedded, args.size, seed=0)
    levers = [parse_lever(text) for text in args.lever]
    configs = {name: with_overrides(base, overrides) for name, overrides in levers}
    progress = max(1.0, base.loss.adv_start_epoch + base.loss.consistency.ramp_epochs, base.loss.kl_warmup_epochs)
    print(f"CPU, {torch.get_num_threads()} threads; {args.size}², batch {args.batch}; {args.repeats} interleaved rounds of {args.steps} full steps")

    trainers = {}
    for name, cfg in configs.items():
        started = time.perf_counter()
        trainers[name] = Trainer(cfg, cohort.images, cohort.labels, 3, torch.device("cpu"))
        print(f"  {name}: built in {time.perf_counter() - started:.1f} s", flush=True)
    order = torch.arange(len(cohort.images))

    def run(trainer: Trainer, n: int, offset: int = 0) -> LossMeter:
        meter = LossMeter()
        for i in range(n):
            start = ((offset + i) * trainer.batch_size) % (len(cohort.images) - trainer.batch_size + 1)
            meter.merge(trainer.train_step(*trainer.batch(order[start : start + trainer.batch_size]), progress))
        return meter

    for name, trainer in trainers.items():  # warm-up (and compilation, where a lever compiles)
        started = time.perf_counter()
        run(trainer, 2)
        print(f"  {name}: first 2 steps {time.perf_counter() - started:.1f} s", flush=True)
    rates: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(args.repeats):
        for name, trainer in trainers.items():
            started = time.perf_counter()
            run(trainer, args.steps)
            rates[name].append(args.steps * trainer.batch_size / (time.perf_counter() - started))
    reference = max(rates[levers[0][0]])
    print("| lever | overrides | images/s (best) | rounds | speed-up |\n|---|---|---|---|---|")
    for name, overrides in levers:
        print(f"| {name} | {', '.join(f'{k}={v}' for k, v in overrides.items()) or '(params.yaml)'} | {max(rates[name]):.1f} | "
              f"{', '.join(f'{r:.1f}' for r in rates[name])} | {max(rates[name]) / reference:.2f}× |")

    if args.curve_steps:
        print(f"\nnumerics: {args.curve_steps} steps from the same seed and batches; mean of each term over the last half")
        curves = {}
        for name, cfg in configs.items():
            trainer = Trainer(cfg, cohort.images, cohort.labels, 3, torch.device("cpu"))
            run(trainer, args.curve_steps // 2)
            curves[name] = run(trainer, args.curve_steps - args.curve_steps // 2, offset=args.curve_steps // 2).means()
        terms = sorted(curves[levers[0][0]])
        print("| term | " + " | ".join(name for name, _ in levers) + " |\n|---" * (len(levers) + 1) + "|")
        for term in terms:
            print(f"| {term} | " + " | ".join(f"{curves[name].get(term, np.nan):.4g}" for name, _ in levers) + " |")


if __name__ == "__main__":
    main()
