"""`dynamic-token` without uploading whole vocabularies.

The distances of `collab.trust.scores` read client j's predictions only at client i's top tokens
(`TopProbabilities`), or are L1 distances of vectors that are zero outside each client's top tokens
(`TopLogits`). So they come out the same on a per-position vocabulary that holds every client's top
tokens: each client first sends its top token ids at every reference position, the server sends back
their union, and each client sends its predictions on the union only. The server then runs the
measure's own `distance_sum` on those compact predictions. Padding slots hold `PAD` for every client:
never among a client's top probabilities, and at no distance between two clients' logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..trust import TopLogits, TopProbabilities

PAD = -1.0  # the prediction every client sends at a padding slot of the union
PAD_ID = -1  # a padding slot's token id


def top_ids(outputs: torch.Tensor, k: int) -> torch.Tensor:
    """`[T', k]` int32: a client's `k` top tokens at every position of its `[T', V]` predictions."""
    return outputs.topk(min(k, outputs.shape[-1]), dim=-1).indices.int()


def union_ids(tops: Sequence[torch.Tensor]) -> torch.Tensor:
    """`[T', M]` int32: at every position, the union of the clients' `[T', k]` top ids, padded with `PAD_ID`
    up to the largest union (M)."""
    ids = torch.cat(list(tops), dim=-1).long().sort(dim=-1).values
    repeat = torch.zeros_like(ids, dtype=torch.bool)
    repeat[:, 1:] = ids[:, 1:] == ids[:, :-1]
    past_end = int(ids.max()) + 1
    ids = ids.masked_fill(repeat, past_end).sort(dim=-1).values  # each row's distinct ids first
    width = int((~repeat).sum(dim=-1).max())
    return ids[:, :width].masked_fill(ids[:, :width] == past_end, PAD_ID).int()


def on_union(outputs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """`[T', M]`: a client's `[T', V]` predictions at the union's token ids, `PAD` at padding slots."""
    ids = ids.long()
    return outputs.gather(-1, ids.clamp_min(0)).masked_fill(ids == PAD_ID, PAD)


def mean_distances(
    measure: TopProbabilities | TopLogits, values: Sequence[Sequence[torch.Tensor]], pairs: torch.Tensor | None = None
) -> torch.Tensor:
    """`[P, P]` mean distances from `values[c][s]`, client c's `[T', M]` predictions on sequence s's union:
    `measure.distance_sum` sequence by sequence over positions at `pairs` (None: all), as
    `TokenAgreement.scores` sums them."""
    total: torch.Tensor | None = None
    positions = 0
    for per_client in zip(*values, strict=True):
        outputs = torch.stack(list(per_client))[:, None]  # [P, 1, T', M], as client_outputs gives them
        part = measure.distance_sum(outputs, pairs)
        total = part if total is None else total + part
        positions += outputs[0, ..., 0].numel()
    if total is None:
        raise ValueError("no reference sequences to compare the clients' predictions on.")
    return total / positions
