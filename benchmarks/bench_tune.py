"""Tuning benchmark: the default study (params.yaml) with and without pruning — wall time, trials
pruned and the best objective of each. Needs ``data/prepared`` (run ``dvc repro prepare`` first).

As in the stage, the first trial runs the params.yaml values; both studies use the same sampler
seed, so they propose the same first trials; in-memory Optuna
storage and a throw-away MLflow store (nothing is added to the repo's ``mlflow.db``).

    python benchmarks/bench_tune.py [--trials N] [--pruners median none] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import mlflow
import optuna
import yaml

from brainsynth.config import load, with_overrides
from brainsynth.data import prepared
from brainsynth.training.objective import DIRECTION
from brainsynth.tuning.search_space import baseline_params, search_space
from brainsynth.tuning.study import count_states, make_pruner, make_sampler, stop_callbacks
from brainsynth.tuning.trial import Objective


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=0, help="0 = tune.n_trials from params.yaml")
    parser.add_argument("--pruners", nargs="+", default=["median", "none"])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/prepared", help="a prepared dataset (dvc repro prepare)")
    parser.add_argument("--set", nargs="*", default=[], help="params.yaml overrides, key=value")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    base = with_overrides(load(args.params), overrides, source="--set")
    data = prepared.load(args.data)
    with tempfile.TemporaryDirectory(prefix="bench_tune_") as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        mlflow.set_experiment("bench-tune")
        for pruner in args.pruners:
            cfg = with_overrides(base, {"tune.pruner": pruner, **({"tune.n_trials": args.trials} if args.trials else {})})
            study = optuna.create_study(direction=DIRECTION, sampler=make_sampler(cfg), pruner=make_pruner(cfg))
            study.enqueue_trial(baseline_params(cfg, search_space(cfg, quiet=True)))  # as the stage does
            started = time.perf_counter()
            with mlflow.start_run(run_name=f"study-{pruner}") as parent:
                study.optimize(Objective(cfg, data, parent.info.run_id, quiet=True), callbacks=stop_callbacks(cfg.tune.n_trials),
                               catch=(RuntimeError,))
            seconds = time.perf_counter() - started
            counts = count_states(study)
            best = study.best_value if counts["n_complete"] else float("nan")
            print(f"pruner={pruner}: {cfg.tune.n_trials} trials x {cfg.tune.epochs} epochs in {seconds:.1f}s, "
                  f"{counts['n_pruned']} pruned, best objective {best:.3f}", flush=True)


if __name__ == "__main__":
    main()
