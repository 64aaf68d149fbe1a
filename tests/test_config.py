from pathlib import Path

import pytest
from helpers import merged, repo_config, repo_params

from brainsynth.config import ConfigError, load, record_reads, validate, with_overrides

REPO = Path(__file__).resolve().parents[1]


def test_committed_params_are_valid_and_complete():
    cfg = load(REPO / "params.yaml")
    assert cfg.loss.adv_weight > 0
    assert cfg.data.source == "embedded"


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match=r"unknown key 'train.epoch' \(did you mean 'train.epochs'\?\)"):
        validate(merged(repo_params(), {"train": {"epoch": 3}}))


def test_wrong_value_names_key_value_and_rule():
    with pytest.raises(ConfigError) as err:
        validate(merged(repo_params(), {"train": {"epochs": -1}}))
    message = str(err.value)
    assert "train.epochs" in message and "-1" in message and "greater than or equal to 1" in message
    assert "\n" not in message


def test_image_size_must_be_power_of_two():
    with pytest.raises(ConfigError, match="data.image_size = 48.*power of two"):
        validate(merged(repo_params(), {"data": {"image_size": 48}}))


def test_search_space_must_name_real_parameters():
    with pytest.raises(ConfigError, match="did you mean 'optim.lr'"):
        validate(merged(repo_params(), {"tune": {"search_space": {"optim.lrr": {"type": "float", "low": 0.1, "high": 1.0}}}}))


def test_overrides_are_validated():
    cfg = repo_config()
    assert with_overrides(cfg, {"optim.lr": 0.01}).optim.lr == 0.01
    with pytest.raises(ConfigError, match="optim.lr"):
        with_overrides(cfg, {"optim.lr": -1.0})


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(bad)


def test_the_parameter_and_metric_references_are_generated_from_the_code():
    """docs/params.md and docs/metrics.md are what ``python -m brainsynth.reference`` writes from the
    schema, params.yaml's comments and the metric catalogue: they cannot drift from the code."""
    from brainsynth import reference

    for name, text in reference.documents(REPO / "params.yaml").items():
        assert (REPO / "docs" / name).read_text() == text, f"docs/{name} is stale: run python -m brainsynth.reference"
    params = (REPO / "docs" / "params.md").read_text()
    assert all(f"`{key}`" in params for key in load(REPO / "params.yaml").flat() if not key.startswith("tune.search_space."))


def test_plain_vae_request_is_not_undone_by_tuning():
    import logging

    from brainsynth.tuning.search_space import search_space

    cfg = load(REPO / "params.yaml")
    assert "loss.adv_weight" in search_space(cfg, logging.getLogger("t"))
    vae = with_overrides(cfg, {"loss.adv_weight": 0.0})
    assert "loss.adv_weight" not in search_space(vae, logging.getLogger("t"))


def test_the_schema_supplies_no_values_params_yaml_does():
    """One source of truth: a key missing from params.yaml is an error naming it, not a silent default."""
    raw = repo_params()
    del raw["train"]["keep"]
    with pytest.raises(ConfigError, match=r"missing key 'train.keep'"):
        validate(raw)
    with pytest.raises(ConfigError, match="missing key"):
        validate({})


def test_reads_are_recorded_by_key_path():
    cfg = repo_config()
    reads = record_reads()
    try:
        assert cfg.train.epochs > 0 and cfg.data.volume.slice_axis in (0, 1, 2)
        _ = cfg.flat()  # logging the whole config is not a read
        later = with_overrides(cfg, {"optim.lr": 0.01})
        assert later.optim.lr == 0.01
    finally:
        import brainsynth.config as config_module

        config_module.reads._reads = None
    assert reads == {"train.epochs", "data.volume.slice_axis", "optim.lr"}


