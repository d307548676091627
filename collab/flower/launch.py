"""What both Flower commands do before Flower starts: `collab.fit`'s options, plus the Flower ones, into
a run folder whose `config.yaml` the ServerApp and every ClientApp read.

The dataset is prepared here, once (each client then reads only its own files of it), and the
offline base is built here, so that no client builds it. A run folder holding a saved server state
resumes only with the options it was started with.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..checkpoint import CONFIG_KEY
from ..cli import build_parser, dump_config, fit_config, load_config
from ..config import FitConfig
from ..fit import RUNS_ROOT, base_source, check_resume, format_final, prepare_data
from ..report import SUMMARY_FILE
from ..run_folder import CONFIG_FILE, RunFolderError, run_dir
from .strategy import STATE_FILE

FLOWER_ROOT = RUNS_ROOT / "flower"
# Flower options: (flag, type, default, help); the run config key is the flag with dashes.
FLOWER_OPTIONS: list[tuple[str, type, Any, str]] = [
    (
        "round_timeout",
        float,
        600.0,
        "seconds the server waits for a round's replies; a client that has not "
        "answered by then is left out of the round",
    ),
    ("join_timeout", float, 300.0, "seconds the server waits, at the start, for every client to join"),
]


@dataclass(frozen=True)
class FlowerRun:
    """A prepared run: its configuration (saved in `folder`) and the Flower run config."""

    config: FitConfig
    folder: Path
    run_config: dict[str, Any]

    @property
    def num_clients(self) -> int:
        return self.config.data.prepared_clients


def parser(
    prog: str, description: str | None, extra: Sequence[tuple[str, type, Any, str]] = ()
) -> argparse.ArgumentParser:
    """`collab.fit`'s parser with a `flower` group of options (FLOWER_OPTIONS, then `extra`)."""
    p = build_parser(prog=prog, description=description)
    group = p.add_argument_group("flower", "the federation (collab.flower)")
    for flag, kind, default, text in (*FLOWER_OPTIONS, *extra):
        group.add_argument(
            f"--{flag}",
            dest=f"flower.{flag}",
            type=kind,
            default=default,
            metavar=flag.upper(),
            help=f"{text} (default {default})",
        )
    return p


def prepare(namespace: argparse.Namespace) -> tuple[FlowerRun, dict[str, Any]]:
    """The run folder for parsed options, with `config.yaml` written; returns the run and the Flower options."""
    given = vars(namespace)
    flower = {k.partition(".")[2]: given.pop(k) for k in list(given) if k.startswith("flower.")}
    config = fit_config(namespace)
    datamodule, data = prepare_data(config)
    init = str(base_source(config.run.init)) if config.run.init == "offline" else config.run.init
    config = replace(
        config, data=replace(data, data_dir=Path(datamodule.data_dir).resolve()), run=replace(config.run, init=init)
    )
    folder = Path(
        config.run.out
        or run_dir(FLOWER_ROOT, data.dataset or "data", config.trust.strategy, config.run.seed, data.num_clients)
    ).resolve()
    if (folder / SUMMARY_FILE).exists():
        raise RunFolderError(
            f"{folder} already holds a finished run ({SUMMARY_FILE}); choose another --out, or "
            "delete the folder to run again."
        )
    if (folder / STATE_FILE).exists() and (folder / CONFIG_FILE).exists():
        check_resume({CONFIG_KEY: load_config(folder / CONFIG_FILE).to_dict()}, config, folder / STATE_FILE)
    config = replace(config, run=replace(config.run, out=folder))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(dump_config(config))
    run_config = {"run-dir": str(folder), **{k.replace("_", "-"): flower[k] for k, *_ in FLOWER_OPTIONS}}
    return FlowerRun(config, folder, run_config), flower


def print_outcome(run: FlowerRun, summary: dict[str, Any], runtime: str) -> None:
    """What both launchers print at the end: the strategy, the bytes each client moved, the final table."""
    print(
        f"\n{run.config.trust.strategy}, {run.num_clients} Flower clients ({runtime}), step "
        f"{summary['final']['step']}; bytes per client and round: {summary['traffic']['mean_per_client_round']}"
    )
    if all(c is not None for c in summary["final"]["clients"]):
        print(format_final(summary))
    print(f"outputs in {run.folder}")
