"""What a training run shows on the console: a progress bar that counts the run's optimizer steps,
and none of the third-party messages that say nothing about the user's run.

Lightning's own bar counts batches of an epoch; a run bounded by steps has no epochs to count, so it
shows `Epoch 0/-2`. `StepProgressBar` shows `step 40/100` with the last training loss and the last
validation perplexity. `quiet_third_party` drops, on every run, Lightning's advertising tips, its
notes about settings the project chose on purpose, and a deprecation that Lightning's own code
triggers in torch; its device and precision lines stay.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf

# Lightning's info lines, by how they start, that are not the user's business.
NOISE = (
    "💡 Tip:",  # advertising for Lightning's cloud products
    "TPU available:",  # this project runs on CPUs and CUDA GPUs only
    "HPU available:",
    "`Trainer(val_check_interval=",  # --eval_freq 1 explained in Lightning's terms
    "`Trainer.fit` stopped: `max_steps=",  # the run's own printout says where it ended
)
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


def _not_noise(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(NOISE)


def quiet_third_party() -> None:
    """Silence Lightning's tips and notes in `NOISE` and torch's deprecation of `LeafSpec`, which
    Lightning's own code triggers (nothing the user can change). Safe to call more than once."""
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _not_noise not in logger.filters:
            logger.addFilter(_not_noise)


def _plain(message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None) -> str:
    return f"warning: {message}\n"


def plain_warnings() -> None:
    """Show warnings as the command lines show errors, one `warning: ...` line each, without the
    source line Python prints after them (the user's run, not our code, is what they are about)."""
    warnings.formatwarning = _plain


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, counting the run's optimizer steps (`step 40/100`, from the step a
    resumed run starts at) with the last training loss and validation perplexity beside it."""

    BAR_FORMAT = "{desc} {n_fmt}/{total_fmt} |{bar:24}| [{elapsed}<{remaining}{postfix}]"
    SHOWN = {"train/loss": ("loss", "{:.3f}"), "val/ppl": ("val ppl", "{:.1f}")}  # metric -> name, format

    @property
    def train_description(self) -> str:
        return "step"

    @property
    def validation_description(self) -> str:
        return "validation"

    def on_train_epoch_start(self, trainer: Any, *_: Any) -> None:
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps if trainer.max_steps > 0 else convert_inf(self.total_train_batches))
        bar.n = trainer.global_step

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        bar = self.train_progress_bar
        if not bar.disable and self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the bar

    def on_validation_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.has_dataloader_changed(dataloader_idx):  # one data loader: no "DataLoader 0" in the label
            self.val_progress_bar.reset(total=convert_inf(self.total_val_batches_current_dataloader))

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        return {name: fmt.format(metrics[key]) for key, (name, fmt) in self.SHOWN.items() if key in metrics}
