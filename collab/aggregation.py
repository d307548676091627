"""Trust-weighted aggregation of the clients' adapters, as a Lightning callback.

`aggregate` is pure: `A_new = einsum('ij,j...->i...', trust, A)` for every stacked adapter
tensor. `TrustAggregation` decides when (local-only for `pretraining_rounds` steps, then every
`trust_freq` steps), computes the trust matrix of its strategy, guards against non-finite
clients, applies it, saves it (one JSON per aggregation) and logs its quality.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from . import trust as T
from .evaluation import cross_perplexity, token_distance


@torch.no_grad()
def aggregate(adapters: dict[str, torch.Tensor], trust: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each client's new adapter: the trust-weighted average of all clients' adapters."""
    return {name: torch.einsum("ij,j...->i...", trust.to(a.device, a.dtype), a) for name, a in adapters.items()}


def finite_clients(adapters: dict[str, torch.Tensor]) -> torch.Tensor:
    """`[N]` bool: the clients whose every adapter entry is finite."""
    return torch.stack([a.detach().flatten(1).isfinite().all(1).cpu() for a in adapters.values()]).all(0)


class TrustAggregation(L.Callback):
    """Replace every client's adapter by its trust-weighted average of all adapters."""

    def __init__(self, strategy: str, trust_freq: int = 25, pretraining_rounds: int = 0, k: int = 3,
                 similarity: str = "weights", threshold: float | None = None, eval_chunk: int | None = None,
                 token_top_k: int = 10, out_dir: str | Path | None = None) -> None:
        self.strategy = T.Strategy.parse(strategy)
        if trust_freq < 1:
            raise ValueError(f"trust_freq must be >= 1, got {trust_freq}.")
        if k < 1:
            raise ValueError(f"k must be >= 1 (the peers each client keeps under -top-k), got {k}.")
        if pretraining_rounds < 0:
            raise ValueError(f"pretraining_rounds must be >= 0, got {pretraining_rounds}.")
        self.trust_freq, self.pretraining_rounds, self.k = trust_freq, pretraining_rounds, k
        self.similarity = similarity
        self.threshold = T.DEFAULT_THRESHOLDS.get(self.strategy.base, 0.0) if threshold is None else threshold
        self.eval_chunk = eval_chunk
        self.token_top_k = token_top_k
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.last_step = -1
        self.history: list[dict[str, Any]] = []

    def due(self, step: int) -> bool:
        return (step > 0 and step != self.last_step and step >= self.pretraining_rounds
                and step % self.trust_freq == 0)

    def scores(self, module, datamodule) -> torch.Tensor | None:
        """The strategy's `[N, N]` scores (higher = more trust), or None for the fixed strategies."""
        model, n = module.model, module.num_clients
        chunk = self.eval_chunk or module.client_chunk
        base = self.strategy.base
        if base == "dynamic":
            return T.adapter_similarity({k: v.detach() for k, v in module.adapters().items()}, self.similarity)
        if base == "dynamic-ref":
            batches = [b.to(module.device) for b in datamodule.trust_batches()]
            return -cross_perplexity(model, n, batches, chunk)
        if base == "dynamic-token":
            batches = [b.to(module.device) for b in datamodule.ref_batches()]
            dist = token_distance(model, n, batches, chunk, self.token_top_k)
            return -10.0 * dist / dist.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return None

    def trust_matrix(self, module, datamodule) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(trust, scores, healthy) for the current adapters."""
        n = module.num_clients
        healthy = finite_clients(module.adapters())
        base = self.strategy.base
        scores = self.scores(module, datamodule)
        if base == "none":
            trust = T.identity_trust(n)
        elif base == "naive":
            trust = T.uniform_trust(n)
        elif base == "static":
            trust = T.static_trust(torch.as_tensor(datamodule.mixture, dtype=torch.float32))
        else:
            scores = scores.cpu()
            # a client whose model scores NaN/inf on any healthy client's data is unhealthy too
            healthy &= scores[healthy].isfinite().all(0)
            finite_scores = scores.masked_fill(~healthy[None, :], float("-inf")).nan_to_num(nan=float("-inf"))
            trust = T.trust_from_scores(finite_scores, self.strategy.variant, self.k, self.threshold)
        return T.exclude_nonfinite(trust, healthy), scores, healthy

    @torch.no_grad()
    def apply(self, module, trust: torch.Tensor, healthy: torch.Tensor) -> None:
        adapters = module.adapters()
        mask = healthy.to(module.device)
        clean = {name: torch.where(mask.view(-1, *[1] * (a.dim() - 1)), a, torch.zeros_like(a))
                 for name, a in adapters.items()}
        for name, new in aggregate(clean, trust).items():
            adapters[name].copy_(new)
        if not healthy.all():  # a broken client's optimizer moments are as broken as its adapter
            for opt in module.trainer.optimizers:
                for p in adapters.values():
                    for value in opt.state.get(p, {}).values():
                        if torch.is_tensor(value) and value.dim() == p.dim():
                            value[~mask] = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self.due(step):
            return
        self.last_step = step
        datamodule = trainer.datamodule
        trust, scores, healthy = self.trust_matrix(pl_module, datamodule)
        self.apply(pl_module, trust, healthy)
        record: dict[str, Any] = {"step": step, "strategy": self.strategy.name, "trust": trust.tolist(),
                                  "scores": scores.tolist() if scores is not None else None,
                                  "excluded": [int(i) for i in (~healthy).nonzero().flatten()]}
        mixture = getattr(datamodule, "mixture", None)
        if mixture is not None:
            record["quality"] = T.trust_quality(trust, torch.as_tensor(mixture, dtype=torch.float32))
            pl_module.log_dict({f"trust/{k}": v for k, v in record["quality"].items() if v is not None})
        if record["excluded"]:
            rank_zero_warn(f"step {step}: clients {record['excluded']} have non-finite adapters or trust "
                           "scores; they were left out of every other client's average and reset to "
                           "the mean of the healthy clients.")
        self.history.append(record)
        if self.out_dir is not None and trainer.is_global_zero:
            folder = self.out_dir / "trust"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"step_{step:06d}.json").write_text(json.dumps(record))

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_step = state_dict["last_step"]
        self.history = state_dict["history"]
