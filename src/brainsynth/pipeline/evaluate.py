"""evaluate: quality of the trained model on the test split → metrics/evaluate.json + figures.

The metric families are computed in ``evaluation.families`` (and the utility protocol in
``evaluation.downstream``); what each metric means, its group, direction and reference is its row in
``brainsynth.catalogue`` (``docs/metrics.md`` is generated from it). This module loads the model and
the data, draws the samples once, runs the families, writes the metrics file, the figures and the
MLflow run, and moves the registry's aliases.
"""

from __future__ import annotations

import logging
import time

import mlflow
import numpy as np

from brainsynth import metrics as M
from brainsynth import provenance, tracking
from brainsynth.catalogue import grouped
from brainsynth.checkpoint import CheckpointError, load_safe, save_atomic
from brainsynth.classifiers import filtering
from brainsynth.classifiers.slice import new_classifier
from brainsynth.config import Config
from brainsynth.data import prepared
from brainsynth.device import resolve_device
from brainsynth.evaluation.downstream import use_names, utility
from brainsynth.evaluation.families import Evaluation, compute
from brainsynth.evaluation.headline import headline
from brainsynth.files import atomic_dir, digest
from brainsynth.inference import SynthModel
from brainsynth.paths import EVALUATE_DIR, MODEL_FILE, PREPARED_DIR, UTILITY_CACHE
from brainsynth.pipeline.stage import mlflow_run, upstream_tags, write_metrics
from brainsynth.viz import class_grid, intensity_histograms, labelled_grid, morphometry_figure, spread_indices, utility_bars


def run(cfg: Config, log: logging.Logger) -> None:
    started = time.perf_counter()
    upstream = upstream_tags("train", MODEL_FILE)
    with mlflow_run("evaluate", cfg, upstream):
        data = prepared.load(PREPARED_DIR)
        tracking.log_dataset(*data.split("test"), PREPARED_DIR, "evaluation")
        model = SynthModel.load(MODEL_FILE, resolve_device(cfg.train.device), cfg.train.bf16)
        rng = np.random.default_rng(cfg.seed)
        (test_images, test_labels), (train_images, train_labels) = data.split("test"), data.split("train")
        n = min(cfg.evaluate.n_images, len(test_images))
        pick = np.sort(rng.choice(len(test_images), n, replace=False))
        real, real_labels = test_images[pick], test_labels[pick]
        log.info("evaluating on %d test images (%d classes)", n, len(data.class_names))
        samples = model.sample(real_labels, cfg.seed + 1)
        e = Evaluation(real, real_labels, samples, model.reconstruct(real, real_labels), train_images, train_labels, data.class_names,
                       cfg.seed, (cfg.swd.patches_per_image, cfg.swd.directions), cfg.evaluate.n_pairs, rng,
                       latent_numbers=model.vae.latent_dim)
        if len(data.class_names) > 1 and cfg.evaluate.utility_epochs > 0:
            graded = {"gan_test": (e.samples, real_labels), "recon_class": (e.recon, real_labels), "real_class": (real, real_labels)}
            train_subjects = data.subjects[data.splits == "train"]
            e.utility = lambda rng: utility_metrics(cfg, model, train_images, train_labels, train_subjects, test_images, test_labels,
                                                    data.class_names, graded, rng, log)
        else:
            e.notes["utility"] = "skipped: needs class labels (more than one class)" if len(data.class_names) <= 1 else "skipped: evaluate.utility_epochs = 0"
        results = {"n_images": n, **compute(e)}
        results["seconds"] = round(time.perf_counter() - started, 2)
        write_figures(cfg, model, data, e, results, data.subjects[data.splits == "test"][pick])
        write_metrics("evaluate", grouped(results))
        mlflow.log_metrics(results)
        if cfg.mlflow.registered_model:
            decide_champion(cfg, upstream.get("upstream_run_id", ""), results, log)
        summary = headline(results)
        mlflow.set_tag("mlflow.note.content", tracking.describe("evaluate", upstream, "\n".join(f"- {line.strip()}" for line in summary)))
        log.info("results:\n  %s", "\n  ".join(summary))
        mlflow.set_tags({f"note_{k}": v for k, v in e.notes.items()})
        for key, note in e.notes.items():
            log.info("%s: %s", key, note)
        for png in sorted(EVALUATE_DIR.glob("*.png")):
            mlflow.log_artifact(str(png), artifact_path="figures")


