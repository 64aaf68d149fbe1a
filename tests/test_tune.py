"""The tune stage: a persistent Optuna study that resumes after a kill, is shared by worker processes,
prunes diverging trials, and nests one MLflow run per trial under the study's run."""

from __future__ import annotations

import json

import mlflow
import optuna
import pytest
import yaml
from helpers import repo_config
from helpers import write_params as write_repo_params
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from brainsynth.config import load
from brainsynth.pipeline import prepare, tune
from brainsynth.pipeline.stage import run_stage
from brainsynth.training.engine import DivergenceError, Trainer
from brainsynth.tuning import search_space

TINY = {
    "mlflow": {"experiment": "tune-test"},
    "data": {"image_size": 16, "embedded": {"n_subjects": 9, "slices_per_subject": 3}},
    "model": {"latent_dim": 4, "base_channels": 4, "max_channels": 8, "cbam_res": [], "self_attention_res": []},
    "train": {"batch_size": 4, "log_every": 2, "device": "cpu"},
    "loss": {"adv_start_epoch": 0, "kl_warmup_epochs": 0},
    "tune": {"n_trials": 3, "epochs": 2, "max_train_images": 0, "eval_images": 8, "pruner": "none", "sampler": "random",
             "search_space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True},
                              "model.cbam_res": {"type": "categorical", "choices": [[], [8]]}}},
}


def write_params(path, tune_overrides=None):
    params = json.loads(json.dumps(TINY))
    params["tune"].update(tune_overrides or {})
    write_repo_params(path, params)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    write_params(tmp_path / "params.yaml")
    run_stage("prepare", prepare.run)
    return tmp_path


def study_of(workdir) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(workdir / "models/tune/study.journal")))
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def tune_runs(workdir):
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tune-test")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("stage") == "tune"]
    trials = [r for r in runs if r.data.tags.get("stage") == "tune-trial"]
    return parents, trials


def test_killed_study_resumes_to_n_trials_in_the_same_mlflow_run(workdir, monkeypatch):
    original = Trainer.train_epoch
    calls = []

    def killed_in_second_trial(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # trial 0 has two epochs; the kill comes in trial 1
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", killed_in_second_trial)
    with pytest.raises(SystemExit) as exit_info:
        run_stage("tune", tune.run)
    assert exit_info.value.code == 130
    states = [t.state for t in study_of(workdir).trials]
    assert states[0] == TrialState.COMPLETE and len(states) == 2 and states[1] != TrialState.COMPLETE
    assert study_of(workdir).trials[0].params == {"optim.lr": 5e-4, "model.cbam_res": "[]"}  # params.yaml's values first

    monkeypatch.setattr(Trainer, "train_epoch", original)
    run_stage("tune", tune.run)
    study = study_of(workdir)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 3 and len(study.trials) == 4  # one killed trial, three finished: not started over
    assert all(t.state != TrialState.RUNNING for t in study.trials)
    parents, trials = tune_runs(workdir)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the same run, resumed
    assert len(trials) == 4 and {t.data.tags["mlflow.parentRunId"] for t in trials} == {parents[0].info.run_id}
    assert sorted(t.info.status for t in trials) == ["FINISHED", "FINISHED", "FINISHED", "KILLED"]
    best = yaml.safe_load((workdir / "models/tune/best_params.yaml").read_text())  # a nested params file for DVC
    assert set(best) == {"optim", "model"} and set(best["optim"]) == {"lr"} and best["model"]["cbam_res"] in ([], [8])
    metrics = json.loads((workdir / "metrics/tune.json").read_text())["tune"]
    assert metrics["n_complete"] == 3 and parents[0].data.metrics["trials_this_run"] == 2

    # a finished study with unchanged settings runs nothing; a changed search space starts a new study
    run_stage("tune", tune.run)
    assert tune_runs(workdir)[0][0].data.metrics["trials_this_run"] == 0
    # raising tune.n_trials continues the finished study in a new run; the earlier run keeps its choice
    first_run = parents[0]
    write_params(workdir / "params.yaml", {"n_trials": 4})
    run_stage("tune", tune.run)
    run_stage("tune", tune.run)  # and the stage keeps working afterwards
    assert len([t for t in study_of(workdir).trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 4
    client = MlflowClient()
    earlier = client.get_run(first_run.info.run_id)
    assert earlier.info.status == "FINISHED" and earlier.data.params == first_run.data.params
    latest = tune_runs(workdir)[0]
    assert all(r.info.status == "FINISHED" for r in latest)
    continuation = [r for r in latest if r.data.tags.get("continues_run") and r.data.metrics.get("trials_this_run") == 1]
    assert len(continuation) == 1 and any(k.startswith("chosen.") for k in continuation[0].data.params)
    write_params(workdir / "params.yaml", {"n_trials": 1, "search_space": {"optim.lr": {"type": "float", "low": 2e-4, "high": 5e-4}}})
    run_stage("tune", tune.run)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(workdir / "models/tune/study.journal")))
    assert len(optuna.get_all_study_summaries(storage)) == 2


def test_diverging_trial_is_pruned_and_the_study_goes_on(workdir, monkeypatch):
    original = Trainer.train_epoch
    calls = []

    def nan_first(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise DivergenceError("non-finite loss at step 1 (loss_g=nan)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", nan_first)
    run_stage("tune", tune.run)
    states = [t.state for t in study_of(workdir).trials]
    assert states == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.COMPLETE]  # a pruned trial counts as finished
    _, trials = tune_runs(workdir)
    assert sorted(t.data.tags["optuna_state"] for t in trials) == ["COMPLETE", "COMPLETE", "PRUNED"]


def test_two_worker_processes_share_one_study(workdir):
    write_params(workdir / "params.yaml", {"n_trials": 4, "n_workers": 2})
    run_stage("tune", tune.run)
    study = study_of(workdir)
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) >= 4
    assert len({t.number for t in study.trials}) == len(study.trials)
    logs = [(workdir / "logs" / f"tune_worker{i}.log").read_text() for i in range(2)]
    assert all("trial" in text for text in logs), "each worker ran trials"
    parents, trials = tune_runs(workdir)
    assert len(trials) == len(study.trials) and {t.data.tags["mlflow.parentRunId"] for t in trials} == {parents[0].info.run_id}


