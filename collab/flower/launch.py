"""What both Flower launchers do: `collab.fit`'s options (plus the Flower ones) into a run folder held
for this process alone, the federation's processes on this machine (a SuperLink, and in deployment a
SuperNode per client), `flwr run` of the Flower App, and waiting for the run while saying each round.

The dataset is prepared here, once (each client then reads only its own files of it), and the
offline base is built here, so that no client builds it; options a client would refuse are refused
here, before anything starts. The run folder is locked as `collab.fit` locks its own, so a second
run on it stops at once. Whatever stops the run (a client's error, a process that died, the time
limit) ends the launcher with the reason on stderr and every process it started stopped.
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lora_gpt.cli import Command, fail
from lora_gpt.console import plain_warnings
from lora_gpt.errors import ConfigError, FixableError

from ..checkpoint import CONFIG_KEY
from ..cli import command_with_fit_options, dump_config, fit_part, load_config
from ..config import FitConfig
from ..fit import RUNS_ROOT, base_source, check_resume, default_out, prepare_data
from ..run_folder import RunFolder, RunFolderError
from ..summary import format_outcome
from . import credentials, records
from .config import FlowerConfig
from .local import check_federated

FLOWER_ROOT = RUNS_ROOT / "flower"
APP_DIR = Path(__file__).parent / "app"  # the Flower App (pyproject.toml) that `flwr run` sends
BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode and flwr sit beside this Python
HOST = "127.0.0.1"


class FederationError(FixableError):
    """The federated run stopped: a client's error, a process that died, or the time limit."""


@dataclass(frozen=True)
class FlowerRun:
    """A prepared run: its configuration (saved in `folder`), the Flower run config and options."""

    config: FitConfig
    folder: RunFolder
    run_config: dict[str, Any]
    flower: FlowerConfig

    @property
    def num_clients(self) -> int:
        """The dataset's clients, and any bad ones the attack adds after them."""
        return self.config.data.prepared_clients + self.config.attack.count


def command(prog: str, description: str | None) -> Command[tuple[FitConfig, FlowerConfig]]:
    """`collab.fit`'s command with the `flower` group."""
    return command_with_fit_options(
        prog, description, lambda groups: (fit_part(groups), groups["flower"]), [FlowerConfig]
    )


def prepare(config: FitConfig, flower: FlowerConfig, folder: RunFolder) -> FlowerRun:
    """Prepare the data and base and write the run folder's `config.yaml` (the caller holds the folder's
    lock); a finished folder, or one of a run with other options, is refused."""
    check_federated(config)
    datamodule, data = prepare_data(config)
    init = str(base_source(config.run.init)) if config.run.init == "offline" else config.run.init
    config = replace(
        config, data=replace(data, data_dir=Path(datamodule.data_dir).resolve()), run=replace(config.run, init=init)
    )
    if folder.finished():
        raise RunFolderError(
            f"{folder.path} already holds a finished run ({folder.summary.name}); choose another --out, or "
            "delete the folder to run again."
        )
    if folder.server_state.exists() and folder.config.exists():
        check_resume({CONFIG_KEY: load_config(folder.config).to_dict()}, config, folder.server_state)
    config = replace(config, run=replace(config.run, out=folder.path))
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.config.write_text(dump_config(config))
    folder.failure.unlink(missing_ok=True)
    return FlowerRun(config, folder, {"run-dir": str(folder.path), **flower.run_config()}, flower)


def run_folder(config: FitConfig) -> RunFolder:
    """The run's folder: `--out`, or one under `runs/flower` named as `collab.fit` names its own."""
    return RunFolder(Path(config.run.out or default_out(config, FLOWER_ROOT)).resolve())


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Processes:
    """The processes a federation started, each in its own session so its children stop with it."""

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

    def dead(self) -> list[str]:
        return [name for name, proc in self.started.items() if proc.poll() is not None]

    def tail(self, name: str, lines: int = 15) -> str:
        text = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@dataclass
