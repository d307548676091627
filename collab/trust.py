"""Trust strategies: each turns the clients' current state into a row-stochastic `[N, N]` matrix.

Row i says how much client i takes from each client j when it replaces its adapter by a
weighted average. The functions here are pure (tensors in, tensors out), so the training loop,
a test, or a federated engine can call them alike. Scores that need model evaluations come in
as `[N, N]` matrices computed by `collab.evaluation` (all N adapters on one batch per pass).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

BASE_STRATEGIES = ("none", "naive", "static", "dynamic", "dynamic-ref", "dynamic-token")
DYNAMIC = ("dynamic", "dynamic-ref", "dynamic-token")
VARIANTS = ("", "-thresh", "-top-k")
STRATEGIES = ("none", "naive", "static") + tuple(d + v for d in DYNAMIC for v in VARIANTS)
ALIASES = {"ref": "dynamic-ref", "token": "dynamic-token", "local": "none", "fedavg": "naive"}


@dataclass(frozen=True)
class Strategy:
    """A parsed strategy name: `base` scores, filtered by `variant` before the softmax."""

    base: str
    variant: str = ""  # "", "thresh" or "top-k"

    @classmethod
    def parse(cls, name: str) -> "Strategy":
        name = ALIASES.get(name, name)
        if name not in STRATEGIES:
            raise ValueError(f"unknown trust strategy {name!r}; choose one of {', '.join(STRATEGIES)} "
                             f"(short names: {', '.join(f'{k}={v}' for k, v in ALIASES.items())}).")
        for base in sorted(BASE_STRATEGIES, key=len, reverse=True):
            if name.startswith(base):
                return cls(base, name[len(base):].lstrip("-"))
        raise AssertionError(name)

    @property
    def name(self) -> str:
        return self.base + (f"-{self.variant}" if self.variant else "")


def identity_trust(n: int) -> torch.Tensor:
    """`none`: every client keeps its own adapter (local training)."""
    return torch.eye(n)


def uniform_trust(n: int) -> torch.Tensor:
    """`naive`: every client takes the plain mean of all adapters (FedAvg)."""
    return torch.full((n, n), 1.0 / n)


def static_trust(mixture: torch.Tensor) -> torch.Tensor:
    """`static`: P P^T with rows normalised, P the known `[N, C]` client x category mixture.

    Clients are paired by their real categories: two clients sharing most of their data
    get most weight, clients with disjoint categories get none.
    """
    overlap = mixture.double() @ mixture.double().T
    return (overlap / overlap.sum(dim=1, keepdim=True)).float()


def adapter_similarity(adapters: dict[str, torch.Tensor], measure: str = "weights") -> torch.Tensor:
    """`[N, N]` cosine similarity of the clients' adapters, averaged over adapted layers.

    `weights` (the paper's): for every adapter matrix, the cosine similarity of matching rows
    in PEFT's layout (A as `[r, d_in]`, B as `[d_out, r]`), averaged over all those rows.
    `update`: the cosine similarity of each layer's full update `A @ B` (what the adapter adds to
    the weight), computed in closed form from r x r Gram matrices, averaged over layers.
    """
    if measure not in ("weights", "update"):
        raise ValueError(f"similarity measure must be 'weights' or 'update', got {measure!r}.")
    if measure == "weights":
        # our A is [N, d_in, r] and B [N, r, d_out]: PEFT's rows run along dim -2 here. As in
        # the paper, the mean is over all rows of all matrices pooled (B's many rows weigh most).
        total, rows = 0.0, 0
        for tensor in adapters.values():
            unit = torch.nn.functional.normalize(tensor.double(), dim=-2)
            total = total + torch.einsum("i...,j...->ij", unit, unit)
            rows += unit[0, 0].numel()
        return (total / rows).float()
    sims = []
    for name_a in sorted(k for k in adapters if k.endswith("lora_A")):
        A = adapters[name_a].double()
        B = adapters[name_a[:-1] + "B"].double()
        # <A_i B_i, A_j B_j>_F = sum((A_i^T A_j) * (B_i B_j^T)): r x r work, no d_in x d_out
        gram = (torch.einsum("idr,jds->ijrs", A, A) * torch.einsum("irk,jsk->ijrs", B, B)).sum((-2, -1))
        norms = gram.diagonal().clamp_min(1e-30).sqrt()
        sims.append(gram / (norms[:, None] * norms[None, :]))
    return torch.stack(sims).mean(0).float()


# Score thresholds of the `-thresh` variants, on each strategy's own score scale: cosine
# similarity, minus perplexity (the paper's values), minus row-normalised token distance x 10.
DEFAULT_THRESHOLDS = {"dynamic": 0.5, "dynamic-ref": -30.0, "dynamic-token": -2.5}


def filter_scores(scores: torch.Tensor, variant: str, k: int, threshold: float) -> torch.Tensor:
    """Drop weak peers before the softmax: `thresh` keeps scores above `threshold` (and always
    each row's best two), `top-k` keeps each row's k best. Dropped entries become -inf."""
    if variant == "":
        return scores
    if variant == "top-k" and k < 1:
        raise ValueError(f"k must be >= 1 for a -top-k strategy (the peers each client keeps), got {k}.")
    n = scores.shape[1]
    order = scores.argsort(dim=1, descending=True)
    if variant == "top-k":
        keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order[:, :min(k, n)], True)
    elif variant == "thresh":
        keep = scores > threshold
        keep.scatter_(1, order[:, :min(2, n)], True)
    else:
        raise ValueError(f"unknown variant {variant!r}; use '', 'thresh' or 'top-k'.")
    return scores.masked_fill(~keep, float("-inf"))


def trust_from_scores(scores: torch.Tensor, variant: str = "", k: int = 3,
                      threshold: float = 0.0) -> torch.Tensor:
    """Softmax over j of (filtered) scores: higher score, more trust."""
    return torch.softmax(filter_scores(scores.float(), variant, k, threshold), dim=1)


def exclude_nonfinite(trust: torch.Tensor, healthy: torch.Tensor) -> torch.Tensor:
    """Give no weight to unhealthy clients (non-finite adapter or scores) in anyone's average.

    Healthy rows are renormalised over healthy columns; an unhealthy client's row becomes the
    uniform mean of the healthy clients, so it restarts from its peers instead of staying broken.
    """
    if healthy.all():
        return trust
    if not healthy.any():
        raise FloatingPointError("every client's adapter or trust score is non-finite; "
                                 "lower the learning rate or enable --grad_clip.")
    masked = torch.nan_to_num(trust, nan=0.0, posinf=0.0, neginf=0.0) * healthy[None, :].float()
    row_sums = masked.sum(dim=1, keepdim=True)
    uniform = healthy.float()[None, :].expand_as(masked) / healthy.sum()
    use_uniform = (~healthy)[:, None] | (row_sums <= 0)
    return torch.where(use_uniform, uniform, masked / row_sums.clamp_min(1e-30))


def trust_quality(trust: torch.Tensor, mixture: torch.Tensor) -> dict[str, float | None]:
    """How well a trust matrix matches the known data: `same_category` is the mean share of a
    row's weight on clients of its own majority category (1 is perfect); `static_corr` is the
    Pearson correlation with the `static` matrix (None where either matrix is constant)."""
    majority = mixture.argmax(dim=1)
    same = (majority[:, None] == majority[None, :]).float()
    quality = {"same_category": float((trust * same).sum(1).mean())}
    a, b = trust.flatten().double(), static_trust(mixture).flatten().double()
    a, b = a - a.mean(), b - b.mean()
    denom = a.norm() * b.norm()
    quality["static_corr"] = float(a @ b / denom) if denom > 1e-12 else None
    return quality