def test_unusable_storage_is_a_one_line_error(workdir, capsys):
    write_params(workdir / "params.yaml", {"storage": "nosuchdb://user@host/optuna"})
    with pytest.raises(SystemExit):
        run_stage("tune", tune.run)
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "tune.storage 'nosuchdb://user@host/optuna'" in error[0]
    assert load(workdir / "params.yaml").tune.storage.startswith("nosuchdb")


def test_tuned_values_replace_params_yaml_only_by_a_clear_margin():
    """A trial that beats the params.yaml trial by less than tune.min_improvement (noise on a
    2-epoch objective) must not replace the committed values; a clear winner does."""
    from brainsynth.pipeline.tune import chosen_trial

    dist = {"optim.lr": optuna.distributions.FloatDistribution(1e-4, 1e-3, log=True)}
    baseline = {"optim.lr": 5e-4}

    def study_with(values):
        study = optuna.create_study(direction="minimize")
        for lr, value in values:
            study.add_trial(optuna.trial.create_trial(params={"optim.lr": lr}, distributions=dist, value=value))
        return study

    close = study_with([(5e-4, 159.4), (3.6e-4, 148.1), (2e-4, 192.2)])  # 7 % better: noise
    assert chosen_trial(close, baseline, 0.1).params == baseline
    assert chosen_trial(close, baseline, 0.0).params == {"optim.lr": 3.6e-4}
    clear = study_with([(5e-4, 159.4), (3.6e-4, 120.0)])
    assert chosen_trial(clear, baseline, 0.1).params == {"optim.lr": 3.6e-4}
    no_baseline = study_with([(3.6e-4, 148.1), (2e-4, 150.0)])
    assert chosen_trial(no_baseline, baseline, 0.1).number == 0


def test_a_trial_trains_its_budget_with_the_final_schedule():
    """A trial trains tune.epochs epochs with the suggested values; the KL warm-up and the critic's
    start keep their values in epochs (scaling them to the budget ranked final scores worse)."""
    from helpers import repo_config

    cfg = repo_config({"train.epochs": 15, "tune.epochs": 3, "loss.kl_warmup_epochs": 5, "loss.adv_start_epoch": 3})
    trial = search_space.trial_config(cfg, {"optim.lr": 3e-4})
    assert trial.train.epochs == 3 and trial.optim.lr == 3e-4
    assert trial.loss.kl_warmup_epochs == 5 and trial.loss.adv_start_epoch == 3


def test_categorical_choices_round_trip():
    from brainsynth.config import SearchDimension

    lists = SearchDimension(type="categorical", choices=[[], [8, 16]])
    scalars = SearchDimension(type="categorical", choices=[32, 64])
    for dim, value in ((lists, [8, 16]), (lists, []), (scalars, 64)):
        encoded = search_space.encode_choice(dim, value)
        assert isinstance(encoded, (str, int)) and search_space.decode_choice(dim, encoded) == value


def test_a_postgresql_host_that_never_answers_fails_within_the_connect_timeout(monkeypatch):
    """a server that accepts the connection and then says nothing used to hang tune for minutes."""
    import socket
    import threading
    import time

    from brainsynth.pipeline.stage import StageError
    from brainsynth.tuning import study

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    held = []
    threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
    monkeypatch.setattr(study, "CONNECT_TIMEOUT_S", 2)
    cfg = repo_config({"tune.storage": f"postgresql://user@127.0.0.1:{server.getsockname()[1]}/optuna"})
    started = time.monotonic()
    with pytest.raises(StageError, match="cannot open the Optuna storage"):
        study.open_storage(cfg)
    assert time.monotonic() - started < 30
    server.close()


def test_an_rdb_storage_opens_without_optuna_deprecation_warnings(tmp_path):
    """every RDB run printed Optuna's deprecation of failed_trial_callback."""
    import warnings

    from brainsynth.tuning import study

    cfg = repo_config({"tune.storage": f"sqlite:///{tmp_path / 'optuna.db'}"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        storage = study.open_storage(cfg)
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert not [w for w in caught if "failed_trial_callback" in str(w.message)]