class Federation:
    """A SuperLink on a free loopback port (in simulation mode, or with a SuperNode per client), the
    Flower home that points `flwr` at it, and the processes."""

    run: FlowerRun
    simulation: bool
    procs: Processes
    port: int
    credentials: credentials.Credentials | None  # None: insecure
    nodes: list[int] = field(default_factory=list)  # where secure: the node ids registered for the run's clients

    def supernode_argv(self, client: int) -> list[str]:
        """Client `client`'s SuperNode: with the CA certificate and its own key where secure."""
        return [
            str(BIN / "flower-supernode"),
            *(self.credentials.supernode_flags(client) if self.credentials else ["--insecure"]),
            "--superlink",
            f"{HOST}:{self.port}",
            "--host",
            HOST,
            "--port",
            str(free_port()),
            "--node-config",
            f"partition-id={client} num-partitions={self.run.num_clients}",
        ]

    def submit(self, deadline: float) -> int:
        """`flwr run` the app on the federation; the run's id. Where secure, the ServerApp is told the node ids
        registered for the run's clients and talks to no other node (any node may register a key of its own
        through the SuperLink's open API in Flower 1.41)."""
        run_config = {**self.run.run_config, **({"nodes": " ".join(map(str, self.nodes))} if self.nodes else {})}
        overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        args = ["run", str(APP_DIR), "local", "--run-config", overrides]
        if self.simulation:
            cpus = os.cpu_count() or 1
            args += [
                "--federation-config",
                f"num-supernodes={self.run.num_clients} client-resources-num-cpus=1 init-args-num-cpus={cpus}",
            ]
        return int(self.flwr(args, deadline)["run-id"])

    def register(self, public_key: Path, deadline: float) -> int:
        """Authorise a SuperNode's key with the SuperLink (`flwr supernode register`); the node's id."""
        return int(self.flwr(["supernode", "register", str(public_key), "local"], deadline)["node-id"])

    def flwr(self, args: Sequence[str], deadline: float) -> dict[str, Any]:
        """The JSON answer of `flwr ARGS`, retrying while the SuperLink is still starting."""
        argv = [str(BIN / "flwr"), *args, "--format", "json"]
        log_file = self.procs.logs / f"flwr_{args[0]}.log"
        while True:
            done = subprocess.run(argv, env=self.procs.env, capture_output=True, text=True, timeout=120)
            with open(log_file, "a") as log:
                log.write(done.stdout + done.stderr)
            with contextlib.suppress(ValueError):
                said = json.loads(done.stdout)
                if done.returncode == 0 and said.get("success"):
                    return said
            self.check_alive(started=False)
            if time.monotonic() > deadline:
                raise FederationError(f"`flwr {args[0]}` failed until the time limit; see {log_file}.")
            time.sleep(1.0)

    def check_alive(self, started: bool) -> None:
        """Refuse to go on after the SuperLink died, or a SuperNode before the run's first round ended
        (`started`: it had; later, the server leaves a dead node's client out)."""
        for name in self.procs.dead():
            if name == "superlink" or not started:
                raise FederationError(
                    f"the {name} process stopped (exit {self.procs.started[name].returncode}); the end of "
                    f"{self.procs.logs / (name + '.log')}:\n{self.procs.tail(name)}"
                )

    def run_status(self, run_id: int) -> str:
        """The run's status as the SuperLink reports it (e.g. `running`, `finished:failed`)."""
        done = subprocess.run(
            [str(BIN / "flwr"), "ls", "local", "--run-id", str(run_id), "--format", "json"],
            env=self.procs.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            return "unknown"
        runs = json.loads(done.stdout).get("runs", [])
        return str(runs[0].get("status", "unknown")) if runs else "unknown"

    def wait(self, run_id: int, deadline: float, say: bool = True) -> dict[str, Any]:
        """The run's summary once it is written, saying each finished round on the way; a run that
        failed, a process that died or the time limit ends the wait with the reason."""
        folder = self.run.folder
        seen = folder.rounds.stat().st_size if folder.rounds.exists() else 0
        status_checked = time.monotonic()
        while not folder.summary.exists():
            if folder.failure.exists():
                raise FederationError(f"the federated run stopped: {folder.failure.read_text().strip()}")
            if folder.rounds.exists() and folder.rounds.stat().st_size > seen:
                with open(folder.rounds) as f:
                    f.seek(seen)
                    new = f.read()
                seen += len(new.encode())
                if say:
                    for line in new.splitlines():
                        print(round_line(json.loads(line)), flush=True)
            self.check_alive(started=folder.rounds.exists())
            if time.monotonic() - status_checked > 10:
                status_checked = time.monotonic()
                status = self.run_status(run_id)
                if status.startswith("finished") and not folder.summary.exists() and not folder.failure.exists():
                    time.sleep(1.0)  # the summary may be on its way
                    if not folder.summary.exists():
                        raise FederationError(
                            f"the ServerApp ended ({status}) without a summary; its logs: `flwr log {run_id}` "
                            f"(FLWR_HOME={self.procs.env['FLWR_HOME']}) and {self.procs.logs}."
                        )
            if time.monotonic() > deadline:
                raise FederationError(
                    f"no {folder.summary.name} within --time_limit; the logs are in {self.procs.logs}, and a "
                    "rerun of the same command goes on from the last saved round."
                )
            time.sleep(0.5)
        return json.loads(folder.summary.read_text())


def round_line(row: dict[str, Any]) -> str:
    """One line per finished round: its step, who answered, the bytes it moved, its losses."""
    said = (
        f"round {row['round'] + 1}/{row['rounds']}, step {row['step']}: {row['clients']}/{row['of']} clients, "
        f"{records.megabytes(row['down'])} down, {records.megabytes(row['up'])} up"
    )
    if row.get("train_loss"):
        said += f", train loss {row['train_loss']['loss']:.4f}"
    if row.get("val"):
        said += f", val ppl {row['val']['ppl']:.2f}"
    return said


@contextlib.contextmanager
def federation(run: FlowerRun, simulation: bool) -> Iterator[Federation]:
    """The federation's processes, stopped on the way out, whatever happens. Where `--secure`, the SuperLink
    serves TLS with the run's certificate and lets in only the SuperNodes whose keys are registered with it
    before they start; else everything runs insecure, on 127.0.0.1 only."""
    port = free_port()
    secure = run.flower.secure and not simulation
    creds = credentials.ensure(run.folder.path / "credentials", run.num_clients) if secure else None
    home = run.folder.path / "flwr"
    home.mkdir(parents=True, exist_ok=True)
    tls = f"root-certificates = {json.dumps(str(creds.ca_certificate))}" if creds else "insecure = true"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "{HOST}:{port}"\n{tls}\n'
    )
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "PYTHONUNBUFFERED": "1",
        "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
    }  # the SuperLink starts flower-superexec and the apps' processes
    procs = Processes(run.folder.path / "logs", env)
    fed = Federation(run, simulation, procs, port, creds)
    if not simulation:
        print(
            f"TLS and SuperNode authentication: the credentials are in {creds.folder}"
            if creds
            else "insecure mode: no TLS, and any SuperNode may join (127.0.0.1 only; --secure for TLS and "
            "SuperNode authentication)",
            flush=True,
        )
    try:
        procs.start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                *(creds.superlink_flags() if creds else ["--insecure"]),
                *(["--simulation"] if simulation else []),
                "--host",
                HOST,
                "--port",
                str(port),
                "--disable-runtime-dependency-installation",
            ],
        )
        if creds:
            deadline = time.monotonic() + run.flower.time_limit
            fed.nodes = [fed.register(creds.node_public_key(n), deadline) for n in range(run.num_clients)]
        if not simulation:
            for n in range(run.num_clients):
                procs.start(f"supernode_{n:02d}", fed.supernode_argv(n))
        yield fed
    finally:
        procs.stop_all()


def launch(run: FlowerRun, simulation: bool) -> dict[str, Any]:
    """Start the federation, run the app on it, wait for it, stop everything; returns the summary."""
    deadline = time.monotonic() + run.flower.time_limit
    with federation(run, simulation) as fed:
        return fed.wait(fed.submit(deadline), deadline)


def main(prog: str, description: str | None, simulation: bool, argv: Sequence[str] | None = None) -> int:
    """A launcher's command line: parse, hold the run folder, prepare, run, print the outcome."""
    plain_warnings()
    try:
        config, flower = command(prog, description).parse(argv)
        if simulation and flower.secure:
            raise ConfigError(
                "--flower.secure is for the deployment runtime (python -m collab.flower.deploy): the simulation "
                "runs its clients in one process, with no SuperNode to let in; drop --secure."
            )
        folder = run_folder(config)
        with folder.locked():
            run = prepare(config, flower, folder)
            print(
                f"{'simulation' if simulation else 'deployment'} of {run.num_clients} Flower clients in {folder.path}"
            )
            summary = launch(run, simulation)
    except FixableError as err:
        fail(err)
    print(format_outcome(summary))
    return 0
