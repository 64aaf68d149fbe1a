"""Every tool in benchmarks/ starts: one tiny step of each, so none can rot unseen (a renamed import or
a removed parameter fails here, not when someone next needs the figure)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO

BENCH = REPO / "benchmarks"
CUDA = torch.cuda.is_available()


def run(script: str, *args: str, cwd: Path = REPO, timeout: int = 300) -> str:
    result = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_every_benchmark_has_a_smoke_test():
    tools = {p.name for p in BENCH.iterdir() if p.suffix in (".py", ".sh")}
    smoked = {"bench_engine.py", "bench_ingest.py", "bench_tune.py", "bench_distributed.py", "bench_cpu_levers.py", "profile_cpu.py",
              "profile_step.py", "training_fingerprint.py", "gpu_checks.sh", "gpu_sweep.sh"}
    assert tools == smoked, f"benchmarks without a smoke test here: {sorted(tools - smoked)}; gone: {sorted(smoked - tools)}"


def test_bench_engine_starts():
    out = run("bench_engine.py", "--size", "16", "--batch", "4", "--images", "16", "--steps", "1", "--warmup", "0", "--repeats", "1",
              "--device", "cpu", "--set", "model.cbam_res=[]", "model.self_attention_res=[]", "model.spatial_latent_channels=0")
    assert "images/s" in out


def test_bench_ingest_starts():
    assert "slices/s" in run("bench_ingest.py", "--images", "4", "--size", "16", "--workers", "1")


@pytest.mark.slow
def test_bench_tune_starts(tmp_path):
    from helpers import repo_config

    from brainsynth.data import prepared
    from brainsynth.data.embedded import build_cohort

    cfg = repo_config({"data.embedded.n_subjects": 6, "data.embedded.slices_per_subject": 4})
    cohort = build_cohort(cfg.data.embedded, 16, 0)
    splits = np.where(np.arange(len(cohort.labels)) % 4 == 0, "val", "train")
    prepared.save(tmp_path / "prepared", cohort.images, cohort.labels, cohort.subjects, splits, {"class_names": ["healthy", "mild", "moderate"]})
    out = run("bench_tune.py", "--trials", "1", "--pruners", "none", "--params", str(REPO / "params.yaml"), "--data", str(tmp_path / "prepared"),
              "--set", "data.image_size=16", "tune.epochs=1", "tune.eval_images=8", "train.batch_size=4", "model.base_channels=4",
              "model.max_channels=8", "model.cbam_res=[]", "model.self_attention_res=[]", "model.spatial_latent_channels=0",
              "swd.patches_per_image=8", "swd.directions=16", "loss.consistency.weight=0", cwd=tmp_path)
    assert "pruner=none: 1 trials" in out


@pytest.mark.slow
def test_bench_distributed_starts():
    assert "img/s" in run("bench_distributed.py", "--nproc", "1", "--size", "16", "--batch", "4", "--images", "8", "--steps", "1", "--warmup", "0")


def test_bench_cpu_levers_starts():
    out = run("bench_cpu_levers.py", "--lever", "base=", "--lever", "nchw=train.channels_last=false", "--size", "16", "--batch", "4", "--steps", "1",
              "--repeats", "1", "--threads", "1")
    assert "nchw" in out


def test_profile_cpu_starts():
    assert "by phase" in run("profile_cpu.py", "--size", "16", "--batch", "4", "--steps", "1", "--rows", "2", "--threads", "1",
                             "--set", "model.cbam_res=[]", "model.self_attention_res=[]", "model.spatial_latent_channels=0")


def test_profile_step_starts():
    """GPU only: without CUDA its imports and arguments are checked (``--help``)."""
    if CUDA:
        assert "img/s" in run("profile_step.py", "--size", "16", "--batch", "4", "--steps", "1")
    else:
        assert "--downsample" in run("profile_step.py", "--help")


def test_training_fingerprint_starts():
    assert '"model_sha256"' in run("training_fingerprint.py", '{"train.batch_size": 8}')


@pytest.mark.parametrize("script", ["gpu_checks.sh", "gpu_sweep.sh"])
def test_gpu_scripts_parse_and_name_tools_that_exist(script):
    text = (BENCH / script).read_text()
    assert subprocess.run(["bash", "-n", str(BENCH / script)]).returncode == 0
    for name in {word for word in text.replace('"', " ").split() if word.startswith("benchmarks/") or word.startswith("tests/")}:
        assert (REPO / name).exists(), f"{script} runs {name}, which does not exist"
