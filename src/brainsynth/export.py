"""Export synthetic slices: N images per class as PNG (and optionally one NIfTI stack per class),
with a manifest listing every file (class, seed) and the model (source, sha256) and the time.

    brainsynth-generate --model models/train/model.pt --n-per-class 100 --out data/synthetic
    brainsynth-generate --model models:/brainsynth/3 --n-per-class 50 --nifti --out synth/
    brainsynth-generate --model runs:/<train run id>/generator ...
    brainsynth-generate --from data/prepared --split train --to-class moderate --out synth/moderate
    brainsynth-generate --n-per-class 100 --oversample 4 --keep 0.25 --out synth/filtered

``--from`` re-renders real slices instead of sampling: each slice of a prepared split (``dvc repro
prepare``'s ``data/prepared``) is encoded with its own grade and decoded with ``--to-class``: the
same anatomy at the requested grade, if the model takes the grade from its label (the manifest
names each image's source slice, subject and grade; ``reports/evaluate/grade_swap.png`` shows
how well the model does it).

``--oversample K --keep FRACTION`` is the filtered export (``brainsynth.classifiers.filtering``): K × the
requested slices are drawn per class and the share FRACTION (default 1/K) that a held-out ensemble
of real-trained classifiers grades most confidently is kept; the ensemble learns from the training
split of ``--filter-data`` (``data/prepared``) with the recipe in ``--params`` (params.yaml).

``--model`` takes a model file or any MLflow URI of one (``runs:/…``, ``models:/…`` of the
registered pyfunc, whose ``artifacts/`` hold the model file).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from brainsynth.checkpoint import CheckpointError
from brainsynth.classifiers.filtering import Selection, draw_and_keep, ensemble_from_prepared
from brainsynth.files import atomic_dir, digest
from brainsynth.inference import SynthModel


def resolve_model_file(source: str) -> Path:
    """A local model file, or an MLflow URI downloaded (from the local store, no network beyond it)."""
    path = Path(source)
    if path.is_file():
        return path
    if "://" not in source and not source.startswith(("runs:/", "models:/")):
        raise CheckpointError(f"--model {source!r}: no such file (give a model file or an MLflow URI such as models:/brainsynth/1)")
    import mlflow

    from brainsynth import tracking

    uri = tracking.tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        # Opening a missing SQLite store would create an empty mlflow.db here and then report the
        # model "not found" without saying where it looked.
        raise CheckpointError(f"--model {source!r}: no MLflow store at {uri} (run inside the brainsynth repo, or set MLFLOW_TRACKING_URI)")
    mlflow.set_tracking_uri(uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source))
    except Exception as err:
        raise CheckpointError(f"--model {source!r}: cannot fetch it from the MLflow store {uri} "
                              f"({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if local.is_file():
        return local
    candidates = sorted(local.rglob("*.pt"))
    if not candidates:
        raise CheckpointError(f"--model {source!r}: no model file (*.pt) in the downloaded artifacts")
    return candidates[0]


PROJECT_MARKERS = (".git", ".dvc", "dvc.yaml", "pyproject.toml", "params.yaml")


def check_out_dir(out_dir: Path, force: bool = False) -> None:
    """Refuse an export folder whose replacement would lose a user's files: the current folder or
    one containing it (always), a file, or a non-empty folder that is not an earlier export of this
    tool (recognised by its manifest) unless ``force``. One-line ValueError naming the folder."""
    out_dir = Path(os.path.abspath(out_dir))
    here = Path.cwd()
    if here == out_dir or out_dir in here.parents:
        raise ValueError(f"--out {str(out_dir)!r} is the current folder or contains it: choose a new or empty folder for the export")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {str(out_dir)!r} is a file, not a folder")
    marker = next((name for name in PROJECT_MARKERS if (out_dir / name).exists()), None)
    if marker:
        raise ValueError(f"--out {str(out_dir)!r} holds {marker}: a project folder is never replaced, not even with --force")
    if not force and out_dir.is_dir() and any(out_dir.iterdir()) and not _is_export(out_dir):
        raise ValueError(f"--out {str(out_dir)!r} is a non-empty folder that is not an earlier export (no brainsynth manifest.json); "
                         "the export replaces its folder whole, so choose a new folder or pass --force to replace it")
    if not force and out_dir.is_dir() and _is_export(out_dir):
        listed = {entry["path"] for entry in json.loads((out_dir / "manifest.json").read_text())["files"]} | {"manifest.json"}
        extra = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file() and str(p.relative_to(out_dir)) not in listed)
        if extra:
            raise ValueError(f"--out {str(out_dir)!r} is an earlier export that now also holds {extra[0]!r}"
                             f"{f' and {len(extra) - 1} more files' if len(extra) > 1 else ''} (not in its manifest); "
                             "move them, choose a new folder or pass --force to replace it whole")


def _is_export(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and isinstance(manifest.get("files"), list) and "classes" in manifest


def export(model: SynthModel, out_dir: Path, n_per_class: int, seed: int, nifti: bool, model_source: str, model_file: Path | None = None,
           force: bool = False, selection: Selection | None = None) -> dict:
    """Write the images and manifest into ``out_dir`` atomically (a temp folder moved into place);
    ``check_out_dir`` first, so no user folder is replaced by accident. ``model_file``: the file
    behind ``model_source``, whose digests the manifest records. ``selection``
    (``filtering.Selection``): the filtered export — each class's slices are the most confidently
    graded of ``oversample`` × as many draws of the same noise stream; the manifest records the
    filter and its ensemble, and each slice's score and index in the draw."""
    check_out_dir(out_dir, force)
    class_names = model.class_names or ["unlabelled"]
    if selection is not None and selection.trained_on.get("class_names", class_names) != class_names:
        raise ValueError(f"--filter-data {selection.trained_on.get('data')!r}: its classes {selection.trained_on['class_names']} "
                         f"differ from the model's {class_names}")
    with atomic_dir(Path(out_dir)) as staging:
        files = []
        for k, name in enumerate(class_names):
            class_seed = seed + 1000 * k  # each class its own noise stream: adding classes leaves the others unchanged
            if selection is None:
                images, scores, drawn = model.sample(np.full(n_per_class, k), class_seed), None, np.arange(n_per_class)
            else:
                images, scores, drawn = draw_and_keep(model.sample, selection.ensemble, k, *selection.counts(n_per_class), class_seed)
            folder = staging / _safe(name)
            folder.mkdir()
            for i, image in enumerate(images):
                path = folder / f"{_safe(name)}_{i:05d}.png"
                Image.fromarray(image).save(path)
                files.append({"path": str(path.relative_to(staging)), "kind": "png", "class": name, "class_index": k, "index": i, "seed": class_seed,
                              **({} if scores is None else {"draw_index": int(drawn[i]), "filter_score": round(float(scores[i]), 6)})})
            if nifti:
                path = staging / f"{_safe(name)}.nii.gz"
                save_nifti_stack(images, model.pixel_mm, f"brainsynth {name}: {len(images)} independent synthetic slices", path)
                files.append({"path": path.name, "kind": "nifti", "class": name, "class_index": k, "n_slices": len(images), "seed": class_seed})
        manifest = {"model": model_source, "model_digest": digest(model_file) if model_file else "", "model_sha256": _sha256(model_file),
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seed": seed, "n_per_class": n_per_class,
                    "image_size": model.image_size, "pixel_mm": model.pixel_mm, "classes": class_names, "nifti": nifti,
                    **({} if selection is None else {"filter": selection.describe(n_per_class)}), "files": files}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def regrade_export(model: SynthModel, out_dir: Path, source: Path, split: str, to_class: str, model_source: str,
                   model_file: Path | None = None, force: bool = False) -> dict:
    """Every slice of ``split`` in the prepared data at ``source`` re-rendered at grade ``to_class``
    (``SynthModel.regrade``), as PNGs with a manifest naming each one's source slice, written
    atomically like ``export``. One-line ValueError for an unknown class, split or a model/data mismatch."""
    from brainsynth.data import prepared

    check_out_dir(out_dir, force)
    if to_class not in model.class_names:
        raise ValueError(f"--to-class {to_class!r}: the model knows {', '.join(model.class_names) or 'no classes'}")
    try:
        data = prepared.load(source)
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"--from {str(source)!r}: not a prepared dataset (run `dvc repro prepare`; {str(err).splitlines()[0]})") from None
    if data.class_names != model.class_names or data.image_size != model.image_size:
        raise ValueError(f"--from {str(source)!r}: its classes {data.class_names} / size {data.image_size} differ from the model's "
                         f"{model.class_names} / {model.image_size}")
    index = np.flatnonzero(data.splits == split)
    if len(index) == 0:
        raise ValueError(f"--split {split!r}: no slices in {source} (splits: {', '.join(sorted(set(data.splits.tolist())))})")
    target = model.class_names.index(to_class)
    images = model.regrade(data.images[index], data.labels[index], np.full(len(index), target))
    with atomic_dir(Path(out_dir)) as staging:
        folder = staging / _safe(to_class)
        folder.mkdir()
        files = []
        for i, (image, source_index) in enumerate(zip(images, index)):
            path = folder / f"{_safe(to_class)}_{i:05d}.png"
            Image.fromarray(image).save(path)
            files.append({"path": str(path.relative_to(staging)), "kind": "png", "class": to_class, "class_index": target, "index": i,
                          "source_index": int(source_index), "source_subject": str(data.subjects[source_index]),
                          "source_class": data.class_names[int(data.labels[source_index])]})
        manifest = {"model": model_source, "model_digest": digest(model_file) if model_file else "", "model_sha256": _sha256(model_file),
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "mode": "regrade", "source": str(source),
                    "source_digest": digest(Path(source)), "split": split, "image_size": model.image_size, "pixel_mm": model.pixel_mm,
                    "classes": [to_class], "files": files}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def save_nifti_stack(images: np.ndarray, pixel_mm: float | None, description: str, path: Path) -> None:
    """(n, S, S) uint8 slices → one NIfTI volume (S, S, n) in mm, centred on the origin.

    Rows are flipped so that nibabel's RAS orientation shows the slices upright in a viewer, as the
    PNGs are. The third axis stacks independent samples, not neighbouring slices; it gets the
    in-plane spacing so that viewers draw square voxels. ``pixel_mm`` None (2-D training images
    carry no spacing): 1 mm, and the description says so."""
    import nibabel as nib

    spacing = pixel_mm or 1.0
    volume = np.ascontiguousarray(np.transpose(images[:, ::-1, :], (2, 1, 0)))
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -(np.asarray(volume.shape) - 1) / 2.0 * spacing
    image = nib.Nifti1Image(volume, affine)
    image.header.set_xyzt_units(xyz="mm")
    text = description if pixel_mm else f"{description}; pixel size unknown (1 mm)"
    image.header["descrip"] = text.encode("ascii", "replace")[:79]  # the header field holds 80 bytes
    nib.save(image, path)


