"""Do tuning trials predict final training? For K configs drawn from ``tune.search_space`` (the
params.yaml values first, then random draws), train each

* as a tuning trial, as the tune stage does (``tune.epochs`` on ``tune.max_train_images`` images,
  KL warm-up and adversarial start scaled by ``tune.epochs / train.epochs``),
* as a trial the old way (the same, warm-ups not scaled: with the defaults it never reached full
  KL weight and had one adversarial epoch),
* as a final training (``train.epochs`` on the whole training split; ``--final-epochs`` shortens it),

score each with the validation objective, and print the Spearman rank correlation between trial
and final scores. Needs ``data/prepared`` (``dvc repro prepare``); logs nothing to MLflow.

    python benchmarks/bench_tune_fidelity.py --configs 4 --final-epochs 6
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import optuna
from scipy.stats import spearmanr

from brainsynth.config import Config, load
from brainsynth.data import prepared
from brainsynth.engine import DivergenceError, Trainer
from brainsynth.objective import validation_metrics
from brainsynth.paths import PREPARED_DIR
from brainsynth.pipeline.tune import trial_data
from brainsynth.search_space import baseline_params, search_space, suggest, trial_config

REPO = Path(__file__).resolve().parents[1]


def score(cfg: Config, images, labels, val_images, val_labels, n_classes: int) -> float:
    trainer = Trainer(cfg, images, labels, n_classes)
    try:
        for _ in range(cfg.train.epochs):
            trainer.train_epoch()
    except DivergenceError:
        return float("inf")
    return validation_metrics(trainer, val_images, val_labels, cfg)["val_objective"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=4)
    parser.add_argument("--final-epochs", type=int, default=0, help="0 = train.epochs from params.yaml")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random config draws")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load(REPO / "params.yaml")
    if args.final_epochs:
        cfg = cfg.with_overrides({"train.epochs": args.final_epochs})
    data = prepared.load(REPO / PREPARED_DIR)
    trial_images, trial_labels, val_images, val_labels = trial_data(cfg, data, quiet=True)
    train_images, train_labels = data.split("train")
    n_classes = len(data.class_names)

    space = search_space(cfg, quiet=True)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=args.seed))
    study.enqueue_trial(baseline_params(cfg, space))
    rows = []
    print(f"{args.configs} configs; trial: {cfg.tune.epochs} epochs on {len(trial_images)} images; "
          f"final: {cfg.train.epochs} epochs on {len(train_images)} images", flush=True)
    for index in range(args.configs):
        ask = study.ask()
        overrides = {name: suggest(ask, name, dim) for name, dim in space.items()}
        study.tell(ask, 0.0)
        started = time.perf_counter()
        scaled = score(trial_config(cfg, overrides), trial_images, trial_labels, val_images, val_labels, n_classes)
        unscaled_cfg = cfg.with_overrides({**overrides, "train.epochs": cfg.tune.epochs})
        unscaled = score(unscaled_cfg, trial_images, trial_labels, val_images, val_labels, n_classes)
        final = score(cfg.with_overrides(overrides), train_images, train_labels, val_images, val_labels, n_classes)
        rows.append((scaled, unscaled, final))
        print(f"config {index}: trial {scaled:.2f}, unscaled trial {unscaled:.2f}, final {final:.2f} "
              f"({time.perf_counter() - started:.0f}s) {overrides}", flush=True)
    table = np.array(rows)
    for column, name in ((0, "trial (scaled warm-ups)"), (1, "trial (unscaled, before)")):
        rho = spearmanr(table[:, column], table[:, 2]).statistic
        print(f"Spearman rank correlation, {name} vs final: {rho:.2f}")


if __name__ == "__main__":
    main()