def write_figures(cfg: Config, model: SynthModel, data: prepared.PreparedData, e: Evaluation, results: dict, subjects: np.ndarray) -> None:
    """reports/evaluate/: samples per class, reconstructions, real vs generated, grey-level
    histograms, the grade swap, the memorisation pairs, morphometry, nearest real slices, utility bars (and CSV)
    and latent interpolations, all or nothing."""
    real, real_labels, samples, recon = e.real, e.real_labels, e.samples, e.recon
    audit = e.extras["audit"]
    with atomic_dir(EVALUATE_DIR) as staging:
        class_grid(model.sample, data.class_names, 10, cfg.seed + 2, staging / "samples_per_class.png", "generated samples per class (EMA decoder)")
        # Figure rows drawn across classes, subjects and slice levels (own generator: the metrics' draws stay as they were).
        shown = spread_indices(real_labels, subjects, 10, np.random.default_rng(cfg.seed + 5))
        m = min(cfg.evaluate.n_recon_examples, len(shown))
        inputs, outputs = real[shown[:m]], recon[shown[:m]]
        diff = np.abs(inputs.astype(np.int16) - outputs.astype(np.int16)).astype(np.uint8)
        labelled_grid([inputs, outputs, diff], ["input", "reconstruction", "|difference|"], staging / "reconstructions.png",
                      title=f"test reconstructions: PSNR {results['recon_psnr']:.1f} dB, SSIM {results['recon_ssim']:.3f}", heat_rows=(2,))
        names = data.class_names or ["unlabelled"]
        if len(data.class_names) > 1:
            shown_labels = real_labels[shown[:m]]
            regraded = [model.regrade(inputs, shown_labels, np.full(m, k)) for k in range(len(names))]
            labelled_grid([inputs, *regraded], ["input", *[f"as {name}" for name in names]], staging / "grade_swap.png",
                          col_labels=[names[k] for k in shown_labels],
                          title="test slices re-rendered at every grade (posterior mean decoded with each grade)")
        labelled_grid([real[shown], samples[shown]], ["real (test)", "generated\n(same class)"], staging / "real_vs_generated.png",
                      col_labels=[names[k] for k in real_labels[shown]],
                      title=f"SWD {results['swd']:.1f}" + (f" (real-vs-real {results['swd_real_baseline']:.1f})"
                                                           if "swd_real_baseline" in results else ""))
        intensity_histograms(real, samples, staging / "intensity_histogram.png", title=f"grey levels of {len(real)} real test slices and as many samples")
        closest = np.argsort(audit["_generated_distances"])[:8]
        train_match = e.train_images[audit["_nearest_train_index"][closest]]
        train_match = np.where(audit["_nearest_is_mirrored"][closest][:, None, None], train_match[:, :, ::-1], train_match)
        labelled_grid([samples[closest], train_match], ["generated", "nearest train"], staging / "memorization.png",
                      col_labels=[f"{d:.1f}" for d in audit["_generated_distances"][closest]],
                      title=f"closest generated/train pairs (RMS grey-level distance); nn_ratio {results['nn_ratio']:.2f}, "
                            f"memorization_rate {results['memorization_rate']:.3f}")
        morphometry_figure(*e.extras["morphometry"], staging / "morphometry.png",
                           title="CSF area fraction per class (ventricles + sulci inside the brain mask)")
        nearest_real_figure(samples, real_labels, e.train_images, e.train_labels, data.class_names, staging / "nearest_real.png")
        if e.references:
            uses = use_names(cfg.evaluate.synthetic_per_real, cfg.evaluate.pretrain)
            kinds = ["trtr", "tstr", *uses, "tstr_filtered", *[f"{use}_filtered" for use in uses], "judge_trtr", "judge_tstr", "judge_tstr_filtered"]
            utility_bars(results, kinds, results["chance_balanced_accuracy"], staging / "utility.png",
                         title=f"classifiers on real test slices ({cfg.evaluate.utility_seeds} seeds, mean ± std)")
            write_utility_csv(results, kinds, staging / "utility.csv")
        strips = [model.interpolate(k, cfg.seed + 4, steps=10) for k in range(max(len(data.class_names), 1))]
        labelled_grid(strips, data.class_names, staging / "interpolation.png", title="latent interpolation (spherical, between two random z)")


def decide_champion(cfg: Config, train_run_id: str, results: dict, log: logging.Logger) -> None:
    """Tag the evaluated model's registry version with its metrics and move ``champion`` when it
    beats the current one (``brainsynth.registry``)."""
    from brainsynth import registry

    name = cfg.mlflow.registered_model
    version = registry.version_of_run(name, train_run_id)
    if version is None:
        log.info("registry: no version of %s registered by the evaluated training run: champion unchanged", name)
        return
    message = registry.promote(name, version, results, cfg.mlflow.champion_metric, tracking.prepared_data_hash(PREPARED_DIR))
    mlflow.set_tag("registry", message)
    log.info("registry: %s", message)


