"""The trust families: small objects that `scores` the clients (higher = more trust) and turn
scores `to_trust`, a row-stochastic `[N, N]` matrix. Registered by name.

`scores(model, data, pairs)` gathers what the family measures through the protocols of
`.protocols` (the batched simulation); each family's `scores_from_*` is the pure step from what was
measured to scores, so a federated server that assembles the measurements from its clients (row i
of the peer losses from client i; every client's predictions on the shared reference text) calls
the same code. `to_trust` is pure too. The families that score pairs of clients by evaluating
models (`PairScoredTrust`) can score only the `candidates` pairs (`.peers`): unscored pairs are NaN
and get no weight.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar, TypeVar

import torch

from .matrices import Selection, exclude_nonfinite, row_normalize, usable_clients
from .peers import PeerSampling
from .protocols import ClientData, CollaborativeModel
from .scores import (
    PEER_LOSS_SCORES,
    SIMILARITIES,
    STATIC_RULES,
    TOKEN_DISTANCES,
    TopLogits,
    TopProbabilities,
    check_choice,
    row_cosine,
    token_scores,
)

if TYPE_CHECKING:
    from .settings import TrustSettings


class TrustFamily(ABC):
    """One family of trust strategies."""

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()  # the `ClientData` members `scores` reads

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: TrustSettings) -> TrustFamily:
        """The family a run's trust settings describe."""

    @abstractmethod
    def scores(self, model: CollaborativeModel, data: ClientData, pairs: torch.Tensor | None = None) -> torch.Tensor:
        """`[N, N]`: how much client i should trust client j, on this family's own scale; only the
        pairs set in `pairs` (`[N, N]` bool, from `candidates`) where it is given, NaN elsewhere."""

    def candidates(
        self, prior: torch.Tensor | None, adapters: Mapping[str, torch.Tensor], seed: Sequence[int]
    ) -> torch.Tensor | None:
        """`[N, N]` bool: the pairs to score this aggregation (None: every pair). `prior` is the
        previous aggregation's trust (None before the first), `seed` fixes any random choice."""
        return None

    @abstractmethod
    def weigh(self, scores: torch.Tensor, usable: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
        """Trust rows from scores, giving the clients that are not `usable`, and the pairs not
        `scored`, no weight."""

    def to_trust(
        self, scores: torch.Tensor, finite: torch.Tensor | None = None, scored: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Row-stochastic `[N, N]` trust from scores. Clients whose adapter is not `finite`, or whose
        model scores non-finite on a usable client's data, get no weight in anyone's average and
        restart from the mean of the others (`usable_clients`, `exclude_nonfinite`); pairs outside
        `scored` (the `candidates`, where not every pair was scored) get no weight."""
        scores = scores.cpu()
        usable = usable_clients(scores, finite, scored)
        return exclude_nonfinite(self.weigh(scores, usable, scored), usable)


class FixedTrust(TrustFamily):
    """Trust from fixed non-negative affinities, rows normalised: no evaluation, no softmax."""

    def weigh(self, scores: torch.Tensor, usable: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
        return row_normalize(scores.nan_to_num(0.0) * usable[None, :])


@dataclass(frozen=True)
class ScoredTrust(TrustFamily):
    """Trust from measured scores through a `Selection` (filter, then softmax with temperature)."""

    selection: Selection = field(default_factory=Selection)

    def __post_init__(self) -> None:
        if self.selection.threshold is None:
            object.__setattr__(self, "selection", replace(self.selection, threshold=self.default_threshold))

    @property
    @abstractmethod
    def default_threshold(self) -> float:
        """The `-thresh` threshold tuned to this family's score."""

    def weigh(self, scores: torch.Tensor, usable: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
        dropped = ~usable[None, :] if scored is None else ~usable[None, :] | ~scored.cpu()
        return self.selection(scores.masked_fill(dropped, float("-inf")).nan_to_num(nan=float("-inf")))


@dataclass(frozen=True)
class PairScoredTrust(ScoredTrust):
    """A scored family that measures every pair (i, j) by evaluating models, N² measurements per
    aggregation: `sampling` can bound it to N * (m + 1) (`.peers.PeerSampling`)."""

    sampling: PeerSampling = field(default_factory=PeerSampling)

    def candidates(
        self, prior: torch.Tensor | None, adapters: Mapping[str, torch.Tensor], seed: Sequence[int]
    ) -> torch.Tensor | None:
        """The pairs `sampling` picks, ranked by the previous trust, or before the first aggregation
        by how alike the adapters are (cheap: no model is evaluated)."""
        n = next(iter(adapters.values())).shape[0]
        if not self.sampling.bounded(n):
            return None
        return self.sampling.choose(prior if prior is not None else row_cosine(adapters, dim=-2), seed)


FAMILIES: dict[str, type[TrustFamily]] = {}
Family = TypeVar("Family", bound=type[TrustFamily])


def register(cls: Family) -> Family:
    FAMILIES[cls.name] = cls
    return cls


@register
@dataclass(frozen=True)
class Local(FixedTrust):
    """`none`: every client keeps its own adapter (local training)."""

    name: ClassVar[str] = "none"

    @classmethod
    def from_settings(cls, settings: TrustSettings) -> Local:
        return cls()

    def scores(self, model: CollaborativeModel, data: ClientData, pairs: torch.Tensor | None = None) -> torch.Tensor:
        return self.scores_from_count(model.num_clients)

    @staticmethod
    def scores_from_count(n: int) -> torch.Tensor:
        return torch.eye(n)


@register
@dataclass(frozen=True)
class FedAvg(FixedTrust):
    """`naive`: every client takes the plain mean of all adapters."""

    name: ClassVar[str] = "naive"

    @classmethod
    def from_settings(cls, settings: TrustSettings) -> FedAvg:
        return cls()

    def scores(self, model: CollaborativeModel, data: ClientData, pairs: torch.Tensor | None = None) -> torch.Tensor:
        return self.scores_from_count(model.num_clients)

    @staticmethod
    def scores_from_count(n: int) -> torch.Tensor:
        return torch.ones(n, n)


@register
@dataclass(frozen=True)
class StaticMixture(FixedTrust):
    """`static`: from the known client x category mixture, by `rule` (`scores.STATIC_RULES`)."""

    name: ClassVar[str] = "static"
    needs: ClassVar[tuple[str, ...]] = ("mixture",)
    rule: str = "overlap"

    def __post_init__(self) -> None:
        check_choice("static rule", self.rule, STATIC_RULES)

    @classmethod
    def from_settings(cls, settings: TrustSettings) -> StaticMixture:
        return cls(settings.static_rule)

    def scores(self, model: CollaborativeModel, data: ClientData, pairs: torch.Tensor | None = None) -> torch.Tensor:
        return self.scores_from_mixture(torch.as_tensor(data.mixture))

    def scores_from_mixture(self, mixture: torch.Tensor) -> torch.Tensor:
        return STATIC_RULES[self.rule](mixture).float()


@register
@dataclass(frozen=True)
class AdapterSimilarity(ScoredTrust):
    """`dynamic`: softmax of how alike the clients' adapters are (`scores.SIMILARITIES`)."""

    name: ClassVar[str] = "dynamic"
    similarity: str = "peft-rows"

    def __post_init__(self) -> None:
        check_choice("similarity", self.similarity, SIMILARITIES)
        super().__post_init__()

    @property
    def default_threshold(self) -> float:
        return SIMILARITIES[self.similarity].threshold

    @classmethod
    def from_settings(cls, settings: TrustSettings) -> AdapterSimilarity:
        return cls(settings.selection(), settings.similarity)

    def scores(self, model: CollaborativeModel, data: ClientData, pairs: torch.Tensor | None = None) -> torch.Tensor:
        return self.scores_from_adapters(model.adapters())

    def scores_from_adapters(self, adapters: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return SIMILARITIES[self.similarity].score(adapters)


@register
@dataclass(frozen=True)
class PeerLoss(PairScoredTrust):
    """`dynamic-ref`: softmax of how well client j's model predicts client i's `trust` split
    (`scores.PEER_LOSS_SCORES`: minus perplexity, the paper's, or minus the loss)."""

    name: ClassVar[str] = "dynamic-ref"
    needs: ClassVar[tuple[str, ...]] = ("trust_batches",)
    score: str = "perplexity"
    eval_chunk: int | None = None  # pairs per evaluation pass (None: the model's client chunk)

    def __post_init__(self) -> None:
        check_choice("dynamic-ref score", self.score, PEER_LOSS_SCORES)
        super().__post_init__()

    @property
    def default_threshold(self) -> float:
        return PEER_LOSS_SCORES[self.score].threshold

    @classmethod
    def from_settings(cls, settings: TrustSettings) -> PeerLoss:
        return cls(
            selection=settings.selection(),
            sampling=settings.sampling(),
            score=settings.ref_score,
            eval_chunk=settings.eval_chunk,
        )

    def scores(self, model: CollaborativeModel, data: ClientData, pairs: torch.Tensor | None = None) -> torch.Tensor:
        return self.scores_from_losses(model.pair_losses(data.trust_batches(), pairs, self.eval_chunk).cpu())

    def scores_from_losses(self, losses: torch.Tensor) -> torch.Tensor:
        """Scores from `[N, N]` mean losses, row i = every client's model on client i's data (NaN:
        not measured)."""
        return PEER_LOSS_SCORES[self.score].score(losses)


@register
@dataclass(frozen=True)
class TokenAgreement(PairScoredTrust):
    """`dynamic-token`: softmax of minus how far apart the clients' predictions on the shared
    reference text are (`scores.TOKEN_DISTANCES`), rows scaled by `scores.token_scores`."""

    name: ClassVar[str] = "dynamic-token"
    needs: ClassVar[tuple[str, ...]] = ("ref_batches",)
    measure: TopProbabilities | TopLogits = field(default_factory=TopProbabilities)
    eval_chunk: int | None = None  # clients per evaluation pass (None: the model's own)

    @property
    def default_threshold(self) -> float:
        return self.measure.threshold

    @classmethod
    def from_settings(cls, settings: TrustSettings) -> TokenAgreement:
        kind = TOKEN_DISTANCES[settings.token_distance]
        measure = kind() if settings.token_top_k is None else kind(settings.token_top_k)
        return cls(
            selection=settings.selection(),
            sampling=settings.sampling(),
            measure=measure,
            eval_chunk=settings.eval_chunk,
        )

    def scores(self, model: CollaborativeModel, data: ClientData, pairs: torch.Tensor | None = None) -> torch.Tensor:
        n = model.num_clients
        total, positions = torch.zeros(n, n, dtype=torch.float64), 0
        for seq in (s for batch in data.ref_batches(self.measure.num_batches) for s in batch):
            # every client's logits, a few positions at a time: never every client's whole vocabulary at once
            for logits in model.client_logits(seq[None, :-1], self.measure.positions, self.eval_chunk):
                outputs = self.measure.predict(logits)
                total += self.measure.distance_sum(outputs, pairs)
                positions += outputs[0, ..., 0].numel()
        return self.scores_from_distances(total / positions, pairs)

    @staticmethod
    def scores_from_distances(distances: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
        """Scores from `[N, N]` mean distances (`measure.distance_sum` over positions / positions),
        measured at the pairs in `scored` (None: every pair)."""
        return token_scores(distances, scored)
