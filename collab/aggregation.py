"""Trust-weighted aggregation in the training loop, as a Lightning callback.

`TrustAggregation` decides when (local-only for `pretraining_rounds` steps, then every
`trust_freq` steps); each round asks its trust family which pairs to score (all, or each client's
candidates under `--trust_peers`, ranked by the previous round's trust), for scores and trust,
replaces every client's adapter by its trust-weighted average (`collab.trust.aggregate`), leaves
out clients whose adapter or scores turned non-finite, and saves the round (one JSON per
aggregation, with its trust and scores) with the trust's quality against the known data. In memory
it keeps only each round's summary and the last trust matrix, so a long run with many clients does
not hold N² numbers per round. It reads the module and the data module only through
`collab.trust.protocols`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from .trust import (
    ClientData,
    CollaborativeModel,
    TrustSettings,
    aggregate,
    build_family,
    finite_clients,
    trust_quality,
    usable_clients,
)
from .trust.protocols import missing_members


class TrustAggregation(L.Callback):
    """Every client's adapter becomes its trust-weighted average of all adapters, every so often."""

    def __init__(
        self, *, settings: TrustSettings = TrustSettings(), out_dir: str | Path | None = None, seed: int = 0
    ) -> None:
        self.settings, self.seed = settings, seed
        self.family = build_family(settings)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.last_step = -1
        self.history: list[dict[str, Any]] = []  # per round: step, strategy, excluded clients, quality
        self.last_trust: torch.Tensor | None = None  # the last round's trust, the next round's prior

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Fail before training if the module or the data lack what this strategy reads."""
        missing = missing_members(pl_module, CollaborativeModel)
        missing_data = missing_members(getattr(trainer, "datamodule", None), ClientData, self.family.needs)
        if missing or missing_data:
            raise TypeError(
                f"trust strategy {self.settings.strategy} needs the module to offer {missing} and the data "
                f"module {missing_data} (collab.trust.protocols); use collab.module.CollabLoRAModule and "
                "data.ClientDataModule, or add them."
            )

    def due(self, step: int) -> bool:
        return step != self.last_step and self.settings.aggregates_at(step)

    def aggregate_clients(self, model: CollaborativeModel, data: ClientData, step: int) -> dict[str, Any]:
        """One aggregation round on `model`'s adapters; returns its record."""
        adapters = model.adapters()
        finite = finite_clients(adapters)
        pairs = self.family.candidates(self.last_trust, adapters, (self.seed, step))
        scores = self.family.scores(model, data, pairs).cpu()
        usable = usable_clients(scores, finite, pairs)
        trust = self.family.to_trust(scores, finite, pairs)
        model.replace_adapters(aggregate(adapters, trust, usable), reset=~usable)
        self.last_trust = trust
        excluded = [int(i) for i in (~usable).nonzero().flatten()]
        record: dict[str, Any] = {
            "step": step,
            "strategy": self.settings.strategy,
            "trust": trust.tolist(),
            "scores": scores.tolist(),
            "excluded": excluded,
        }
        if pairs is not None:
            record["scored"] = int(pairs.sum())
        mixture = getattr(data, "mixture", None)
        if mixture is not None:
            record["quality"] = trust_quality(trust, torch.as_tensor(mixture, dtype=torch.float32))
        return record

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self.due(step):
            return
        self.last_step = step
        record = self.aggregate_clients(pl_module, trainer.datamodule, step)
        if "quality" in record:
            pl_module.log_metrics({f"trust/{k}": v for k, v in record["quality"].items() if v is not None}, step)
        if record["excluded"]:
            rank_zero_warn(
                f"step {step}: clients {record['excluded']} have non-finite adapters or trust "
                "scores; they were left out of every other client's average and reset to "
                "the mean of the healthy clients."
            )
        self.history.append({k: v for k, v in record.items() if k not in ("trust", "scores")})
        if self.out_dir is not None and trainer.is_global_zero:
            folder = self.out_dir / "trust"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"step_{step:06d}.json").write_text(json.dumps(record))

    def state_dict(self) -> dict[str, Any]:
        last = self.last_trust.tolist() if self.last_trust is not None else None
        return {"last_step": self.last_step, "history": self.history, "last_trust": last}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_step = state_dict["last_step"]
        self.history = state_dict["history"]
        last = state_dict.get("last_trust")  # absent in checkpoints made before it was kept
        self.last_trust = torch.tensor(last) if last is not None else None
