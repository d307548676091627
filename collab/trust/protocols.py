"""What a trust round reads, written down as structural types (`typing.Protocol`).

`Measurements` is all a trust family may ask about the clients of a round; it never learns who
answers. The batched run answers in this process (`collab.trust.batched`, from a
`CollaborativeModel` and its `ClientData`: `collab.module.CollabLoRAModule` and
`data.ClientDataModule` satisfy them without naming them); a federated server answers with messages
to the clients that hold the data (`collab.flower`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

import torch
from numpy.typing import ArrayLike

from .scores import TokenMeasure

# (i, n): the i-th of n interleaved parts of a split's batches (batches i, i + n, i + 2n, ...)
Part = tuple[int, int]


def batches_of(batches: Sequence[torch.Tensor], part: Part | None) -> list[torch.Tensor]:
    """The batches of `part` (None: all); a part past the last batch wraps around, so none is empty."""
    if part is None:
        return list(batches)
    i, n = part
    return list(batches[i % min(n, len(batches)) :: n])


class Measurements(Protocol):
    """What a trust family may measure about the P clients of a round, in the round's order.

    A family names the members it calls in its `needs`; each costs what it says, so a family pays
    only for what it reads.
    """

    @property
    def num_clients(self) -> int:
        """P, the clients of the round."""
        ...

    def mixture(self) -> torch.Tensor:
        """`[P, C]`: each client's share of tokens from each category (rows sum to 1)."""
        ...

    def adapters(self) -> Mapping[str, torch.Tensor]:
        """The stacked adapters `[P, ...]` the clients hold (in a federation: the ones they sent)."""
        ...

    def pair_losses(self, pairs: torch.Tensor | None = None, part: Part | None = None) -> torch.Tensor:
        """`[P, P]`: the mean next-token loss (nats) of client j's model on client i's `trust` split (its
        `part` of the batches; None: all) at the pairs set in `pairs` (`[P, P]` bool, the diagonal among
        them; None: every pair), NaN elsewhere. Cost: one evaluation per pair."""
        ...

    def mixture_losses(self, rows: torch.Tensor, part: Part | None = None) -> torch.Tensor:
        """`[K, P]`: the mean next-token loss (nats) on client i's `trust` split (its `part`) of the
        adapter averaged with `rows[k, i]` (`[K, P, P]`, each row a weight per client; clients with a
        non-finite adapter count as zero, as in the aggregation). Cost: one evaluation per client
        per row."""
        ...

    def token_distances(self, measure: TokenMeasure, pairs: torch.Tensor | None = None) -> torch.Tensor:
        """`[P, P]`: `measure`'s mean distance between client i's and client j's predictions on the
        shared reference text, at the pairs set in `pairs` (None: every pair), zero elsewhere. Cost: one
        evaluation per client."""
        ...


class ClientData(Protocol):
    """The clients' data as the batched run's measurements read it."""

    # `[N, C]`: each client's share of tokens from each category (rows sum to 1)
    mixture: ArrayLike

    def trust_batches(self, num_batches: int | None = None) -> list[torch.Tensor]:
        """`[N, b, T+1]` batches, slice i from client i's own `trust` split (never the reported `val`)."""
        ...

    def ref_batches(self, num_batches: int | None = None) -> list[torch.Tensor]:
        """`[b, T+1]` batches of the reference text every client shares."""
        ...


class CollaborativeModel(Protocol):
    """N clients' models over one base, as the batched run's measurements and aggregation use them."""

    num_clients: int

    def adapters(self) -> Mapping[str, torch.Tensor]:
        """The stacked adapter tensors `[N, ...]` by name."""
        ...

    def pair_losses(
        self, batches: Sequence[torch.Tensor], pairs: torch.Tensor | None = None, chunk: int | None = None
    ) -> torch.Tensor:
        """`[N, N]`: the mean next-token loss (nats) of client j's model on client i's slices of the
        `[N, b, T+1]` batches, at the pairs set in `pairs` (`[N, N]` bool; None: every pair), NaN
        elsewhere; dropout off. `chunk` bounds how many pairs' activations exist at once."""
        ...

    def client_logits(
        self, idx: torch.Tensor, positions: slice = slice(None), chunk: int | None = None
    ) -> Iterator[torch.Tensor]:
        """Every client's logits on the same token ids `[b, T]` at `positions`, a block of positions
        at a time (`[N, b, t, V]`, so that memory does not hold N full-vocabulary streams), dropout
        off; `chunk` bounds how many clients' activations exist at once."""
        ...

    def replace_adapters(self, adapters: Mapping[str, torch.Tensor], reset: torch.Tensor) -> None:
        """Copy in new stacked adapters; the clients where `reset` (`[N]` bool) is set also lose their
        optimizer state, which is as broken as the adapter it came from."""
        ...


def missing_members(obj: object, protocol: type, names: Sequence[str] | None = None) -> list[str]:
    """The members of `protocol` (or just `names` of them) that `obj` lacks."""
    declared = [n for n in (*protocol.__annotations__, *vars(protocol)) if not n.startswith("_")]
    return [n for n in dict.fromkeys(declared) if (names is None or n in names) and not hasattr(obj, n)]
