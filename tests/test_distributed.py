"""Data-parallel training under torchrun: 2 CPU processes with gloo (tests/distributed_worker.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent


def _launch(case: str, out: Path, nproc: int) -> dict[int, dict]:
    """Run the worker ``case`` under torchrun with ``nproc`` processes (1: a plain process, no
    process group) and return each rank's results."""
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    worker = [str(TESTS / "distributed_worker.py"), case, str(out)]
    if nproc == 1:
        cmd = [sys.executable, *worker]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *worker]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return {rank: torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(nproc)}


def test_two_ranks_with_half_batches_give_the_gradients_of_one_process_with_the_whole_batch(tmp_path):
    single = _launch("gradients", tmp_path / "one", 1)[0]
    ranks = _launch("gradients", tmp_path / "two", 2)
    for name in ("critic_step", "penalty_only", "generator_step"):
        reference = single[name]
        assert reference.abs().max() > 0, name
        scale = max(1.0, reference.abs().max().item())  # float32 sums in another order: ~1e-6 of the largest gradient
        for rank, result in ranks.items():
            difference = (result[name] - reference).abs().max().item()
            assert difference <= 2e-6 * scale, f"{name}, rank {rank}: {difference:.2e} (largest gradient {scale:.2f})"


def test_two_ranks_hold_identical_weights_after_training(tmp_path):
    ranks = _launch("training", tmp_path, 2)
    first, second = ranks[0], ranks[1]
    assert first["local_batch"] == 4 and first["steps"] == 2 * (48 // 8)  # the global batch of 8, shared
    for key, value in first["state"].items():
        assert torch.equal(value, second["state"][key]), key
    moved = [k for k, v in first["state"].items() if v.is_floating_point() and not torch.equal(v, first["initial"][k])]
    assert len(moved) > len(first["state"]) // 2  # it trained
    assert first["losses"] == second["losses"]  # logged losses are means over both ranks


def test_a_worker_dies_with_its_launcher(tmp_path):
    """SIGKILL of the torchrun agent left both ranks training, writing the model and moving
    the registry alias. A worker (``run_stage`` under torchrun) now gets SIGTERM when its parent dies."""
    import signal
    import time

    child = (f"import time, pathlib; from brainsynth.pipeline.stage import die_with_parent; assert die_with_parent(); "
             f"pathlib.Path({str(tmp_path / 'pid')!r}).write_text(str(__import__('os').getpid())); time.sleep(120)")
    launcher = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); "
                                 "time.sleep(120)"])
    deadline = time.monotonic() + 60
    while not (tmp_path / "pid").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    worker = int((tmp_path / "pid").read_text())
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(worker, signal.SIGKILL)
        raise AssertionError("the worker outlived its launcher")


def test_two_nodes_rendezvous_on_loopback_train_like_one_process(tmp_path):
    """the multi-node path on one machine: two torchrun agents (--nnodes 2, one process each) meet
    through a c10d rendezvous on 127.0.0.1 and their half batches give the single process's gradients."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    out = tmp_path / "nodes"
    out.mkdir()
    agent = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
             f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=brainsynth-test", str(TESTS / "distributed_worker.py"), "gradients", str(out)]
    nodes = [subprocess.Popen(agent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), outputs[0][-2000:] + outputs[1][-2000:]
    single = _launch("gradients", tmp_path / "one", 1)[0]
    for rank in range(2):
        result = torch.load(out / f"rank{rank}.pt", weights_only=True)
        for name in ("critic_step", "penalty_only", "generator_step"):
            scale = max(1.0, single[name].abs().max().item())
            assert (result[name] - single[name]).abs().max().item() <= 2e-6 * scale, (rank, name)
