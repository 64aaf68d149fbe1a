"""How evaluate's numbers are presented: grouped in ``metrics/evaluate.json`` by the metric
catalogue (``brainsynth.catalogue``: realism, anatomy, coverage, utility, diversity,
reconstruction, memorization, the quality columns first), and the results headline: the key numbers in a few lines, each with its
direction (↑ higher is better, ↓ lower) and the reference it must be read against (real-vs-real,
chance). ``make run`` prints the headline; evaluate puts it in its MLflow run's description.

    python -m brainsynth.evaluation.headline [metrics/evaluate.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from brainsynth.catalogue import flattened, grouped
from brainsynth.paths import METRICS_DIR

__all__ = ["flattened", "grouped", "headline", "main"]  # grouped: re-exported (what evaluate writes)


def _fmt(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}"


def clear_of_noise(m: dict, key: str, reference: str) -> bool:
    """A number goes in the headline only when its seed-to-seed std is smaller than the effect it
    shows (its distance from its reference): the in-domain metrics once differed between machines by
    more than the effects they were meant to show."""
    std = m.get(f"{key}_std", 0.0)
    return key in m and reference in m and std < abs(m[key] - m[reference])


def best_use(m: dict) -> str:
    """The use of synthetic slices whose gain ``augment_gain_mean`` reports (``gain_<use>_mean``)."""
    return next((k[len("gain_"):-len("_mean")] for k in sorted(m) if k.startswith("gain_") and k.endswith("_mean")
                 and m[k] == m.get("augment_gain_mean")), "?")


USE_WORDS = {"pretrain": "pretrain on synthetic, fine-tune on real"}


def headline(m: dict) -> list[str]:
    """Lines (at most 10) summarising evaluate's metrics (flat or grouped); absent keys are left out.
    Utility is quoted by the independent judge (``brainsynth.classifiers.judge``) where evaluate ran it."""
    m = flattened(m)
    lines = []
    if "swd" in m:
        line = f"realism       swd {m['swd']:.2f} ↓ (real-vs-real {m.get('swd_real_baseline', float('nan')):.2f})"
        if clear_of_noise(m, "feature_fd", "feature_fd_real"):
            spread = f" ± {m['feature_fd_std']:.1f}" if "feature_fd_std" in m else ""
            line += f"; in-domain FD {m['feature_fd']:.1f}{spread} ↓ (real {m['feature_fd_real']:.1f})"
        lines.append(line)
    if "morph_distance_ratio" in m:
        lines.append(f"anatomy       CSF morphometry {m['morph_distance_ratio']:.1f}× the real-vs-real distance ↓ (≤ 2 is close)")
    if "ms_ssim_samples" in m:
        lines.append(f"diversity     MS-SSIM among samples {_fmt(m['ms_ssim_samples'])} (real {_fmt(m['ms_ssim_real'])}; higher = less diverse)")
    if clear_of_noise(m, "feature_precision", "feature_precision_real") and clear_of_noise(m, "feature_recall", "feature_recall_real"):
        lines.append(f"coverage      precision {m['feature_precision']:.2f} / recall {m['feature_recall']:.2f} ↑ "
                     f"(real {m['feature_precision_real']:.2f} / {m['feature_recall_real']:.2f})")
    if "recon_psnr" in m:
        pca = f" (PCA of z's size {m['recon_psnr_pca']:.2f} dB)" if "recon_psnr_pca" in m else ""
        lines.append(f"reconstruct   PSNR {m['recon_psnr']:.2f} dB ↑{pca}, SSIM {_fmt(m['recon_ssim'])} ↑")
    if "memorization_rate" in m:
        lines.append(f"memorisation  {100 * m['memorization_rate']:.1f} % of samples copy a training slice ↓ "
                     f"(nearest-neighbour ratio {m['nn_ratio']:.2f}, ≥ 1 is safe)")
    judge = "judge_" if "judge_trtr_balanced_accuracy_mean" in m else ""
    if f"{judge}trtr_balanced_accuracy_mean" in m:
        chance = m.get("chance_balanced_accuracy", float("nan"))
        who = "independent judge" if judge else "CNN"
        lines.append(f"utility       {who}, balanced accuracy on real test slices ↑: real-only {_fmt(m[f'{judge}trtr_balanced_accuracy_mean'])}, "
                     f"synthetic-only {_fmt(m[f'{judge}tstr_balanced_accuracy_mean'])}")
        line = (f"              (TSTR ratio {m.get(f'{judge}tstr_ratio', float('nan')):.2f}), "
                f"GAN-test {_fmt(m.get(f'{judge}gan_test_balanced_accuracy', float('nan')))} (chance {_fmt(chance)})")
        if f"{judge}tstr_filtered_balanced_accuracy_mean" in m:
            line += (f"; filtered export (best 1/{m.get('filter_oversample', 0):.0f} of the draws): "
                     f"TSTR {_fmt(m[f'{judge}tstr_filtered_balanced_accuracy_mean'])}, "
                     f"GAN-test {_fmt(m.get(f'{judge}gan_test_filtered_balanced_accuracy', float('nan')))}")
        lines.append(line)
    if "augment_gain_mean" in m:
        use = best_use(m)
        words = USE_WORDS.get(use, f"real + {use[3:]} % synthetic" if use.startswith("mix") else use)
        lines.append(f"              augment gain ↑ (best use: {words}): {m['augment_gain_mean']:+.3f} ± {m['augment_gain_std']:.3f} vs real-only")
        if "augment_gain_vs_duplicate_mean" in m:  # files written before the duplicate-real control lack it
            lines.append(f"              {m['augment_gain_vs_duplicate_mean']:+.3f} ± {m['augment_gain_vs_duplicate_std']:.3f} "
                         "vs as many duplicated real slices (> 0: synthetic slices help)")
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