def utility_metrics(cfg: Config, model: SynthModel, train_images, train_labels, train_subjects, test_images, test_labels,
                    class_names: list[str], graded: dict, rng: np.random.Generator, log: logging.Logger):
    """The downstream-utility summary (``downstream.utility``, with the independent judge, the
    grades of ``graded`` and, with ``evaluate.filter.oversample`` > 1, the filtered export:
    ``filtering``'s held-out ensemble is trained on folds of the training split and the filtered
    samples of ``graded["gan_test"]``'s classes are graded as ``gan_test_filtered``) and each seed's
    real-trained CNN, from the cache when the same model, data and utility settings were scored
    before (the classifiers are most of evaluate's time; knobs like ``evaluate.n_pairs`` do not touch them)."""
    n_classes = len(class_names)
    ev = cfg.evaluate
    m = min(ev.utility_images or len(train_images), len(train_images))
    pick = np.sort(rng.choice(len(train_images), m, replace=False))
    seeds = [cfg.seed + 100 * i for i in range(ev.utility_seeds)]
    key = utility_cache_key(cfg, model)
    cached = UTILITY_CACHE / f"utility-{key}.pt"
    if cached.is_file():
        try:
            stored = load_safe(cached)
            references = []
            for state in stored["references"]:
                references.append(new_classifier(n_classes, ev.classifier))
                references[-1].load_state_dict(state)
            log.info("utility: reusing the classifiers scored for this model, data and settings (%s)", cached)
            return {k: float(v) for k, v in stored["summary"].items()}, [r.to(model.device).eval() for r in references]
        except (CheckpointError, KeyError, RuntimeError) as err:
            log.warning("utility cache %s unusable (%s): retraining", cached, err)
    filtered, ensemble = None, None
    # A small cohort (data.train_fraction) may have fewer subjects of a class than evaluate.filter.members folds: fewer folds then.
    folds = min(ev.filter.members, filtering.most_folds(train_labels[pick], train_subjects[pick]))
    if ev.filter.oversample > 1 and folds < 2:
        log.warning("filtered export not scored: a class has %d training subject (the held-out ensemble needs 2 folds)", folds)
    elif ev.filter.oversample > 1:
        log.info("filtered export: training its held-out ensemble (%d members, folds of the training subjects)", folds)
        ensemble = filtering.train_ensemble(train_images[pick], train_labels[pick], train_subjects[pick], n_classes, folds,
                                            ev.filter.epochs, cfg.seed, model.device, ev.classifier)
        filtered = filtering.filtered_sampler(model.sample, ensemble, ev.filter.oversample)
        labels = graded["gan_test"][1]
        graded = {**graded, "gan_test_filtered": (filtered(labels, cfg.seed + 1), labels)}
    result = utility(train_images[pick], train_labels[pick], model.sample, test_images, test_labels, n_classes, ev.utility_epochs,
                     seeds, ev.synthetic_per_real, ev.pretrain, model.device, ev.classifier, ev.judge, graded, class_names, on_progress=log.info,
                     filtered=filtered)
    summary = result.summary()
    if ensemble is not None:
        summary["filter_held_out_balanced_accuracy"] = float(np.mean(ensemble.held_out))
        summary["filter_oversample"] = float(ev.filter.oversample)
        summary["filter_members"] = float(folds)
    save_atomic({"summary": summary, "references": [{k: v.cpu() for k, v in r.state_dict().items()} for r in result.references]}, cached)
    for old in sorted(UTILITY_CACHE.glob("utility-*.pt"), key=lambda p: p.stat().st_mtime)[:-UTILITY_CACHE_ENTRIES]:
        old.unlink(missing_ok=True)
    return summary, result.references


UTILITY_CACHE_ENTRIES = 4  # the latest models' results (an A/B of two models keeps both)


def utility_cache_key(cfg: Config, model: SynthModel) -> str:
    """What the utility result depends on: the model file, the prepared data, the utility settings,
    the device type and evaluate's code (its dvc.yaml deps)."""
    return provenance.fingerprint(20, model=digest(MODEL_FILE), data=digest(PREPARED_DIR), settings=provenance.utility_inputs(cfg),
                                  device=model.device.type, code=provenance.code_digest("evaluate"))


def nearest_real_figure(samples, sample_labels, train_images, train_labels, class_names: list[str], path, per_class: int = 6):
    """For each class, generated slices above their nearest real training slice of that class
    (RMS grey-level distance, mirror images included): a person can judge anatomy at the same level."""
    rows, labels = [], []
    for k, name in enumerate(class_names or ["all"]):
        generated = samples[sample_labels == k][:per_class]
        pool = train_images[train_labels == k]
        if len(generated) == 0 or len(pool) == 0:
            continue
        references = np.concatenate([pool, pool[:, :, ::-1]])
        _, index = M.nearest_distances(generated, references)
        rows += [generated, references[index]]
        labels += [f"{name}\ngenerated", f"{name}\nnearest real"]
    labelled_grid(rows, labels, path, title="generated slices and their nearest real training slice (same class)")


def write_utility_csv(summary: dict[str, float], kinds: list[str], path) -> None:
    """One row per classifier kind (DVC bar plot): kind, balanced accuracy mean and std."""
    lines = ["kind,balanced_accuracy,std"]
    lines += [f"{kind},{summary[f'{kind}_balanced_accuracy_mean']:.4f},{summary[f'{kind}_balanced_accuracy_std']:.4f}"
              for kind in kinds if f"{kind}_balanced_accuracy_mean" in summary]
    path.write_text("\n".join(lines) + "\n")
