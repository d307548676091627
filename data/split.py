"""Carve each category's token stream into disjoint pieces: a shared reference stream and, per
client, train / val / trust splits. Every token goes to at most one place."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .recipes import Budget

SPLITS = ("train", "val", "trust")
MAJOR_SHARE = 0.75  # mixed clients: 3/4 of one category, 1/4 of the next


@dataclass
class ClientSplit:
    splits: dict[str, np.ndarray]  # split name -> uint16 tokens
    counts: np.ndarray  # [C] tokens taken from each category (all splits)


def client_categories(kind: str, num_clients: int, num_categories: int) -> list[dict[int, float]]:
    """Each client's share of each category: round-robin majors; a mixed client's minor is the
    next category, so every client is really mixed and clients of one major share a minor."""
    if kind == "specific":
        if num_clients < num_categories:
            raise ValueError(f"a specific split of {num_categories} categories needs at least {num_categories} "
                             f"clients (one per category), got {num_clients}; raise --num_clients.")
        return [{n % num_categories: 1.0} for n in range(num_clients)]
    if kind == "mixed":
        if num_categories < 2:
            raise ValueError("a mixed split needs at least 2 categories; use the specific split.")
        return [{n % num_categories: MAJOR_SHARE, (n + 1) % num_categories: 1 - MAJOR_SHARE}
                for n in range(num_clients)]
    raise ValueError(f"unknown split {kind!r}; use 'specific' or 'mixed'.")


def tokens_needed(shares: list[dict[int, float]], budget: Budget, num_categories: int) -> np.ndarray:
    need = np.full(num_categories, budget.ref, dtype=np.int64)
    for client in shares:
        for split in SPLITS:
            for cat, part in _parts(client, getattr(budget, split)):
                need[cat] += part
    return need


def _parts(shares: dict[int, float], size: int) -> list[tuple[int, int]]:
    """Split `size` tokens over categories by share; the rounding goes to the major category."""
    cats = sorted(shares, key=lambda c: -shares[c])
    minor = [(c, int(round(size * shares[c]))) for c in cats[1:]]
    return [(cats[0], size - sum(p for _, p in minor))] + minor


def split_clients(streams: list[np.ndarray], categories: list[str], kind: str, num_clients: int,
                  budget: Budget) -> tuple[list[ClientSplit], np.ndarray]:
    """Clients' splits and the shared reference stream (`budget.ref` tokens of each category)."""
    shares = client_categories(kind, num_clients, len(streams))
    need = tokens_needed(shares, budget, len(streams))
    short = [(categories[c], len(s), need[c]) for c, s in enumerate(streams) if len(s) < need[c]]
    if short:
        detail = ", ".join(f"{name}: {have:,} of {want:,} tokens" for name, have, want in short)
        raise ValueError(f"not enough text for {num_clients} clients at these budgets ({detail}); use fewer "
                         "clients or smaller budgets (--train_tokens, --val_tokens, --trust_tokens, --ref_tokens).")
    cursor = [0] * len(streams)

    def take(cat: int, size: int) -> np.ndarray:
        piece = streams[cat][cursor[cat]:cursor[cat] + size]
        cursor[cat] += size
        return piece

    ref = np.concatenate([take(c, budget.ref) for c in range(len(streams))])
    clients = []
    for client in shares:
        counts = np.zeros(len(streams), dtype=np.int64)
        splits = {}
        for split in SPLITS:
            pieces = []
            for cat, size in _parts(client, getattr(budget, split)):
                pieces.append(take(cat, size))
                counts[cat] += size
            splits[split] = np.concatenate(pieces)
        clients.append(ClientSplit(splits, counts))
    return clients, ref


def mixture_matrix(clients: list[ClientSplit]) -> np.ndarray:
    """`[N, C]`: each client's share of tokens from each category (rows sum to 1)."""
    counts = np.stack([c.counts for c in clients]).astype(np.float64)
    return counts / counts.sum(axis=1, keepdims=True)