@pytest.mark.parametrize("make, expected", [
    (lambda root: root / "typo", "no such folder"),
    (lambda root: (root / "file.png").write_bytes(b"x") and root / "file.png", "is a file"),
    (lambda root: (root / "empty").mkdir() or root / "empty", "the folder is empty"),
])
def test_prepare_checks_data_source_before_any_import_or_run(tmp_path, make, expected):
    """a path typo fails in the pre-check (exit 2, one line), with no MLflow run or store created."""
    import subprocess
    import sys

    from helpers import write_params

    work = tmp_path / "work"
    work.mkdir()
    source = make(tmp_path)
    write_params(work / "params.yaml", {"data": {"source": str(source)}})
    result = subprocess.run([sys.executable, str(REPO / "stages" / "prepare.py")], cwd=work, capture_output=True, text=True,
                            env={**__import__("os").environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data.source = ") and expected in lines[0]
    assert sorted(p.name for p in work.iterdir()) == ["params.yaml"]  # no mlflow.db, no logs, no outputs


@pytest.mark.parametrize("dim, expected", [
    ({"optim.lr": {"type": "float", "low": 0.5, "high": 3.0}}, "tune.search_space.optim.lr: high 3.0 is not a valid optim.lr (Input should be less than or equal to 1)"),
    ({"optim.n_critic": {"type": "int", "low": 0, "high": 2}}, "tune.search_space.optim.n_critic: low 0 is not a valid optim.n_critic (Input should be greater than or equal to 1)"),
    ({"model.upsample": {"type": "categorical", "choices": ["bilinear", "cubic"]}}, "choice 'cubic' is not a valid model.upsample"),
    ({"seed": {"type": "int", "low": -5, "high": 3}}, "tune.search_space.seed: low -5 is not a valid seed"),
])
def test_search_space_values_are_checked_against_the_parameters_bounds(dim, expected):
    """a range a trial cannot use fails when params.yaml is loaded, in one short line."""
    with pytest.raises(ConfigError) as err:
        validate(merged(repo_params(), {"tune": {"search_space": dim}}))
    message = str(err.value)
    assert expected in message and "\n" not in message and len(message) < 300


def test_unknown_search_space_name_does_not_echo_the_config():
    with pytest.raises(ConfigError) as err:
        validate(merged(repo_params(), {"tune": {"search_space": {"optim.lrr": {"type": "float", "low": 0.1, "high": 1.0}}}}))
    assert len(str(err.value)) < 200 and "seed" not in str(err.value)


@pytest.mark.parametrize("section, key, value", [
    ("train", "epochs", True), ("train", "hflip", "yes"), ("train", "epochs", 2.5), ("model", "conditional", 1),
    (None, "seed", 2**64), (None, "seed", -1), ("train", "channels_last", "yes"), ("train", "channels_last", 1),
])
def test_lax_coercions_are_refused(section, key, value):
    """`train.epochs: true` no longer runs 1 epoch, `hflip: "yes"` is not True, seeds fit the generators."""
    extra = {section: {key: value}} if section else {key: value}
    with pytest.raises(ConfigError) as err:
        validate(merged(repo_params(), extra))
    assert (f"{section}.{key}" if section else key) in str(err.value) and "\n" not in str(err.value)


def test_scientific_notation_written_by_hand_is_a_number(tmp_path):
    """YAML 1.1 reads `5e-4` as text; on a float field it is the number, elsewhere text stays refused."""
    text = (Path(__file__).resolve().parents[1] / "params.yaml").read_text().replace("lr: 0.0005 ", "lr: 5e-4 ", 1)
    assert "lr: 5e-4" in text
    (tmp_path / "params.yaml").write_text(text)
    assert load(tmp_path / "params.yaml").optim.lr == 5e-4
    for bad in ("fast", "5e-4x"):
        with pytest.raises(ConfigError, match="optim.lr"):
            validate(merged(repo_params(), {"optim": {"lr": bad}}))
    with pytest.raises(ConfigError, match="train.epochs"):
        validate(merged(repo_params(), {"train": {"epochs": "5"}}))  # integers stay strict


def test_yaml_lists_and_integer_floats_still_load():
    cfg = validate(merged(repo_params(), {"optim": {"lr": 1}, "data": {"embedded": {"class_fractions": [0.5, 0.25, 0.25]}}}))
    assert cfg.optim.lr == 1.0 and cfg.data.embedded.class_fractions == (0.5, 0.25, 0.25)


@pytest.mark.parametrize("extra, named", [
    ({"train": {"nproc_per_node": 3}}, "train.nproc_per_node 3"),
    ({"train": {"nproc_per_node": 0}}, "train.nproc_per_node"),
    ({"tune": {"heartbeat_seconds": 0}}, "tune.heartbeat_seconds"),
    ({"mlflow": {"registered_model": "a/b:c"}}, "mlflow.registered_model"),
    ({"tune": {"storage": "postgresql://bob:hunter2@db/optuna"}}, "tune.storage = 'postgresql://bob:***@db/optuna': holds a password"),  # used to fail after the whole training
    ({"mlflow": {"champion_metric": "accuracy"}}, "mlflow.champion_metric"),
])
def test_params_of_this_session_are_validated_by_name(extra, named):
    """a global batch the processes cannot share, a zero heartbeat or an unknown champion
    metric fail in one line naming the key."""
    with pytest.raises(ConfigError) as err:
        validate(merged(repo_params(), extra))
    assert named in str(err.value) and "\n" not in str(err.value) and "hunter2" not in str(err.value)


@pytest.mark.parametrize("extra, named", [
    ({"train": {"nproc_per_node": 3}}, "train.batch_size 32 is the global batch and must be divisible by train.nproc_per_node 3"),
    ({"model": {"logvar_min": 5.0}}, "logvar_min (5.0) must be below logvar_max"),
    ({"model": {"spatial_latent_factor": 3}}, "spatial_latent_factor 3 must be a power of two"),
    ({"model": {"spatial_latent_channels": 4, "spatial_latent_factor": 32}}, "model.spatial_latent_factor 32 leaves data.image_size 64 below 4×4"),
])
def test_a_check_across_one_section_s_keys_does_not_echo_the_section(extra, named):
    """Regression: a section-level check printed the whole section dict before its message."""
    with pytest.raises(ConfigError) as err:
        validate(merged(repo_params(), extra))
    message = str(err.value)
    assert named in message and "{" not in message and len(message) < 200


def test_an_override_file_becomes_dvc_flags_and_a_typo_fails_in_one_line(tmp_path):
    """A preset or an experiment arm is a nested params file: it prints DVC's -S flags (lists as
    YAML reads them back) after a check against the schema, which names a misspelt key in one line."""
    import subprocess
    import sys

    arm = tmp_path / "arm.yaml"
    arm.write_text("loss:\n  consistency: {weight: 0.0}\nmodel: {cbam_res: [8, 16]}\n")
    out = subprocess.run([sys.executable, "-m", "brainsynth.overrides", str(arm)], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split() == ["-S", "loss.consistency.weight=0.0", "-S", "model.cbam_res=[8,16]"]
    arm.write_text("loss:\n  consistency: {wieght: 0.0}\n")
    out = subprocess.run([sys.executable, "-m", "brainsynth.overrides", str(arm)], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert "unknown key 'loss.consistency.wieght' (did you mean 'loss.consistency.weight'?)" in out.stderr


def test_every_committed_override_file_is_valid():
    from brainsynth.overrides import read

    files = [REPO / "presets" / "tiny.yaml", *sorted((REPO / "experiments" / "levers").glob("*.yaml"))]
    assert len(files) > 1
    for path in files:
        assert read(path, REPO / "params.yaml"), path
