"""How evaluate's numbers are presented: grouped in ``metrics/evaluate.json`` by the metric
catalogue (``evaluation.catalogue``: realism, anatomy, coverage, utility, diversity,
reconstruction, memorization, the quality columns first), and the results headline: the key numbers in a few lines, each with its
direction (↑ higher is better, ↓ lower) and the reference it must be read against (real-vs-real,
chance). ``make run`` prints the headline; evaluate puts it in its MLflow run's description.

    python -m brainsynth.headline [metrics/evaluate.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from brainsynth.evaluation.catalogue import flattened, grouped
from brainsynth.paths import METRICS_DIR

__all__ = ["flattened", "grouped", "headline", "main"]  # grouped: re-exported (what evaluate writes)


def _fmt(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}"


def headline(m: dict) -> list[str]:
    """Lines (at most 10) summarising evaluate's metrics (flat or grouped); absent keys are left out."""
    m = flattened(m)
    lines = []
    if "swd" in m:
        line = f"realism       swd {m['swd']:.2f} ↓ (real-vs-real {m.get('swd_real_baseline', float('nan')):.2f})"
        if "feature_fd" in m:
            line += f"; in-domain FD {m['feature_fd']:.1f} ↓ (real {m['feature_fd_real']:.1f})"
        lines.append(line)
    if "morph_distance_ratio" in m:
        lines.append(f"anatomy       CSF morphometry {m['morph_distance_ratio']:.1f}× the real-vs-real distance ↓ (≤ 2 is close)")
    if "ms_ssim_samples" in m:
        lines.append(f"diversity     MS-SSIM among samples {_fmt(m['ms_ssim_samples'])} (real {_fmt(m['ms_ssim_real'])}; higher = less diverse)")
    if "feature_precision" in m:
        lines.append(f"coverage      precision {m['feature_precision']:.2f} / recall {m['feature_recall']:.2f} ↑ "
                     f"(real {m['feature_precision_real']:.2f} / {m['feature_recall_real']:.2f})")
    if "recon_psnr" in m:
        lines.append(f"reconstruct   PSNR {m['recon_psnr']:.2f} dB ↑, SSIM {_fmt(m['recon_ssim'])} ↑")
    if "memorization_rate" in m:
        lines.append(f"memorisation  {100 * m['memorization_rate']:.1f} % of samples copy a training slice ↓ "
                     f"(nearest-neighbour ratio {m['nn_ratio']:.2f}, ≥ 1 is safe)")
    if "trtr_balanced_accuracy_mean" in m:
        chance = m.get("chance_balanced_accuracy", float("nan"))
        lines.append(f"utility       balanced accuracy on real test slices ↑: real-only {_fmt(m['trtr_balanced_accuracy_mean'])}, "
                     f"synthetic-only {_fmt(m['tstr_balanced_accuracy_mean'])}, "
                     f"real+synthetic {_fmt(m['augmented_balanced_accuracy_mean'])} (chance {_fmt(chance)})")
        lines.append(f"              augment gain {m['augment_gain_mean']:+.3f} ± {m['augment_gain_std']:.3f} ↑ "
                     f"(> 0: synthetic slices help); GAN-test {_fmt(m['gan_test_balanced_accuracy'])} ↑")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else METRICS_DIR / "evaluate.json"
    if not path.is_file():
        print(f"error: {path}: no evaluation yet (run: dvc repro)", file=sys.stderr)
        return 1
    print(f"Results ({path}; ↑ higher is better, ↓ lower):")
    for line in headline(json.loads(path.read_text())):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