def _sha256(path: Path | None) -> str:
    if path is None:
        return ""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def n_images(manifest: dict) -> int:
    """PNG slices listed in an export's manifest."""
    return sum(1 for entry in manifest["files"] if entry.get("kind", "png") == "png")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="brainsynth-generate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/train/model.pt", help="model file or MLflow URI (runs:/…, models:/…)")
    parser.add_argument("--out", default="data/synthetic", help="output folder: new, empty or an earlier export (replaced atomically)")
    parser.add_argument("--force", action="store_true", help="replace --out even when it holds other files")
    parser.add_argument("--n-per-class", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nifti", action="store_true", help="also write one NIfTI stack per class")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--from", dest="source", help="re-render the real slices of this prepared dataset (data/prepared) instead of sampling")
    parser.add_argument("--split", default="train", help="with --from: the split to re-render (train, val, test)")
    parser.add_argument("--to-class", help="with --from: the grade to render them at")
    parser.add_argument("--oversample", type=int, default=1, metavar="K",
                        help="filtered export: draw K × --n-per-class slices per class and keep those a held-out ensemble of real-trained "
                             "classifiers grades most confidently (class balance kept); 1 = no filter")
    parser.add_argument("--keep", type=float, default=0.0, metavar="FRACTION",
                        help="with --oversample: share of the draws kept per class (default 1/K: --n-per-class slices)")
    parser.add_argument("--filter-data", default="data/prepared",
                        help="with --oversample: the prepared dataset whose training split the ensemble learns from")
    parser.add_argument("--params", default="params.yaml",
                        help="with --oversample: the params file with the ensemble's recipe (evaluate.filter, evaluate.classifier)")
    args = parser.parse_args(argv)
    if (args.source is None) != (args.to_class is None):
        parser.error("--from and --to-class go together")
    if not 1 <= args.oversample <= 64:
        parser.error(f"--oversample must be 1..64 (got {args.oversample})")
    if not 0.0 <= args.keep <= 1.0 or (args.keep and args.oversample == 1):
        parser.error(f"--keep must be a share between 0 and 1, with --oversample above 1 (got --keep {args.keep}, --oversample {args.oversample})")
    if args.keep and round(args.keep * args.oversample * args.n_per_class) < 1:
        parser.error(f"--keep {args.keep} of {args.oversample} × {args.n_per_class} draws per class keeps no slice")
    if args.source and args.oversample > 1:
        parser.error("--oversample filters samples drawn from the prior; --from re-renders given slices (use one or the other)")
    from brainsynth.serving import MAX_SEED, max_images

    try:
        cap = max_images()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not 1 <= args.n_per_class <= cap:
        parser.error(f"--n-per-class must be 1..{cap} (got {args.n_per_class}; the cap is BRAINSYNTH_MAX_IMAGES)")
    if not 0 <= args.seed <= MAX_SEED:
        parser.error(f"--seed must be 0..{MAX_SEED} (got {args.seed})")
    try:
        check_out_dir(Path(args.out), args.force)  # before loading anything
        model_file = resolve_model_file(args.model)
        model = SynthModel.load(model_file, args.device)
        if args.source:
            manifest = regrade_export(model, Path(args.out), Path(args.source), args.split, args.to_class, args.model, model_file, args.force)
            print(f"wrote {n_images(manifest)} slices of {args.source} ({args.split}) re-rendered as {args.to_class} to {args.out}")
            return 0
        selection = None
        if args.oversample > 1:
            selection = filter_selection(args, model.device)
        manifest = export(model, Path(args.out), args.n_per_class, args.seed, args.nifti, args.model, model_file, force=args.force,
                          selection=selection)
    except (CheckpointError, OSError, ValueError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 1
    if "filter" in manifest:
        f = manifest["filter"]
        print(f"wrote {n_images(manifest)} images ({f['kept_per_class']} per class, the best of {f['drawn_per_class']} draws: "
              f"{', '.join(manifest['classes'])}) to {args.out}")
        return 0
    print(f"wrote {n_images(manifest)} images ({args.n_per_class} per class: {', '.join(manifest['classes'])}) to {args.out}")
    return 0


def filter_selection(args: argparse.Namespace, device) -> Selection:
    """The filtered export's settings from the command line, its ensemble trained on ``--filter-data``
    with the recipe of ``--params`` (evaluate.filter.members/epochs, evaluate.classifier; its seed: --seed)."""
    from brainsynth.config import load

    if not Path(args.params).is_file():
        raise ValueError(f"--params {args.params!r}: no such file (--oversample takes the ensemble's recipe from it: evaluate.filter, "
                         "evaluate.classifier; run in the brainsynth repo or pass --params)")
    cfg = load(args.params)
    ensemble, trained_on = ensemble_from_prepared(args.filter_data, cfg.evaluate.filter.members, cfg.evaluate.filter.epochs, args.seed,
                                                  device, cfg.evaluate.classifier)
    return Selection(ensemble, args.oversample, args.keep, {**trained_on, "seed": args.seed, "params": args.params})


if __name__ == "__main__":
    sys.exit(main())
