"""Every client's validation metrics in one object of `[N]` tensors.

One metric object per client (hundreds of them, each with its own states and bookkeeping) made
memory grow with N by more than the clients' adapters; one object whose states are `[N]` sums
costs a few numbers per client, and still syncs across devices as a torchmetrics `Metric`.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from lora_gpt import ClientSlice


class ClientMetrics(Metric):
    """Token-weighted validation loss, perplexity (exp of that loss) and next-token accuracy of
    each of `num_clients` clients."""

    full_state_update = False
    loss_sum: torch.Tensor  # [N] float64 sums, as `add_state` registers them
    correct: torch.Tensor
    tokens: torch.Tensor

    def __init__(self, num_clients: int) -> None:
        super().__init__()
        for name in ("loss_sum", "correct", "tokens"):
            self.add_state(name, torch.zeros(num_clients, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, clients: ClientSlice, token_losses: torch.Tensor, correct: torch.Tensor) -> None:
        """One batch of `clients`: per-token losses and top-1 hits `[k, ...]`, slice i for client i of `clients`."""
        part = clients.adapters
        self.loss_sum[part] += token_losses.flatten(1).double().sum(1)
        self.correct[part] += correct.flatten(1).double().sum(1)
        self.tokens[part] += token_losses[0].numel()

    def compute(self) -> dict[str, torch.Tensor]:
        """`[N]` tensors: `loss`, `ppl` and `acc` of every client."""
        loss = self.loss_sum / self.tokens
        return {"loss": loss.float(), "ppl": loss.exp().float(), "acc": (self.correct / self.tokens).float()}
