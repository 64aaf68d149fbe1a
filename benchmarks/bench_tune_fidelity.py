"""Do tuning trials predict final training? For K configs drawn from ``tune.search_space`` (the
params.yaml values first, then random draws), train each

* as a tuning trial of each budget in ``--trial-epochs`` (on ``tune.max_train_images`` images), two
  ways: with the KL warm-up and adversarial start scaled by ``trial epochs / train.epochs``
  (``tune.scale_schedule: true``) and unscaled (``false``: the final run's warm-ups in epochs),
* as a final training (``train.epochs`` on the whole training split; ``--final-epochs`` shortens it),

score each with the validation objective, and print the Spearman rank correlation between trial
and final scores for every trial variant. Needs ``data/prepared`` (``dvc repro prepare``); logs
nothing to MLflow. Final scores can be saved (``--save``) and reused (``--reuse``) for the same
configs, so that new trial variants do not retrain the finals.

    python benchmarks/bench_tune_fidelity.py --configs 5 --final-epochs 6 --trial-epochs 2 --save fidelity.json
    python benchmarks/bench_tune_fidelity.py --configs 5 --final-epochs 6 --trial-epochs 3 --reuse fidelity.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import optuna
from scipy.stats import spearmanr

from brainsynth.config import Config, load
from brainsynth.data import prepared
from brainsynth.engine import DivergenceError, Trainer
from brainsynth.loop import fit
from brainsynth.objective import validation_metrics
from brainsynth.paths import PREPARED_DIR
from brainsynth.pipeline.tune import trial_data
from brainsynth.search_space import baseline_params, search_space, suggest, trial_config

REPO = Path(__file__).resolve().parents[1]


def score(cfg: Config, images, labels, val_images, val_labels, n_classes: int) -> float:
    trainer = Trainer(cfg, images, labels, n_classes)
    try:
        state = fit(trainer, cfg.train.epochs, lambda t: validation_metrics(t, val_images, val_labels, cfg), every=cfg.train.epochs)
    except DivergenceError:
        return float("inf")
    return state.val_history[-1]["val_objective"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=4)
    parser.add_argument("--final-epochs", type=int, default=0, help="0 = train.epochs from params.yaml")
    parser.add_argument("--trial-epochs", type=int, nargs="+", default=[0], help="0 = tune.epochs from params.yaml")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random config draws")
    parser.add_argument("--save", help="write configs and final scores to this JSON file")
    parser.add_argument("--reuse", help="final scores of the same configs from an earlier --save")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load(REPO / "params.yaml")
    if args.final_epochs:
        cfg = cfg.with_overrides({"train.epochs": args.final_epochs})
    data = prepared.load(REPO / PREPARED_DIR)
    trial_images, trial_labels, val_images, val_labels = trial_data(cfg, data, quiet=True)
    train_images, train_labels = data.split("train")
    n_classes = len(data.class_names)
    reused = json.loads(Path(args.reuse).read_text()) if args.reuse else None

    space = search_space(cfg, quiet=True)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=args.seed))
    study.enqueue_trial(baseline_params(cfg, space))
    budgets = [e or cfg.tune.epochs for e in args.trial_epochs]
    variants = [(e, scaled) for e in budgets for scaled in (True, False)]
    rows, saved = [], []
    print(f"{args.configs} configs; trials: {budgets} epochs on {len(trial_images)} images; "
          f"final: {cfg.train.epochs} epochs on {len(train_images)} images", flush=True)
    for index in range(args.configs):
        ask = study.ask()
        overrides = {name: suggest(ask, name, dim) for name, dim in space.items()}
        study.tell(ask, 0.0)
        started = time.perf_counter()
        trials = []
        for epochs, scaled in variants:
            base = cfg.with_overrides({"tune.epochs": epochs, "tune.scale_schedule": scaled})
            trials.append(score(trial_config(base, overrides), trial_images, trial_labels, val_images, val_labels, n_classes))
        if reused:
            assert reused[index]["overrides"] == json.loads(json.dumps(overrides)), "--reuse: configs differ"
            final = reused[index]["final"]
        else:
            final = score(cfg.with_overrides(overrides), train_images, train_labels, val_images, val_labels, n_classes)
        rows.append((*trials, final))
        saved.append({"overrides": overrides, "final": final})
        print(f"config {index}: " + ", ".join(f"trial {e} ep {'scaled' if s else 'unscaled'} {t:.2f}" for (e, s), t in zip(variants, trials))
              + f", final {final:.2f} ({time.perf_counter() - started:.0f}s) {overrides}", flush=True)
    if args.save:
        Path(args.save).write_text(json.dumps(saved, indent=2) + "\n")
    table = np.array(rows)
    for column, (epochs, scaled) in enumerate(variants):
        rho = spearmanr(table[:, column], table[:, -1]).statistic
        print(f"Spearman rank correlation, trial of {epochs} epochs ({'scaled' if scaled else 'unscaled'} warm-ups) vs final: {rho:.2f}")


if __name__ == "__main__":
    main()
