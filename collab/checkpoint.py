"""The run's checkpoint: written whole, after everything its step does, and checked before a resume.

A step's aggregation runs in `on_train_batch_end` and its evaluation after it, so the checkpoint
of an evaluation step is written once that evaluation is done: a run resumed from it misses
nothing (Lightning's own `ModelCheckpoint` saves before the evaluation, which the resumed run
then skips). The loggers are flushed first, so the metrics file holds every step the checkpoint
covers, and the file is written beside its final name and renamed, so it is whole or absent.

On SIGTERM (a scheduler's or `docker stop`'s) Lightning stops the run at the end of the step under
way; that step is checkpointed first, where the rule above allows (a step whose evaluation is
still to come is not: the checkpoint before it stays).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch

from .run_folder import RunFolderError

CONFIG_KEY = "collab_config"  # the run's options, by group, as the checkpoint was made with
DATA_KEY = "collab_data"  # the prepared dataset the run trains on: its folder and `data_digest`


class RunCheckpoint(L.Callback):
    """Save `path` every `every` optimizer steps and at the last one (see the module docstring)."""

    def __init__(
        self, path: Path, every: int, eval_every: int, config: dict[str, Any], data: dict[str, str] | None = None
    ) -> None:
        self.path, self.every, self.eval_every, self.config, self.data = Path(path), every, eval_every, config, data
        self.saved_step = -1  # the step of the last checkpoint this callback wrote
        self._step_before = -1  # the optimizer step before the micro-batch under way

    def _due(self, trainer: L.Trainer) -> bool:
        step = trainer.global_step
        return (
            step > 0
            and step != self.saved_step
            and (step % self.every == 0 or step == trainer.max_steps or trainer.received_sigterm)
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stepped = trainer.global_step != self._step_before  # the micro-batch that completes a step
        if stepped and self._due(trainer) and trainer.global_step % self.eval_every != 0:
            self.save(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and self._due(trainer):
            self.save(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.config
        if self.data is not None:
            checkpoint[DATA_KEY] = self.data

    def save(self, trainer: L.Trainer) -> None:
        for logger in trainer.loggers:
            logger.save()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(tmp, weights_only=False)  # the whole state: a resume needs it
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        self.saved_step = trainer.global_step


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A run checkpoint's contents, or a `RunFolderError` naming the file and how to start afresh."""
    afresh = (
        f"Fix: delete {path} to start the run afresh from step 0 (its folder's other files are replaced as "
        "the run goes), or choose another --out."
    )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - whatever torch.load raises, the file cannot be resumed from
        raise RunFolderError(
            f"{path} cannot be read ({type(err).__name__}: {err}): it is empty, cut short or damaged. {afresh}"
        ) from None
    missing = [
        k for k in ("global_step", "state_dict", CONFIG_KEY) if not isinstance(checkpoint, dict) or k not in checkpoint
    ]
    if missing:
        raise RunFolderError(
            f"{path} is not a checkpoint of python -m collab.fit (it lacks {', '.join(missing)}). {afresh}"
        )
    return checkpoint
