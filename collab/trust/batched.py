"""The batched run's answers to a trust family's `Measurements`, in this process.

Every client's model lives in one `CollaborativeModel` (stacked adapters over one base) and every
client's data in one `ClientData`, so a pair loss is one slice of a batched evaluation and the
reference predictions of all clients come from one pass per chunk of clients.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .matrices import aggregate, finite_clients
from .protocols import ClientData, CollaborativeModel, Part, batches_of
from .scores import TokenMeasure


@dataclass
class BatchedMeasurements:
    """`Measurements` of every client of `model` on `data`; `chunk` bounds the clients (pair
    losses: pairs) whose activations exist at once (None: the model's own client chunk)."""

    model: CollaborativeModel
    data: ClientData
    chunk: int | None = None

    @property
    def num_clients(self) -> int:
        return self.model.num_clients

    def mixture(self) -> torch.Tensor:
        return torch.as_tensor(self.data.mixture, dtype=torch.float64)

    def adapters(self) -> Mapping[str, torch.Tensor]:
        return self.model.adapters()

    def pair_losses(self, pairs: torch.Tensor | None = None, part: Part | None = None) -> torch.Tensor:
        return self.model.pair_losses(batches_of(self.data.trust_batches(), part), pairs, self.chunk)

    def mixture_losses(self, rows: torch.Tensor, part: Part | None = None) -> torch.Tensor:
        """Each row's averages put in the model's place in turn, each client's scored on its own
        data, then the clients' own adapters put back."""
        held = {name: a.detach().clone() for name, a in self.model.adapters().items()}
        finite, keep = finite_clients(held), torch.zeros(self.num_clients, dtype=torch.bool)
        own = torch.eye(self.num_clients, dtype=torch.bool)
        batches = batches_of(self.data.trust_batches(), part)
        losses = []
        try:
            for row in rows:
                self.model.replace_adapters(aggregate(held, row, finite), keep)
                losses.append(self.model.pair_losses(batches, own, self.chunk).diagonal().cpu())
        finally:
            self.model.replace_adapters(held, keep)
        return torch.stack(losses)

    def token_distances(self, measure: TokenMeasure, pairs: torch.Tensor | None = None) -> torch.Tensor:
        n = self.num_clients
        total, positions = torch.zeros(n, n, dtype=torch.float64), 0
        for seq in (s for batch in self.data.ref_batches(measure.num_batches) for s in batch):
            # every client's logits, a few positions at a time: never every client's whole vocabulary at once
            for logits in self.model.client_logits(seq[None, :-1], measure.positions, self.chunk):
                outputs = measure.predict(logits)
                total += measure.distance_sum(outputs, pairs)
                positions += outputs[0, ..., 0].numel()
        return total / positions
