"""Clients' models on chosen inputs, for the data-driven trust scores.

Each pass runs a chunk of `chunk` adapters, each on its own slice of the input, so N clients take
N / chunk passes, never N separate models, and `chunk` bounds the activations held at once. All
dropout is off. Losses go through the chunked head loss (`lora_gpt.cross_entropy`), never through
every token's logits at once. `collab.module.CollabLoRAModule` offers these as the
`CollaborativeModel` methods of `collab.trust.protocols`; any GPT with stacked adapters can call
them directly (e.g. one client of a federated run scoring its peers' adapters on its own data).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from lora_gpt import GPT, client_slices
from lora_gpt.clients import picked_adapters
from lora_gpt.cross_entropy import fused_linear_cross_entropy

# Logits of one block of positions of every client (`position_blocks`): 64 MB in float32.
LOGIT_ELEMENTS = 1 << 24


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (every dropout off, attention's included) and no autograd, then restore."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def token_losses(model: GPT, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each token's next-token loss (float32, shaped like `targets`) from final hidden states,
    through the chunked head loss: no argmax, no full logits, no gradients (detached: the loss
    forms the gradients of whatever needs one)."""
    return fused_linear_cross_entropy(hidden.detach(), model.lm_head.weight.detach(), targets)[1]


def mean_losses(model: GPT, num_adapters: int, batches: Sequence[torch.Tensor], chunk: int) -> torch.Tensor:
    """`[num_adapters]`: each adapter's model's mean next-token loss (nats) on the same `[b, T+1]` batches."""
    total = torch.zeros(num_adapters, dtype=torch.float64)
    tokens = 0
    with evaluating(model):
        for batch in batches:
            x, y = batch[..., :-1], batch[..., 1:]
            for clients in client_slices(num_adapters, chunk):
                hidden = model.hidden_states(x.expand(len(clients), *x.shape), clients)
                losses = token_losses(model, hidden, y.expand(hidden.shape[:-1]))
                total[clients.adapters] += losses.sum((1, 2)).double().cpu()
            tokens += y.numel()
    return (total / tokens).float()


def pair_losses(model: GPT, batches: Sequence[torch.Tensor], pairs: torch.Tensor | None, chunk: int) -> torch.Tensor:
    """`[N, N]`: adapter j's mean next-token loss (nats) on slice i of the `[N, b, T+1]` batches, at
    the pairs (i, j) set in `pairs` (`[N, N]` bool; None: every pair), NaN elsewhere; `chunk` pairs
    per pass, so the cost is the number of pairs, whichever they are."""
    n = batches[0].shape[0]
    mask = torch.ones(n, n, dtype=torch.bool) if pairs is None else pairs.cpu()
    rows, cols = mask.nonzero(as_tuple=True)
    total = torch.zeros(len(rows), dtype=torch.float64)
    tokens = 0
    with evaluating(model):
        for batch in batches:
            for start in range(0, len(rows), chunk):
                data, adapters = rows[start : start + chunk], cols[start : start + chunk]
                x, y = batch[data.to(batch.device), :, :-1], batch[data.to(batch.device), :, 1:]
                hidden = model.hidden_states(x, picked_adapters(adapters.tolist()))
                total[start : start + chunk] += token_losses(model, hidden, y).sum((1, 2)).double().cpu()
            tokens += batch[0, :, 1:].numel()
    losses = torch.full((n, n), float("nan"))
    losses[rows, cols] = (total / tokens).float()
    return losses


def client_hidden(model: GPT, num_adapters: int, idx: torch.Tensor, positions: slice, chunk: int) -> torch.Tensor:
    """`[num_adapters, b, T', d]`: every adapter's final hidden states on token ids `idx` `[b, T]` at
    `positions`, `chunk` adapters per pass."""
    with evaluating(model):
        return torch.cat(
            [
                model.hidden_states(idx.expand(len(clients), *idx.shape), clients)[..., positions, :]
                for clients in client_slices(num_adapters, chunk)
            ]
        )


def position_blocks(hidden: torch.Tensor, vocab_size: int) -> Iterator[slice]:
    """Blocks of the positions of `hidden` `[N, b, T', d]` whose logits for every client hold at
    most `LOGIT_ELEMENTS` (at least one position each)."""
    n, b, length = hidden.shape[:3]
    size = max(1, LOGIT_ELEMENTS // (n * b * vocab_size))
    for start in range(0, length, size):
        yield slice(start, start + size)
