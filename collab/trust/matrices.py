"""From scores to row-stochastic trust, and from trust to new adapters: pure functions, tensors in
and out, shared by the Lightning callback and a federated server.

Row i of a trust matrix says how much client i takes from each client j when its adapter becomes
the weighted average of all adapters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from lora_gpt.errors import ConfigError

VARIANTS = ("", "thresh", "top-k")
# A trust matrix whose diagonal is at least 1 - SELF_SHARE is local training; one whose every entry
# is within COLLAPSE_SHARE (relative) of 1/N is plain averaging.
SELF_SHARE = 0.01
COLLAPSE_SHARE = 0.1


@dataclass(frozen=True)
class Selection:
    """How scores (higher = more trust) become trust: keep each row's best peers, then softmax over
    j of score / temperature.

    `variant` "" keeps every peer, "thresh" the scores above `threshold` (always each row's best
    two), "top-k" each row's `k` best. `threshold` is on the score's own scale (None: the family
    fills in the one tuned to its score); the temperature acts after the filter, so it never moves
    which peers are kept.
    """

    variant: str = ""
    k: int = 3
    threshold: float | None = None
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; use '', 'thresh' or 'top-k'.")
        if self.k < 1:
            raise ConfigError(f"--k must be >= 1 (the peers each client keeps under -top-k), got {self.k}.")
        if not self.temperature > 0:
            raise ConfigError(f"--trust_temperature must be > 0, got {self.temperature}; 1 is the paper's softmax.")

    def keep(self, scores: torch.Tensor) -> torch.Tensor:
        """`[N, N]` bool: the peers each row keeps."""
        if self.variant == "":
            return torch.ones_like(scores, dtype=torch.bool)
        n = scores.shape[1]
        order = scores.argsort(dim=1, descending=True)
        if self.variant == "top-k":
            return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order[:, : min(self.k, n)], True)
        if self.threshold is None:
            raise ValueError("a -thresh selection needs a threshold on its score's scale.")
        keep = scores > self.threshold
        return keep.scatter_(1, order[:, : min(2, n)], True)

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float()
        kept = scores.masked_fill(~self.keep(scores), float("-inf"))
        return torch.softmax(kept / self.temperature, dim=1)


def row_normalize(weights: torch.Tensor) -> torch.Tensor:
    """Non-negative weights with rows scaled to sum to 1."""
    weights = weights.double()
    return (weights / weights.sum(dim=1, keepdim=True)).float()


def finite_clients(adapters: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """`[N]` bool: the clients whose every adapter entry is finite."""
    return torch.stack([a.detach().flatten(1).isfinite().all(1).cpu() for a in adapters.values()]).all(0)


def usable_clients(
    scores: torch.Tensor, finite: torch.Tensor | None = None, scored: torch.Tensor | None = None
) -> torch.Tensor:
    """`[N]` bool: clients with a finite adapter (`finite`, default all) and a finite score of their
    own, whose column of `scores` is finite on every such client's row: a model that scores NaN or
    inf on a healthy client's data is as broken as a NaN adapter. Where only the pairs in `scored`
    (`[N, N]` bool, the diagonal always among them) were measured, only those are read."""
    scores = scores.cpu()
    ok = scores.isfinite() if scored is None else scores.isfinite() | ~scored.cpu()
    usable = scores.diagonal().isfinite()
    if finite is not None:
        usable &= finite.cpu()
    return usable & ok[usable].all(0)


def exclude_nonfinite(trust: torch.Tensor, healthy: torch.Tensor) -> torch.Tensor:
    """Give no weight to unhealthy clients (non-finite adapter or scores) in anyone's average.

    Healthy rows are renormalised over healthy columns; an unhealthy client's row becomes the
    uniform mean of the healthy clients, so it restarts from its peers instead of staying broken.
    """
    if healthy.all():
        return trust
    if not healthy.any():
        raise FloatingPointError(
            "every client's adapter or trust score is non-finite; lower the learning rate or enable --grad_clip."
        )
    masked = torch.nan_to_num(trust, nan=0.0, posinf=0.0, neginf=0.0) * healthy[None, :].float()
    row_sums = masked.sum(dim=1, keepdim=True)
    uniform = healthy.float()[None, :].expand_as(masked) / healthy.sum()
    use_uniform = (~healthy)[:, None] | (row_sums <= 0)
    return torch.where(use_uniform, uniform, masked / row_sums.clamp_min(1e-30))


@torch.no_grad()
def aggregate(
    adapters: Mapping[str, torch.Tensor], trust: torch.Tensor, healthy: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Each client's new adapter: the trust-weighted average of all adapters. Unhealthy clients'
    adapters count as zero (their trust columns are zero, and 0 * NaN would still be NaN)."""
    out = {}
    for name, a in adapters.items():
        if healthy is not None:
            keep = healthy.to(a.device).view(-1, *[1] * (a.dim() - 1))
            a = torch.where(keep, a, torch.zeros_like(a))
        out[name] = torch.einsum("ij,j...->i...", trust.to(a.device, a.dtype), a)
    return out


@torch.no_grad()
def bound_norms(adapters: Mapping[str, torch.Tensor], usable: torch.Tensor, factor: float) -> dict[str, torch.Tensor]:
    """Every client's tensors scaled down, where larger, to `factor` times the median norm of that
    tensor among the `usable` clients: an adapter many times larger than its peers' (noise, a scaled
    update) then weighs in an average as one of normal size would."""
    out = {}
    for name, a in adapters.items():
        norms = a.detach().flatten(1).double().norm(dim=1).cpu()
        limit = factor * norms[usable.cpu()].median()
        scale = (limit / norms.clamp_min(1e-30)).clamp(max=1.0)
        out[name] = a * scale.to(a.device, a.dtype).view(-1, *[1] * (a.dim() - 1))
    return out


def collapse(trust: torch.Tensor) -> str | None:
    """`self` where every row is (within `SELF_SHARE`) one-hot on its own client: local training;
    `uniform` where every row is (within `COLLAPSE_SHARE`) plain averaging; else None."""
    n = trust.shape[0]
    if n < 2:
        return None
    if bool((trust.diagonal() >= 1 - SELF_SHARE).all()):
        return "self"
    if bool(((trust * n - 1).abs() <= COLLAPSE_SHARE).all()):
        return "uniform"
    return None


def overlap(mixture: torch.Tensor) -> torch.Tensor:
    """`[N, N]` P Pᵀ of the `[N, C]` client x category mixture: how much data two clients share."""
    return mixture.double() @ mixture.double().T


def trust_quality(trust: torch.Tensor, mixture: torch.Tensor) -> dict[str, float | None]:
    """How well a trust matrix matches the known data: `same_category` is the mean share of a
    row's weight on clients of its own majority category (1 is perfect); `static_corr` is the
    Pearson correlation with row-normalised P Pᵀ (None where either matrix is constant)."""
    majority = mixture.argmax(dim=1)
    same = (majority[:, None] == majority[None, :]).float()
    quality: dict[str, float | None] = {"same_category": float((trust * same).sum(1).mean())}
    a, b = trust.flatten().double(), row_normalize(overlap(mixture)).flatten().double()
    a, b = a - a.mean(), b - b.mean()
    denom = a.norm() * b.norm()
    quality["static_corr"] = float(a @ b / denom) if denom > 1e-12 else None
    return quality
