"""What both Flower commands do before Flower starts: `collab.fit`'s options, plus the Flower ones, into
a run folder whose `config.yaml` the ServerApp and every ClientApp read.

The dataset is prepared here, once (each client then reads only its own files of it), and the
offline base is built here, so that no client builds it. A run folder holding a saved server state
resumes only with the options it was started with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lora_gpt.cli import Command

from ..checkpoint import CONFIG_KEY
from ..cli import command_with_fit_options, dump_config, fit_part, load_config
from ..config import FitConfig
from ..fit import RUNS_ROOT, base_source, check_resume, format_final, prepare_data
from ..report import SUMMARY_FILE
from ..run_folder import CONFIG_FILE, RunFolderError, run_dir
from .config import SIMULATION_FIELDS, FlowerConfig
from .strategy import STATE_FILE

FLOWER_ROOT = RUNS_ROOT / "flower"


@dataclass(frozen=True)
class FlowerRun:
    """A prepared run: its configuration (saved in `folder`) and the Flower run config."""

    config: FitConfig
    folder: Path
    run_config: dict[str, Any]

    @property
    def num_clients(self) -> int:
        return self.config.data.prepared_clients


def command(
    prog: str, description: str | None, fields: Sequence[str] = SIMULATION_FIELDS
) -> Command[tuple[FitConfig, FlowerConfig]]:
    """`collab.fit`'s command with the `flower` group's `fields`."""
    return command_with_fit_options(
        prog, description, lambda groups: (fit_part(groups), groups["flower"]), [FlowerConfig], {"flower": fields}
    )


def prepare(config: FitConfig, flower: FlowerConfig) -> FlowerRun:
    """The run folder for the options, with `config.yaml` written."""
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
    return FlowerRun(config, folder, {"run-dir": str(folder), **flower.run_config()})


def print_outcome(run: FlowerRun, summary: dict[str, Any], runtime: str) -> None:
    """What both launchers print at the end: the strategy, the bytes each client moved, the final table."""
    print(
        f"\n{run.config.trust.strategy}, {run.num_clients} Flower clients ({runtime}), step "
        f"{summary['final']['step']}; bytes per client and round: {summary['traffic']['mean_per_client_round']}"
    )
    if all(c is not None for c in summary["final"]["clients"]):
        print(format_final(summary))
    print(f"outputs in {run.folder}")
