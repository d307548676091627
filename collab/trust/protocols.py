"""What a trust family reads, written down: the clients' data and the collaborative model.

Structural types (`typing.Protocol`): `data.ClientDataModule` and `collab.module.CollabLoRAModule`
satisfy them without naming them, and so can any other data source or model, e.g. one client's
side of a federated run, without Lightning. A family reads only the `ClientData` members it names
in its `needs`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

import torch
from numpy.typing import ArrayLike


class ClientData(Protocol):
    """The clients' data as trust scoring sees it."""

    # `[N, C]`: each client's share of tokens from each category (rows sum to 1)
    mixture: ArrayLike

    def trust_batches(self, num_batches: int | None = None) -> list[torch.Tensor]:
        """`[N, b, T+1]` batches, slice i from client i's own `trust` split (never the reported `val`)."""
        ...

    def ref_batches(self, num_batches: int | None = None) -> list[torch.Tensor]:
        """`[b, T+1]` batches of the reference text every client shares."""
        ...


class CollaborativeModel(Protocol):
    """N clients' models over one base, as trust scoring and aggregation use them."""

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
