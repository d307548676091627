"""Trust families that set each client's row from what lowers that client's own held-out loss,
not from the scale of a score at a fixed temperature.

The paper's families decide *how much* to collaborate through the spread of their scores (minus
perplexities in the hundreds give one-hot rows, losses within 0.1 nats near-uniform ones). These
measure, on each client's own `trust` split (never `val`), the loss of adapters averaged with a few
candidate rows (`Measurements.mixture_losses`), and keep per client the row that predicts its data
best:

- `learned`: candidates from the peer losses `dynamic-ref` measures (`--trust_peers` bounds them):
  the client alone, softmaxes of minus the loss at `LEARNED_TEMPERATURES`, and the plain mean of the
  scored clients; so it can become local training, plain averaging or peer selection, client by
  client and round by round.
- `apfl`: an APFL-like own-versus-average weight: `alpha * own + (1 - alpha) * mean of all`, alpha
  from `APFL_ALPHAS` chosen on the trust split.
- `fedfomo`: FedFomo's rule, each peer weighed by how much its model lowers the client's loss per
  unit of distance between the adapters.

Each family's scores are its trust rows themselves (non-negative weights; NaN where a pair loss is
not finite, so a broken client is found and left out as in every family).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .families import TrustFamily
from .matrices import row_normalize
from .peers import PeerSampling
from .protocols import Measurements
from .registry import register_family
from .settings import TrustSettings

LEARNED_TEMPERATURES = (0.1, 0.3, 1.0)  # nats: near one-hot on the best peers, to broad
APFL_ALPHAS = (0.0, 1 / 3, 2 / 3, 1.0)  # own adapter's share; the rest is the mean of all
# `learned` chooses at every aggregation on an eighth of the trust split, a different eighth each time
LEARNED_PARTS = 8


def row_weights(rows: torch.Tensor, usable: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
    """Trust from rows of non-negative weights: unusable clients and unscored pairs get none; a row
    left with nothing keeps the client's own adapter."""
    kept = rows.nan_to_num(0.0).clamp_min(0.0) * usable[None, :]
    if scored is not None:
        kept = kept * scored.cpu()
    empty = kept.sum(dim=1) <= 0
    kept[empty] = torch.eye(rows.shape[0])[empty]
    return row_normalize(kept)


def unmeasurable(rows: torch.Tensor, losses: torch.Tensor, pairs: torch.Tensor | None) -> torch.Tensor:
    """`rows` with NaN at the scored pairs whose loss is not finite, so that `usable_clients` finds
    a broken client as it does for `dynamic-ref`; unscored pairs stay NaN in `losses` and get no weight."""
    scored = torch.ones_like(losses, dtype=torch.bool) if pairs is None else pairs.cpu()
    return rows.masked_fill(~losses.isfinite() & scored, float("nan"))


