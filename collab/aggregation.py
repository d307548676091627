"""Trust-weighted aggregation in the training loop, as a Lightning callback.

`TrustAggregation` decides when (local-only for `pretraining_rounds` steps, then every
`trust_freq` steps) and runs the trust round (`collab.trust.TrustRounds`) with the batched run's
own measurements (`collab.trust.BatchedMeasurements`): the round picks the pairs to score, scores,
weighs and averages; this callback copies the averages into the module (resetting the optimizer
state of clients the round left out as broken), logs the trust's quality against the known data,
and has the run folder keep the round. It reads the module and the data module only through
`collab.trust.protocols`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from .attacks import BatchedAttack
from .run_folder import RunFolder
from .trust import BatchedMeasurements, ClientData, CollaborativeModel, TrustRounds, TrustSettings
from .trust.protocols import missing_members

# What each measurement a family may need reads of the data module (`collab.trust.BatchedMeasurements`).
DATA_NEEDS = {
    "mixture": ("mixture",),
    "pair_losses": ("trust_batches",),
    "mixture_losses": ("trust_batches",),
    "token_distances": ("ref_batches",),
}


class TrustAggregation(L.Callback):
    """Every client's adapter becomes its trust-weighted average of all adapters, every so often."""

    def __init__(
        self,
        *,
        settings: TrustSettings = TrustSettings(),
        folder: RunFolder | None = None,
        seed: int = 0,
        attack: BatchedAttack | None = None,
    ) -> None:
        self.settings, self.folder, self.seed = settings, folder, seed
        self.attack = attack  # bad clients whose rows become what they send before each round
        self.last_step = -1
        self.rounds: TrustRounds | None = None  # made at setup, when the client count is known
        self._saved_rounds: dict[str, Any] | None = None  # a checkpoint's rounds, read before setup

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Fail before training if the module or the data lack what this strategy reads."""
        missing = missing_members(pl_module, CollaborativeModel)
        rounds = TrustRounds(self.settings, getattr(pl_module, "num_clients", 0), self.seed)
        needs = [member for need in ("mixture", *rounds.family.needs) for member in DATA_NEEDS.get(need, ())]
        missing_data = missing_members(getattr(trainer, "datamodule", None), ClientData, needs)
        if missing or missing_data:
            raise TypeError(
                f"trust strategy {self.settings.strategy} needs the module to offer {missing} and the data "
                f"module {missing_data} (collab.trust.protocols); use collab.module.CollabLoRAModule and "
                "data.ClientDataModule, or add them."
            )
        if self.rounds is None:
            self.rounds = rounds
        if self.attack is not None:  # before a checkpoint is restored: the initial adapters
            self.attack.start(pl_module)
        if self._saved_rounds is not None:
            self.rounds.load_state_dict(self._saved_rounds)
            self._saved_rounds = None

    def due(self, step: int) -> bool:
        return step != self.last_step and self.settings.aggregates_at(step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self.due(step) or self.rounds is None:
            return
        self.last_step = step
        model = pl_module if self.attack is None else self.attack.send(pl_module, step)
        measured = BatchedMeasurements(model, trainer.datamodule, self.settings.eval_chunk)
        outcome = self.rounds.run(step, measured)
        pl_module.replace_adapters(outcome.adapters, reset=~outcome.usable)
        if self.attack is not None:
            self.attack.after(outcome.adapters)
        record = outcome.record
        pl_module.log_metrics({f"trust/{k}": v for k, v in record["quality"].items() if v is not None}, step)
        if record["excluded"]:
            rank_zero_warn(
                f"step {step}: clients {record['excluded']} have non-finite adapters or trust "
                "scores; they were left out of every other client's average and reset to "
                "the mean of the healthy clients."
            )
        if self.folder is not None and trainer.is_global_zero:
            self.folder.write_trust(record)

    @property
    def history(self) -> list[dict[str, Any]]:
        """Each round's record without its matrices."""
        return self.rounds.history if self.rounds is not None else []

    def state_dict(self) -> dict[str, Any]:
        rounds = self.rounds.state_dict() if self.rounds is not None else self._saved_rounds
        state: dict[str, Any] = {"last_step": self.last_step, "rounds": rounds}
        if self.attack is not None:  # a resumed free rider sends back what it received before the stop
            state["attack_received"] = self.attack.received
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_step = state_dict["last_step"]
        if self.attack is not None and state_dict.get("attack_received") is not None:
            self.attack.received = state_dict["attack_received"]
        # checkpoints made before the round was one object keep its parts beside last_step
        rounds = state_dict.get("rounds") or {
            "history": state_dict.get("history", []),
            "prior": state_dict.get("last_trust"),
        }
        if self.rounds is not None:
            self.rounds.load_state_dict(rounds)
        else:
            self._saved_rounds = rounds
