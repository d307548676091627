"""A run's folder, the same for every runtime: where each of its files lives, the lock that keeps
it to one run at a time, atomic writes, and trimming what an interrupted attempt wrote past the
checkpoint a resume starts from.

    runs/DATASET[-nCLIENTS]/TRUST/seedSEED/
        config.yaml            every option, by group (`--config` reads it back)
        summary.json           written last: its presence means the run finished (`collab.summary`)
        metrics.csv            one row per logged step, kept across resumes (collab.fit)
        checkpoints/last.ckpt  what a rerun of the same command resumes from (collab.fit)
        server_state.pt        the same for a federated server, after every round (collab.flower)
        rounds.jsonl           one line per finished round of a federated run
        failed.txt             why a federated run stopped, where its launcher reads it
        trust/step_NNNNNN.json one file per aggregation
        adapters/client_NN/    each client's final adapter
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from data.manifest import write_json
from lora_gpt.errors import FixableError

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
LOCK_FILE = ".lock"


class RunFolderError(FixableError):
    """A run folder cannot be used as asked: finished, in use, or holding a damaged or foreign run."""


def readable_name(dataset: str) -> str:
    """A file-name-safe, readable name for a dataset: a recipe name as it is, a path of your own data
    by its last part (`/home/u/my data/corpus.csv:mixed` -> `corpus.csv_mixed`), never a separator or space."""
    path, _, kind = dataset.rpartition(":") if dataset.endswith((":mixed", ":specific")) else (dataset, "", "")
    name = re.split(r"[/\\]", path.rstrip("/\\"))[-1] + (f"_{kind}" if kind else "")
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "dataset"


def run_dir(root: Path, dataset: str, strategy: str, seed: int, num_clients: int | None = None) -> Path:
    """`ROOT/DATASET[-nCLIENTS]/STRATEGY/seedSEED`: one folder per run, so runs that differ in
    dataset, client count, strategy or seed never share one (DATASET as `readable_name` gives it)."""
    name = readable_name(dataset) + (f"-n{num_clients}" if num_clients else "")
    return Path(root) / name / strategy / f"seed{seed}"


@dataclass(frozen=True)
class RunFolder:
    path: Path

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.ckpt"

    @property
    def trust(self) -> Path:
        return self.path / "trust"

    @property
    def server_state(self) -> Path:
        return self.path / "server_state.pt"

    @property
    def rounds(self) -> Path:
        return self.path / "rounds.jsonl"

    @property
    def failure(self) -> Path:
        return self.path / "failed.txt"

    def adapters(self, client: int) -> Path:
        """The folder that holds client `client`'s final adapter (`lora_gpt.save_adapters`' format)."""
        return self.path / "adapters" / f"client_{client:02d}"

    def finished(self) -> bool:
        return self.summary.exists()

    def write_summary(self, summary: dict) -> None:
        """The run's summary, whole or absent: its presence says the run finished."""
        write_json(self.summary, summary)

    def write_trust(self, record: dict) -> None:
        """One aggregation's record (`collab.trust.RoundOutcome.record`)."""
        write_json(self.trust / f"step_{record['step']:06d}.json", record)

    def write_failure(self, text: str) -> None:
        """Why the run stopped, for the process that started it to say."""
        self.failure.write_text(text.rstrip() + "\n")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder for this process (created if need be); a second run on it fails at once.
        A folder this call created and nothing else wrote to is removed again on the way out."""
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            opened = open(self.path / LOCK_FILE, "a+")
        except OSError as err:  # a file there, a file on the way, no permission, a full disk
            raise RunFolderError(
                f"--out {self.path}: a run folder cannot be made there ({err.strerror}: {err.filename}). Fix: "
                "choose another --out, a folder you can write to."
            ) from None
        with opened as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or "another process"
                raise RunFolderError(
                    f"{self.path} is in use by another run ({holder}); two runs in one folder "
                    "would overwrite each other. Fix: wait for it to finish, or choose another "
                    "--out."
                ) from None
            lock.seek(0)
            lock.truncate()
            lock.write(f"pid {os.getpid()}\n")
            lock.flush()
            try:
                yield
            finally:
                left = {p.name for p in self.path.iterdir()}
                if created and left <= {LOCK_FILE}:
                    (self.path / LOCK_FILE).unlink()
                    self.path.rmdir()

    def keep_until(self, step: int) -> None:
        """Drop what an earlier attempt wrote for steps after `step` (the checkpoint's; -1 when none):
        metrics rows and trust matrices the resumed run writes again."""
        for path in self.trust.glob("step_*.json"):
            if int(path.stem.removeprefix("step_")) > step:
                path.unlink()
        if not self.metrics.exists():
            return
        with open(self.metrics, newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames or [], [r for r in reader if int(r["step"]) <= step]
        if not rows:
            self.metrics.unlink()
            return
        tmp = self.metrics.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(self.metrics)