def best_rows(candidates: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """`[P, P]`: for each client i, the candidate row `candidates[k, i]` of the lowest `losses[k, i]`
    (`[K, P]`; a non-finite loss never wins, ties go to the earlier candidate)."""
    pick = losses.double().nan_to_num(nan=float("inf"), posinf=float("inf")).argmin(dim=0)
    return candidates[pick, torch.arange(candidates.shape[1])]


def peer_loss_rows(losses: torch.Tensor, temperatures: Sequence[float]) -> torch.Tensor:
    """`[K, P, P]` candidate rows from peer losses `[P, P]` (NaN: unscored): the client alone, the
    softmax of minus the loss at each temperature, and the plain mean, each over the finite losses."""
    p = losses.shape[0]
    finite = losses.isfinite()
    own = torch.eye(p, dtype=torch.float64)
    rows = [own]
    for t in temperatures:
        soft = torch.softmax((-losses.double() / t).masked_fill(~finite, float("-inf")), dim=1)
        rows.append(torch.where(finite.any(dim=1, keepdim=True), soft.nan_to_num(0.0), own))
    rows.append(torch.where(finite.any(dim=1, keepdim=True), row_normalize(finite.double()).double(), own))
    return torch.stack(rows).float()


class RowTrust(TrustFamily):
    """A family whose scores are its trust rows (non-negative weights), renormalised over the usable
    clients and scored pairs."""

    def weigh(self, scores: torch.Tensor, usable: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
        return row_weights(scores, usable, scored)


@dataclass(frozen=True)
class PairSampledRowTrust(RowTrust):
    """A `RowTrust` family that measures peer losses, pairs `sampling` can bound (`--trust_peers`)."""

    scores_pairs: ClassVar[bool] = True
    sampling: PeerSampling = field(default_factory=PeerSampling)

    def candidates(
        self, prior: torch.Tensor | None, adapters: Mapping[str, torch.Tensor], seed: Sequence[int]
    ) -> torch.Tensor | None:
        """The pairs `sampling` picks (`PeerSampling.candidates`)."""
        return self.sampling.candidates(prior, adapters, seed)


@register_family
@dataclass(frozen=True)
class LearnedTrust(PairSampledRowTrust):
    """`learned`: per client, the candidate row (`peer_loss_rows`) whose average predicts its own
    `trust` split best, chosen at every `every`-th round and kept in between (`--trust_learn_every`).
    Cost of a choice: the peer losses (N² evaluations, N * (m + 1) with --trust_peers m) and one
    evaluation per client per candidate row other than its own, each on an eighth of the split
    (`default_parts`, `--trust_parts`): choosing often on little data beat choosing rarely on all of
    it at a fraction of the cost (docs/choosing.md); a kept round costs nothing."""

    name: ClassVar[str] = "learned"
    needs: ClassVar[tuple[str, ...]] = ("pair_losses", "mixture_losses")
    default_parts: ClassVar[int] = LEARNED_PARTS
    temperatures: tuple[float, ...] = LEARNED_TEMPERATURES
    every: int = 1  # choose the rows at every this many rounds, keep them in between

    @classmethod
    def from_settings(cls, settings: TrustSettings) -> LearnedTrust:
        return cls(sampling=settings.sampling(), every=settings.learn_every)

    def reuses_prior(self, round_index: int) -> bool:
        return round_index % self.every != 0

    def scores(self, measured: Measurements, pairs: torch.Tensor | None = None) -> torch.Tensor:
        losses = measured.pair_losses(pairs).cpu()
        rows = peer_loss_rows(losses, self.temperatures)
        mixed = measured.mixture_losses(rows[1:]).cpu()  # the client alone: its own pair loss
        chosen = best_rows(rows, torch.cat([losses.diagonal()[None, :], mixed]))
        return unmeasurable(chosen, losses, pairs)


@register_family
@dataclass(frozen=True)
class OwnVersusAverage(RowTrust):
    """`apfl`: APFL-like, each client's own share `alpha` of `APFL_ALPHAS` against the mean of all
    clients, chosen on its `trust` split. Cost: one evaluation per client per alpha."""

    name: ClassVar[str] = "apfl"
    needs: ClassVar[tuple[str, ...]] = ("mixture_losses",)
    alphas: tuple[float, ...] = APFL_ALPHAS

    @classmethod
    def from_settings(cls, settings: TrustSettings) -> OwnVersusAverage:
        return cls()

    def scores(self, measured: Measurements, pairs: torch.Tensor | None = None) -> torch.Tensor:
        p = measured.num_clients
        own, mean = torch.eye(p), torch.full((p, p), 1.0 / p)
        rows = torch.stack([a * own + (1 - a) * mean for a in self.alphas])
        losses = measured.mixture_losses(rows).cpu()
        chosen = best_rows(rows, losses)
        broken = ~losses.isfinite().any(dim=0)  # no average with it predicts its data: left out
        return chosen.masked_fill(torch.diag(broken), float("nan"))


def adapter_distances(adapters: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """`[P, P]` Euclidean distance between two clients' whole adapters (every tensor, flattened)."""
    flat = torch.cat([a.detach().double().flatten(1).cpu() for a in adapters.values()], dim=1)
    return torch.cdist(flat, flat)


def fedfomo_rows(losses: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """FedFomo's weights: `max(0, L_i(θ_i) - L_i(θ_j)) / ||θ_j - θ_i||` for the peers j, normalised to
    sum to 1, the update `θ_i + Σ_j w_ij (θ_j - θ_i)` written as a row (own weight `1 - Σ_j w_ij`:
    0 where a peer helps); a client no peer helps keeps its own adapter (a zero update)."""
    p = losses.shape[0]
    gain = (losses.diagonal()[:, None] - losses).double().nan_to_num(nan=0.0).clamp_min(0.0)
    gain = gain.masked_fill(torch.eye(p, dtype=torch.bool), 0.0)
    w = gain / distances.double().clamp_min(1e-12)
    total = w.sum(dim=1, keepdim=True)
    return torch.where(total > 0, w / total.clamp_min(1e-300), torch.eye(p, dtype=torch.float64)).float()


@register_family
@dataclass(frozen=True)
class FedFomo(PairSampledRowTrust):
    """`fedfomo`: FedFomo's weighting rule (`fedfomo_rows`) on the peer losses `dynamic-ref`
    measures (`--trust_peers` bounds them) and the distances between the adapters."""

    name: ClassVar[str] = "fedfomo"
    needs: ClassVar[tuple[str, ...]] = ("pair_losses", "adapters")

    @classmethod
    def from_settings(cls, settings: TrustSettings) -> FedFomo:
        return cls(sampling=settings.sampling())

    def scores(self, measured: Measurements, pairs: torch.Tensor | None = None) -> torch.Tensor:
        losses = measured.pair_losses(pairs).cpu()
        rows = fedfomo_rows(losses, adapter_distances(measured.adapters()))
        return unmeasurable(rows, losses, pairs)
