"""Every client's model on the same input, for the data-driven trust scores.

Each pass runs a chunk of `chunk` adapters on one input repeated along the client dimension, so
N clients take N / chunk passes, never N separate models, and `chunk` bounds the activations
held at once. All dropout is off. `collab.module.CollabLoRAModule` offers these as the
`CollaborativeModel` methods of `collab.trust.protocols`; any GPT with stacked adapters can call
them directly (e.g. one client of a federated run scoring its peers' adapters on its own data).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch

from lora_gpt import GPT, client_slices
from lora_gpt.cross_entropy import linear_predictions


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


def all_adapters_hidden(
    model: GPT, num_adapters: int, idx: torch.Tensor, chunk: int
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield `(adapters, hidden)`: final hidden states `[k, b, T, d]` of adapters `adapters` on `idx` `[b, T]`."""
    for clients in client_slices(num_adapters, chunk):
        yield clients.adapters, model.hidden_states(idx.expand(len(clients), *idx.shape), clients)


def mean_losses(model: GPT, num_adapters: int, batches: Sequence[torch.Tensor], chunk: int) -> torch.Tensor:
    """`[num_adapters]`: each adapter's model's mean next-token loss (nats) on the same `[b, T+1]` batches."""
    total = torch.zeros(num_adapters, dtype=torch.float64)
    tokens = 0
    with evaluating(model):
        for batch in batches:
            x, y = batch[..., :-1], batch[..., 1:]
            for part, hidden in all_adapters_hidden(model, num_adapters, x, chunk):
                loss, _ = linear_predictions(hidden, model.lm_head.weight, y.expand(hidden.shape[:-1]))
                total[part] += loss.sum(dim=(1, 2)).double().cpu()
            tokens += y.numel()
    return (total / tokens).float()


def client_outputs(
    model: GPT,
    num_adapters: int,
    idx: torch.Tensor,
    reduce: Callable[[torch.Tensor], torch.Tensor],
    positions: slice,
    chunk: int,
) -> torch.Tensor:
    """`reduce` of each adapter's logits on token ids `idx` `[b, T]` at `positions` (`reduce` sees
    `[k, b, T', V]` for a chunk of k adapters), concatenated over adapters: the head runs only at
    `positions`, and at most `chunk` adapters' logits exist at once."""
    with evaluating(model):
        return torch.cat(
            [
                reduce(model.lm_head(hidden[..., positions, :]))
                for _, hidden in all_adapters_hidden(model, num_adapters, idx, chunk)
            ]
        )
