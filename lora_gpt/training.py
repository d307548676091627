"""Pieces every training loop here shares: random windows, the optimizer, the schedule, and
language-model metrics."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torchmetrics import MeanMetric


def random_windows(tokens: np.ndarray, count: int, span: int, seed: Sequence[int]) -> np.ndarray:
    """`[count, span]` int64: windows of `tokens` at uniformly random starts, from the first window
    to the last, drawn by numpy's generator seeded with `seed`: a pure function of `(seed, tokens)`,
    so a step's batch does not depend on what ran before it (a resume draws the same)."""
    if len(tokens) < span:
        raise ValueError(f"{len(tokens)} tokens hold no window of {span}.")
    starts = np.random.default_rng(list(seed)).integers(0, len(tokens) - span + 1, count)
    return np.stack([tokens[s : s + span] for s in starts]).astype(np.int64)


def adamw(
    named_params: Iterable[tuple[str, nn.Parameter]],
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
) -> torch.optim.AdamW:
    """AdamW that decays matrices only (weights, embeddings, adapters), not biases or norms."""
    params = [(n, p) for n, p in named_params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: freeze less, or inject LoRA adapters first.")
    decay = [p for _, p in params if p.dim() >= 2]
    no_decay = [p for _, p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas)


def one_cycle(
    optimizer: torch.optim.Optimizer, lr: float, total_steps: int, warmup: float = 0.02, final_div: float = 10.0
) -> torch.optim.lr_scheduler.OneCycleLR:
    """OneCycle as the paper's code runs it: from lr/100, warmup over the first `warmup` share of
    steps to lr, then cosine down to lr/`final_div` (the paper's runs: 5)."""
    start_div = 1e2
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=lr,
        total_steps=max(total_steps, 2),
        pct_start=warmup,
        anneal_strategy="cos",
        cycle_momentum=False,
        div_factor=start_div,
        final_div_factor=final_div / start_div,
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
