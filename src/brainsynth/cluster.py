"""``make cluster-demo``: the lab set-up — PostgreSQL, an ``mlflow server`` on it, an Optuna study in
PostgreSQL shared by two tuning workers, two-process (torchrun) training — run on this machine.

It starts a throwaway PostgreSQL cluster (as the ``postgres`` user when run as root: ``initdb``
refuses root) and ``mlflow server`` with that backend, both on loopback in a temporary folder; runs
the pipeline against them as a temporary DVC experiment (``dvc exp run --temp``, the arguments after
``--``), so every run and the registered model land in the server's store and nothing in the local
``mlflow.db``; prints the UI address and what to look at; keeps both servers up until Ctrl-C (or
stops at once with ``--once``) and stops them whatever happens. It installs nothing.

    python -m brainsynth.cluster [--once] [--port 5001] -- -S data.image_size=32 ...
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

EXPERIMENT = "brainsynth-cluster"


class ClusterError(RuntimeError):
    """A one-line reason the demo cannot run."""


def postgres_bin() -> Path | None:
    """The folder holding initdb and pg_ctl (on PATH or Debian's /usr/lib/postgresql/<version>/bin)."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_port(port: int) -> int:
    """``port`` if nothing listens on it on 127.0.0.1, else a one-line ClusterError."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise ClusterError(f"port {port} on 127.0.0.1 is already in use (another mlflow ui?): choose another, e.g. "
                               f"make cluster-demo PORT={port + 1}") from None
    return port


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb refuses to run as root: run the server's programs as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def postgres_cluster(folder: Path, databases: tuple[str, ...] = ("optuna", "mlflow")):
    """A throwaway cluster in ``folder`` on a free loopback port, with ``databases``; yields its base
    URL (user postgres, trust authentication: loopback only) and stops it on the way out."""
    pg = postgres_bin()
    if pg is None:
        raise ClusterError("PostgreSQL's server programs (initdb, pg_ctl) are not installed: apt-get install postgresql")
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    port = free_port()
    made = subprocess.run(_as_postgres([str(pg / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"]),
                          capture_output=True, text=True, timeout=120)
    if made.returncode:
        raise ClusterError(f"initdb failed: {(made.stderr.strip().splitlines() or ['no message'])[-1]}")
    options = f"-k {folder} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off"
    started = False
    try:
        subprocess.run(_as_postgres([str(pg / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "postgres.log"), "-w", "start"]),
                       check=True, capture_output=True, timeout=120)
        started = True
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            for name in databases:
                cursor.execute(f"CREATE DATABASE {name}")
        connection.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}"
    finally:
        if started:
            subprocess.run(_as_postgres([str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True, timeout=120)


@contextmanager
def mlflow_server(backend: str, artifacts: Path, port: int, log_path: Path, env: dict | None = None):
    """``mlflow server`` on ``backend`` with proxied artifacts in ``artifacts``, on 127.0.0.1:``port``
    (one worker, no job runners: it starts in seconds); yields its URL and stops it (its whole
    process group) on the way out."""
    mlflow = Path(sys.executable).parent / "mlflow"
    log = open(log_path, "w")
    server = subprocess.Popen([str(mlflow), "server", "--backend-store-uri", backend, "--artifacts-destination", str(artifacts),
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              env={**(env or os.environ), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = log_path.read_text().strip().splitlines()[-1:] or ["no output"]
                raise ClusterError(f"mlflow server did not start ({tail[0][:200]}; log: {log_path})")
            time.sleep(0.5)
        yield url
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def summary(url: str, storage: str, registered: str) -> list[str]:
    """What the server's store now holds: runs per stage, trial runs per worker, model versions."""
    import mlflow
    import optuna
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(url)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []
    stages: dict[str, int] = {}
    for run in runs:
        stages[run.data.tags.get("stage", "?")] = stages.get(run.data.tags.get("stage", "?"), 0) + 1
    workers = {run.data.tags.get("tune_worker") for run in runs if run.data.tags.get("stage") == "tune-trial"}
    studies = optuna.get_all_study_summaries(storage)
    versions = client.search_model_versions(f"name='{registered}'") if registered else []
    return [f"runs in experiment '{EXPERIMENT}': " + ", ".join(f"{stage} {n}" for stage, n in sorted(stages.items())),
            f"tuning trials ran in {len(workers)} worker processes; Optuna studies in PostgreSQL: "
            + ", ".join(f"{s.study_name} ({s.n_trials} trials)" for s in studies),
            f"registered model '{registered}': {len(versions)} version(s)"]


def run_demo(repo: Path, once: bool, port: int, dvc_args: list[str]) -> int:
    registered = next((a.split("=", 1)[1] for a in dvc_args if a.startswith("mlflow.registered_model=")), "")
    with tempfile.TemporaryDirectory(prefix="brainsynth-cluster-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o711)  # the postgres user (when run as root) must reach its folder inside
        (folder / "postgres").mkdir()
        with postgres_cluster(folder / "postgres") as postgres, mlflow_server(f"{postgres}/mlflow", folder / "artifacts", port,
                                                                               folder / "mlflow-server.log") as url:
            storage = f"{postgres}/optuna"
            print(f"PostgreSQL {postgres} and mlflow server {url} are up (in {folder}); running the pipeline against them", flush=True)
            env = {k: v for k, v in os.environ.items() if k not in ("DVC_ROOT", "DVC_EXP_NAME")}
            env["MLFLOW_TRACKING_URI"] = url
            env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
            cmd = [str(Path(sys.executable).parent / "dvc"), "exp", "run", "--temp", "-S", f"mlflow.experiment={EXPERIMENT}",
                   "-S", f"tune.storage={storage}", "-S", "tune.n_workers=2", "-S", "train.nproc_per_node=2", *dvc_args]
            result = subprocess.run(cmd, cwd=repo, env=env)
            if result.returncode != 0:
                raise ClusterError(f"the pipeline failed (dvc exp run exited {result.returncode}); the servers' logs are in {folder}")
            lines = summary(url, storage, registered)
            print("\n".join(["", *lines, "", f"MLflow UI: {url}  — experiment '{EXPERIMENT}': the tune run with one nested run per trial "
                             "(tag tune_worker: which worker ran it), the train run (2 processes, one run), evaluate and its "
                             f"figures; Models: '{registered}' with its aliases. The local mlflow.db was not touched."]), flush=True)
            if not once:
                print("Press Ctrl-C to stop both servers.", flush=True)
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
            print("stopping the servers", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m brainsynth.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="stop the servers as soon as the pipeline has run")
    parser.add_argument("--port", type=int, default=0, help="the mlflow server's port on 127.0.0.1 (0: a free one)")
    parser.add_argument("dvc_args", nargs="*", help="after --: more `dvc exp run` arguments (-S key=value ...)")
    args = parser.parse_args(argv)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # `kill` stops the servers like Ctrl-C does (the context managers' cleanup)
    try:
        port = check_port(args.port) if args.port else free_port()
        return run_demo(Path.cwd(), args.once, port, args.dvc_args)
    except ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: servers stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
