"""Pieces every training loop here shares: the optimizer, the schedule, and language-model metrics."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
from torchmetrics import MeanMetric


def adamw(named_params: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float,
          betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW that decays matrices only (weights, embeddings, adapters), not biases or norms."""
    params = [(n, p) for n, p in named_params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: freeze less, or inject LoRA adapters first.")
    decay = [p for _, p in params if p.dim() >= 2]
    no_decay = [p for _, p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas)


def one_cycle(optimizer: torch.optim.Optimizer, lr: float, total_steps: int,
              warmup: float = 0.02) -> torch.optim.lr_scheduler.OneCycleLR:
    """The paper's OneCycle: warmup over the first 2% of steps from lr/100, then cosine down to lr/10."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=max(total_steps, 2), pct_start=warmup,
        anneal_strategy="cos", cycle_momentum=False, div_factor=1e2, final_div_factor=0.1,
    )


class LanguageModelMetrics(nn.Module):
    """Token-weighted validation loss, perplexity (exp of that loss) and next-token accuracy.

    Perplexity as exp of the mean cross-entropy avoids a full softmax metric over 50,257
    classes; both means are `torchmetrics` aggregators, so they sync across devices.
    """

    def __init__(self) -> None:
        super().__init__()
        self.loss = MeanMetric()
        self.accuracy = MeanMetric()

    def update(self, token_losses: torch.Tensor, correct: torch.Tensor) -> None:
        """One batch's per-token losses and top-1 hits (see `cross_entropy.linear_predictions`)."""
        self.loss.update(token_losses.flatten())
        self.accuracy.update(correct.float().flatten())

    def compute(self) -> dict[str, torch.Tensor]:
        loss = self.loss.compute()
        return {"loss": loss, "ppl": loss.exp(), "acc": self.accuracy.compute()}

    def reset(self) -> None:
        self.loss.reset()
        self.accuracy.reset()
