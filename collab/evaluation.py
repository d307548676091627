"""Batched model evaluations behind the data-driven trust scores.

Every pass runs all N adapters on one batch at once (the batch repeated along the client
dimension), in chunks of `chunk` adapters to bound activation memory: N passes for N x N
scores, never N^2 separate model calls. All dropout is off while scoring.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

from lora_gpt import GPT, ClientSlice
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


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def all_adapters_hidden(model: GPT, num_adapters: int, idx: torch.Tensor,
                        chunk: int) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield `(adapters, hidden)`: final hidden states `[k, b, T, d]` of adapters `adapters` on `idx` `[b, T]`."""
    for part in chunks(num_adapters, chunk):
        clients = ClientSlice(part.start, part.stop)
        yield part, model.hidden_states(idx.expand(len(clients), *idx.shape), clients)


def cross_perplexity(model: GPT, num_adapters: int, batches: Sequence[torch.Tensor], chunk: int) -> torch.Tensor:
    """`ppl[i, j]`: perplexity of client j's model on client i's batches.

    `batches` is a list of `[N, b, T+1]` tensors (slice i holds client i's windows).
    """
    total = torch.zeros(num_adapters, num_adapters, dtype=torch.float64)
    tokens = 0
    with evaluating(model):
        for batch in batches:
            x, y = batch[..., :-1], batch[..., 1:]
            for i in range(num_adapters):
                for part, hidden in all_adapters_hidden(model, num_adapters, x[i], chunk):
                    loss, _ = linear_predictions(hidden, model.lm_head.weight, y[i].expand(hidden.shape[:-1]))
                    total[i, part] += loss.sum(dim=(1, 2)).double().cpu()
            tokens += y[0].numel()
    return (total / tokens).exp().float()


def token_distance(model: GPT, num_adapters: int, ref_batches: Sequence[torch.Tensor], chunk: int,
                   top_k: int = 10) -> torch.Tensor:
    """`dist[i, j]`: how far client j's next-token distribution is from client i's on shared text.

    At **every** position of the reference batches, take client i's top-k tokens and compare
    both clients' probabilities on them: L1 distance divided by client i's mass on those tokens
    (0 = same, up to 2), averaged over positions. `ref_batches` are `[b, T+1]` tensors.
    """
    dist = torch.zeros(num_adapters, num_adapters, dtype=torch.float64)
    positions = 0
    with evaluating(model):
        # one sequence at a time: all N clients' full-vocabulary probabilities are held at once
        for x in (seq[None, :-1] for batch in ref_batches for seq in batch):
            probs = torch.cat([model.lm_head(hidden).float().softmax(-1)
                               for _, hidden in all_adapters_hidden(model, num_adapters, x, chunk)])
            top = probs.topk(top_k, dim=-1).indices  # [N, b, T, k]
            for i in range(num_adapters):
                p_i = probs[i].gather(-1, top[i])  # [b, T, k]
                p_all = probs.gather(-1, top[i].expand(num_adapters, *top[i].shape))  # [N, b, T, k]
                l1 = (p_all - p_i).abs().sum(-1) / p_i.sum(-1).clamp_min(1e-12)
                dist[i] += l1.sum(dim=(1, 2)).double().cpu()
            positions += x.numel()
    return (dist / positions).float()
