"""Engine benchmark: this training engine vs a seed-style loop, same model and batch size.

(a) engine: uint8 data resident on the device, batches gathered by index, bf16 autocast +
    fused Adam on CUDA (channels_last if train.channels_last), losses read back every ``train.log_every`` steps.
(b) seed-style: eager fp32, a torch Dataset that decodes a PNG file with PIL per item every
    epoch (DataLoader, no workers), ``.item()`` on every loss every step.

Prints images/second for both and their ratio (line containing 'ratio'), model FLOPs per
training image (forward + backward + gradient penalty, counted by torch's FlopCounterMode) and,
on a GPU, MFU against the device's dense bf16 peak. Not a test: the latest figures are in benchmarks/README.md.

    python benchmarks/bench_engine.py --size 64 --batch 32            # CPU default
    python benchmarks/bench_engine.py --size 128 --batch 64 --steps 200   # on a GPU
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from brainsynth.config import Config, load, with_overrides
from brainsynth.data.embedded import build_cohort
from brainsynth.training.engine import LossMeter, Trainer

REPO = Path(__file__).resolve().parents[1]

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets.
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "L40S": 362e12}


class PngSlices(Dataset):
    """The seed's data path: one PNG decoded by PIL per item, every epoch."""

    def __init__(self, files: list[Path], labels: np.ndarray):
        self.files, self.labels = files, labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        with Image.open(self.files[index]) as image:
            array = np.asarray(image.convert("L"), dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(array).unsqueeze(0), int(self.labels[index])


def bench_engine(cfg: Config, images, labels, device, steps: int, warmup: int) -> float:
    trainer = Trainer(cfg, images, labels, 3, device)
    progress = max(1.0, cfg.loss.adv_start_epoch, cfg.loss.kl_warmup_epochs)  # measure the adversarial (full) step
    order = torch.randperm(len(images)).to(device)
    window = LossMeter()

    def run(n: int) -> None:
        nonlocal window
        for i in range(n):
            start = (i * trainer.batch_size) % (len(images) - trainer.batch_size + 1)
            x, y = trainer.batch(order[start : start + trainer.batch_size])
            window.merge(trainer.train_step(x, y, progress))
            if trainer.step % cfg.train.log_every == 0:
                window.means()
                window = LossMeter()

    run(warmup)
    _sync(device)
    t0 = time.perf_counter()
    run(steps)
    window.means()
    _sync(device)
    return steps * trainer.batch_size / (time.perf_counter() - t0)


def bench_seed_style(cfg: Config, files, labels, device, steps: int, warmup: int) -> float:
    eager = with_overrides(cfg, {"train.bf16": False, "train.compile": False, "train.hflip": False})
    size = np.asarray(Image.open(files[0])).shape[-1]
    placeholder = np.zeros((cfg.train.batch_size, size, size), np.uint8)  # builds the model; batches come from the loader
    trainer = Trainer(eager, placeholder, np.zeros(cfg.train.batch_size, np.int64), 3, device)
    trainer.memory_format = torch.contiguous_format
    trainer.model.to(memory_format=torch.contiguous_format)
    progress = max(1.0, cfg.loss.adv_start_epoch, cfg.loss.kl_warmup_epochs)
    loader = DataLoader(PngSlices(files, labels), batch_size=cfg.train.batch_size, shuffle=True, drop_last=True, num_workers=0)

    def run(n: int) -> None:
        done = 0
        while done < n:
            for x, y in loader:
                meter = trainer.train_step(x.to(device), y.to(device), progress)
                _ = [value.item() for value in meter.sums.values()]  # the seed logged every loss every step
                done += 1
                if done >= n:
                    return

    run(warmup)
    _sync(device)
    t0 = time.perf_counter()
    run(steps)
    _sync(device)
    return steps * cfg.train.batch_size / (time.perf_counter() - t0)


def flops_per_image(cfg: Config, images, labels, device) -> tuple[float, float]:
    """FLOPs per image of one adversarial training step: (counted, gradient-penalty estimate).

    FlopCounterMode cannot trace the penalty's autograd.grad(create_graph=True), so the step is
    counted without it, and the penalty is estimated as 4 critic forwards on the batch (forward,
    input-gradient backward and the double backward through it), amortised over gp_every.
    """
    no_gp = with_overrides(cfg, {"loss.gp_weight": 0.0})
    trainer = Trainer(no_gp, images[: cfg.train.batch_size * 2], labels[: cfg.train.batch_size * 2], 3, device)
    x, y = trainer.batch(torch.arange(trainer.batch_size, device=device))
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(x, y, max(1.0, cfg.loss.adv_start_epoch, cfg.loss.kl_warmup_epochs))
    counted = counter.get_total_flops()
    with FlopCounterMode(display=False) as critic_counter, torch.no_grad():
        trainer.model.critic(x, y if trainer.model.n_classes else None)
    gp_estimate = 4 * critic_counter.get_total_flops() / cfg.loss.gp_every if cfg.loss.gp_weight > 0 else 0.0
    return counted / trainer.batch_size, gp_estimate / trainer.batch_size


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved measurements of each; the best is kept")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile encoder, decoder and critic scoring (CUDA)")
    parser.add_argument("--set", nargs="*", default=[], help="extra params.yaml overrides, key=value")
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else "cpu" if args.device == "auto" else args.device)
    overrides = {"data.image_size": args.size, "train.batch_size": args.batch, "train.compile": args.compile}
    overrides.update({key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)})
    cfg = with_overrides(load(REPO / "params.yaml"), overrides)
    n_subjects = max(3, args.images // cfg.data.embedded.slices_per_subject + 1)
    cohort = build_cohort(with_overrides(cfg, {"data.embedded.n_subjects": n_subjects}).data.embedded, args.size, seed=0)
    images, labels = cohort.images[: args.images], cohort.labels[: args.images]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; image {args.size}x{args.size}, batch {args.batch}, {args.steps} timed steps after {args.warmup} warm-up")

    # Same augmentation for both (none: the seed had none); measurements interleaved and
    # repeated, best of each kept, so that machine noise does not decide the ratio.
    cfg = with_overrides(cfg, {"train.hflip": False})
    seed_rates, engine_rates = [], []
    with tempfile.TemporaryDirectory() as folder:
        files = []
        for index, image in enumerate(images):
            path = Path(folder) / f"slice_{index:05d}.png"
            Image.fromarray(image).save(path)
            files.append(path)
        for _ in range(args.repeats):
            seed_rates.append(bench_seed_style(cfg, files, labels, device, args.steps, args.warmup))
            engine_rates.append(bench_engine(cfg, images, labels, device, args.steps, args.warmup))
    seed_rate, engine_rate = max(seed_rates), max(engine_rates)
    # Counted after the timing: FlopCounterMode's module hooks must not be live while compiling.
    counted, gp_estimate = flops_per_image(cfg, images, labels, device)
    flops = counted + gp_estimate
    print(f"model FLOPs per training image: {flops / 1e9:.3f} GFLOP "
          f"(critic + generator step counted: {counted / 1e9:.3f}; gradient penalty estimated: {gp_estimate / 1e9:.3f})")
    print(f"seed-style loop: {seed_rate:.1f} images/s (runs: {', '.join(f'{r:.1f}' for r in seed_rates)})")
    print(f"engine:          {engine_rate:.1f} images/s (runs: {', '.join(f'{r:.1f}' for r in engine_rates)})")
    print(f"ratio engine/seed-style: {engine_rate / seed_rate:.2f}x")
    if device.type == "cuda":
        peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
        if peak:
            print(f"MFU engine: {100 * flops * engine_rate / peak:.1f}% of {peak / 1e12:.0f} TFLOP/s bf16 peak "
                  f"(seed-style: {100 * flops * seed_rate / peak:.1f}%)")
        else:
            print(f"MFU: unknown bf16 peak for {name}; achieved {flops * engine_rate / 1e12:.2f} TFLOP/s")


if __name__ == "__main__":
    main()
