"""Ingestion benchmark: a synthetic OASIS-like folder of JPEG slices → 128² uint8, slices/second.

Builds ``--images`` JPEGs of 496×248 RGB (the size and mode of the Kaggle OASIS slices) in two class
folders with OASIS subject names, then times ``brainsynth.data.ingest.ingest`` with one process and
with ``--workers`` (0 = one per core). Not a test: the latest figures are in benchmarks/README.md.

    python benchmarks/bench_ingest.py --images 4000 --size 128
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from brainsynth.config import load, with_overrides
from brainsynth.data.ingest import ingest

REPO = Path(__file__).resolve().parents[1]


def build_folder(root: Path, n_images: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:248, :496]
    for i in range(n_images):
        cls = ("Non Demented", "Mild Dementia")[i % 2]
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        # a noisy bright ellipse (a head) of varying size on black, as RGB like the Kaggle files
        ry, rx = 100 + rng.integers(-10, 10), 90 + rng.integers(-10, 10)
        head = (((yy - 124) / ry) ** 2 + ((xx - 248) / rx) ** 2 < 1) * (140 + 40 * rng.random(yy.shape))
        gray = head.astype(np.uint8)
        Image.fromarray(np.stack([gray] * 3, axis=-1)).save(folder / f"OAS1_{i // 40:04d}_MR1_mpr-1_{100 + i % 40}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0, help="0 = one per CPU core")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        root = Path(tmp) / "Data"
        started = time.perf_counter()
        build_folder(root, args.images)
        print(f"built {args.images} JPEGs of 496x248 RGB in {time.perf_counter() - started:.1f}s; {os.cpu_count()} CPU cores")
        for label, workers in (("1 process", 1), (f"workers={args.workers or os.cpu_count()}", args.workers)):
            cfg = with_overrides(load(REPO / "params.yaml"), {"data.source": str(root), "data.image_size": args.size, "data.workers": workers}).data
            ingest(cfg)  # warm the page cache so both timings read from memory
            started = time.perf_counter()
            result = ingest(cfg)
            seconds = time.perf_counter() - started
            assert len(result.cohort.images) == args.images and not result.skipped
            print(f"ingest {label}: {args.images} slices -> {args.size}x{args.size} uint8 in {seconds:.2f}s = {args.images / seconds:.0f} slices/s")


if __name__ == "__main__":
    main()
