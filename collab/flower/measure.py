"""A trust family's `Measurements` answered by the federation's clients, with messages.

Each client measures on what it alone holds (its own `trust` split, its model's predictions on the
shared reference text) and sends back numbers, never data: `pair_losses` sends client i the
adapters of its candidate peers and gets back its row; `mixture_losses` sends client i the averages
its candidate rows make, the same way; `token_distances` gets every client's top
token ids on the reference text, sends back their union, and gets each client's predictions on the
union (`token_union`), from which the server forms the same distances as the batched run. A round
runs among the clients that answer every exchange it needs: where one does not answer,
`ClientsAbsent` names those that did, and the server runs the round again among them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from flwr.app import RecordDict

from ..trust import TokenMeasure
from ..trust.matrices import aggregate, finite_clients
from ..trust.protocols import Part
from . import records
from .token_union import mean_distances, union_ids

Adapter = dict[str, torch.Tensor]
# Sends each listed client its content as a message of a kind; returns the contents of the replies of
# the clients that answered in time.
Exchange = Callable[[Mapping[int, RecordDict], str], dict[int, RecordDict]]


class ClientsAbsent(Exception):
    """Not every client of a round answered one of its exchanges."""

    def __init__(self, answered: Sequence[int]) -> None:
        super().__init__(f"only clients {list(answered)} answered")
        self.answered = sorted(answered)


@dataclass
class FederatedMeasurements:
    """`Measurements` of the round's `clients` (ids in the run, in the round's order), from the
    `adapters` and category `mixtures` the server holds and the clients' answers to `exchange`."""

    clients: list[int]
    adapters_held: Mapping[int, Adapter]
    mixtures: Mapping[int, Sequence[float]]
    exchange: Exchange

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    def mixture(self) -> torch.Tensor:
        return torch.tensor([list(self.mixtures[n]) for n in self.clients], dtype=torch.float64)

    def adapters(self) -> dict[str, torch.Tensor]:
        first = self.adapters_held[self.clients[0]]
        return {name: torch.stack([self.adapters_held[n][name] for n in self.clients]) for name in first}

    def _answers(self, contents: Mapping[int, RecordDict], kind: str) -> dict[int, RecordDict]:
        replies = self.exchange(contents, kind)
        if set(replies) != set(contents):
            raise ClientsAbsent(sorted(replies))
        return replies

    def pair_losses(self, pairs: torch.Tensor | None = None, part: Part | None = None) -> torch.Tensor:
        """Row i from client i, which scores its own adapter and its candidate peers' on its data."""
        ids = self.clients
        order = {i: [j for b, j in enumerate(ids) if pairs is None or pairs[a, b]] for a, i in enumerate(ids)}
        replies = self._answers(
            {
                i: records.peer_losses_content({j: self.adapters_held[j] for j in order[i] if j != i}, order[i], part)
                for i in ids
            },
            "query.peer_losses",
        )
        losses = torch.full((len(ids), len(ids)), float("nan"))
        for a, i in enumerate(ids):
            for j, loss in zip(order[i], records.losses(replies[i]).tolist(), strict=True):
                losses[a, ids.index(j)] = loss
        return losses

    def mixture_losses(self, rows: torch.Tensor, part: Part | None = None) -> torch.Tensor:
        """The server forms every candidate average and sends client i its own (`rows[k, i]`) as
        peers numbered -1, -2, ... of a `peer_losses` query: the client scores them on its own data."""
        held = self.adapters()
        averages = [aggregate(held, row, finite_clients(held)) for row in rows]
        names = [-(k + 1) for k in range(len(averages))]
        replies = self._answers(
            {
                i: records.peer_losses_content(
                    {n: {name: t[a] for name, t in avg.items()} for n, avg in zip(names, averages, strict=True)},
                    names,
                    part,
                )
                for a, i in enumerate(self.clients)
            },
            "query.peer_losses",
        )
        return torch.stack([records.losses(replies[i]) for i in self.clients], dim=1)

    def token_distances(self, measure: TokenMeasure, pairs: torch.Tensor | None = None) -> torch.Tensor:
        ids = self.clients
        tops = self._answers({n: records.ref_top_content(measure) for n in ids}, "query.ref_top")
        per_client = [records.sequences(tops[n], records.IDS) for n in ids]
        union = [union_ids(sequence) for sequence in zip(*per_client, strict=True)]
        replies = self._answers({n: records.ref_union_content(union, measure) for n in ids}, "query.ref_values")
        return mean_distances(measure, [records.sequences(replies[n], records.VALUES) for n in ids], pairs)
