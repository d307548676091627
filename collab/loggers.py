"""Where a run's metrics go: `metrics.csv` in the run folder (kept across resumes), TensorBoard or W&B."""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

from lightning.pytorch import loggers
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment

from lora_gpt.errors import ConfigError

# `--logger` choice -> the packages of which one must be installed, and the extra that installs it.
PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that it appends to an existing metrics file (whose columns
    it takes over) instead of deleting it: a resumed run continues the history, which the run
    folder first trims to its checkpoint (`RunFolder.keep_until`)."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])


class RunCSVLogger(loggers.CSVLogger):
    """`metrics.csv` directly in the run folder, appended to across resumes."""

    def __init__(self, folder: Path) -> None:
        super().__init__(save_dir=folder, name="", version="")

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if not isinstance(self._experiment, _AppendingWriter):  # None until the first call
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_logger(kind: str) -> None:
    """Refuse, before any work, a `--logger` whose package is not installed, naming the extra to install."""
    packages = PACKAGES.get(kind, ())
    if packages and not any(map(installed, packages)):
        raise ConfigError(
            f"--logger {kind} needs the {packages[0]} package, which is not installed. "
            f'Fix: pip install -e ".[{kind}]" (or pip install {packages[0]}), or --logger csv.'
        )


def make_logger(kind: str, folder: Path) -> Logger:
    """The logger `--logger` names, writing under the run folder."""
    if kind == "tensorboard":
        return loggers.TensorBoardLogger(save_dir=folder, name="", version="")
    if kind == "wandb":
        return loggers.WandbLogger(save_dir=folder, project="collab-lora", name=folder.name)
    return RunCSVLogger(folder)
