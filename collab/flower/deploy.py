"""`python -m collab.flower.deploy`: the federated run in Flower's deployment runtime, as separate
processes on this machine: one SuperLink, one SuperNode per client, and `flwr run`.

Takes `collab.fit`'s options (and the Flower ones). Everything listens on 127.0.0.1 only, in insecure
mode (no TLS: loopback only), on free ports. Each SuperNode gets `--node-config "partition-id=N"` (its
client id; its training state is mirrored to the run folder's `clients/client_NN`). The command waits
for the run's `summary.json`, or `--time_limit` seconds, then stops every process it started; the
processes' logs are in the run folder's `logs/`. Rerun on an
interrupted folder, the server goes on from its last saved round and the clients from their saved
states.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lora_gpt.cli import fail
from lora_gpt.errors import FixableError

from ..report import SUMMARY_FILE
from .config import DEPLOYMENT_FIELDS
from .launch import FlowerRun, command, prepare, print_outcome

APP_DIR = Path(__file__).parent / "app"  # the Flower App (pyproject.toml) that `flwr run` sends
BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode and flwr sit beside this Python
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Processes:
    """The processes a deployment started, each in its own session so its children stop with it."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env = logs, env
        self.started: dict[str, subprocess.Popen] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: Sequence[str]) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                list(argv), stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        self.started[name] = proc
        return proc

    def stop(self, name: str, sig: int = signal.SIGTERM, wait: float = 10.0) -> None:
        """Stop one process and its children (its session), by its id; SIGKILL after `wait` seconds."""
        proc = self.started.pop(name)
        for s in (sig, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, s)
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self) -> None:
        for name in reversed(list(self.started)):
            self.stop(name)


def supernode_argv(run: FlowerRun, client: int, superlink: int) -> list[str]:
    return [
        str(BIN / "flower-supernode"),
        "--insecure",
        "--superlink",
        f"{HOST}:{superlink}",
        "--host",
        HOST,
        "--port",
        str(free_port()),
        "--node-config",
        f"partition-id={client} num-partitions={run.num_clients}",
    ]


def flwr_home(run: FlowerRun, superlink: int) -> Path:
    """A Flower home for this run only: the CLI's connection to this SuperLink, the installed apps."""
    home = run.folder / "flwr"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "{HOST}:{superlink}"\ninsecure = true\n'
    )
    return home


@contextlib.contextmanager
def federation(run: FlowerRun) -> Iterator[tuple[Processes, int]]:
    """A SuperLink and one SuperNode per client, stopped on the way out, whatever happens."""
    superlink = free_port()
    env = {
        **os.environ,
        "FLWR_HOME": str(flwr_home(run, superlink)),
        "PYTHONUNBUFFERED": "1",
        "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
    }  # the SuperLink starts flower-superexec
    procs = Processes(run.folder / "logs", env)
    try:
        procs.start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--host",
                HOST,
                "--port",
                str(superlink),
                "--disable-runtime-dependency-installation",
            ],
        )
        for n in range(run.num_clients):
            procs.start(f"supernode_{n:02d}", supernode_argv(run, n, superlink))
        yield procs, superlink
    finally:
        procs.stop_all()


def check_alive(procs: Processes) -> None:
    if procs.started["superlink"].poll() is not None:
        raise RuntimeError(f"the SuperLink stopped; see {procs.logs / 'superlink.log'}.")


def submit(run: FlowerRun, procs: Processes, deadline: float) -> None:
    """`flwr run` the app on the federation, retrying while the SuperLink is still starting."""
    overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in run.run_config.items())
    argv = [str(BIN / "flwr"), "run", str(APP_DIR), "local", "--run-config", overrides]
    while True:
        done = subprocess.run(argv, env=procs.env, capture_output=True, text=True, timeout=120)
        with open(procs.logs / "flwr_run.log", "a") as log:
            log.write(done.stdout + done.stderr)
        if done.returncode == 0:
            return
        check_alive(procs)
        if time.monotonic() > deadline:
            raise TimeoutError(f"`flwr run` failed until the time limit; see {procs.logs / 'flwr_run.log'}.")
        time.sleep(1.0)


def wait_for_summary(run: FlowerRun, procs: Processes, deadline: float) -> dict[str, Any]:
    path = run.folder / SUMMARY_FILE
    while not path.exists():
        check_alive(procs)
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no {SUMMARY_FILE} within the time limit; the logs are in {procs.logs}, and a "
                "rerun of the same command goes on from the last saved round."
            )
        time.sleep(0.5)
    return json.loads(path.read_text())


def deploy(run: FlowerRun, time_limit: float) -> dict[str, Any]:
    """Start the federation, run the app on it, stop everything; returns the summary."""
    deadline = time.monotonic() + time_limit
    with federation(run) as (procs, _):
        submit(run, procs, deadline)
        return wait_for_summary(run, procs, deadline)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config, flower = command("python -m collab.flower.deploy", __doc__, DEPLOYMENT_FIELDS).parse(argv)
        run = prepare(config, flower)
        summary = deploy(run, flower.time_limit)
    except (FixableError, TimeoutError) as err:
        fail(err)
    print_outcome(run, summary, "deployment")
    return 0


if __name__ == "__main__":
    sys.exit(main())
