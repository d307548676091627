"""The trust families: small objects that `scores` the clients (higher = more trust) and turn
scores `to_trust`, a row-stochastic `[N, N]` matrix. Registered by name.

`scores(model, data)` gathers what the family measures through the protocols of `.protocols`
(the batched simulation); each family's `scores_from_*` is the pure step from what was measured
to scores, so a federated server that assembles the measurements from its clients (row i of the
peer losses from client i; every client's predictions on the shared reference text) calls the
same code. `to_trust` is pure too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar, TypeVar

import torch

from .matrices import Selection, exclude_nonfinite, row_normalize, usable_clients
from .protocols import ClientData, CollaborativeModel
from .scores import (
    PEER_LOSS_SCORES,
    SIMILARITIES,
    STATIC_RULES,
    TOKEN_DISTANCES,
    TopLogits,
    TopProbabilities,
    check_choice,
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
    def scores(self, model: CollaborativeModel, data: ClientData) -> torch.Tensor:
        """`[N, N]`: how much client i should trust client j, on this family's own scale."""

    @abstractmethod
    def weigh(self, scores: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
        """Trust rows from scores, giving the clients that are not `usable` no weight."""

    def to_trust(self, scores: torch.Tensor, finite: torch.Tensor | None = None) -> torch.Tensor:
        """Row-stochastic `[N, N]` trust from scores. Clients whose adapter is not `finite`, or whose
        model scores non-finite on a usable client's data, get no weight in anyone's average and
        restart from the mean of the others (`usable_clients`, `exclude_nonfinite`)."""
        scores = scores.cpu()
        usable = usable_clients(scores, finite)
        return exclude_nonfinite(self.weigh(scores, usable), usable)


class FixedTrust(TrustFamily):
    """Trust from fixed non-negative affinities, rows normalised: no evaluation, no softmax."""

    def weigh(self, scores: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
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

    def weigh(self, scores: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
        return self.selection(scores.masked_fill(~usable[None, :], float("-inf")).nan_to_num(nan=float("-inf")))


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

    def scores(self, model: CollaborativeModel, data: ClientData) -> torch.Tensor:
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

    def scores(self, model: CollaborativeModel, data: ClientData) -> torch.Tensor:
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

    def scores(self, model: CollaborativeModel, data: ClientData) -> torch.Tensor:
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

    def scores(self, model: CollaborativeModel, data: ClientData) -> torch.Tensor:
        return self.scores_from_adapters(model.adapters())

    def scores_from_adapters(self, adapters: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return SIMILARITIES[self.similarity].score(adapters)


@register
@dataclass(frozen=True)
class PeerLoss(ScoredTrust):
    """`dynamic-ref`: softmax of how well client j's model predicts client i's `trust` split
    (`scores.PEER_LOSS_SCORES`: minus perplexity, the paper's, or minus the loss)."""

    name: ClassVar[str] = "dynamic-ref"
    needs: ClassVar[tuple[str, ...]] = ("trust_batches",)
    score: str = "perplexity"
    eval_chunk: int | None = None  # clients per evaluation pass (None: the model's own)

    def __post_init__(self) -> None:
        check_choice("dynamic-ref score", self.score, PEER_LOSS_SCORES)
        super().__post_init__()

    @property
    def default_threshold(self) -> float:
        return PEER_LOSS_SCORES[self.score].threshold

    @classmethod
    def from_settings(cls, settings: TrustSettings) -> PeerLoss:
        return cls(settings.selection(), settings.ref_score, settings.eval_chunk)

    def scores(self, model: CollaborativeModel, data: ClientData) -> torch.Tensor:
        batches = data.trust_batches()
        rows = [model.mean_losses([b[i] for b in batches], self.eval_chunk).cpu() for i in range(model.num_clients)]
        return self.scores_from_losses(torch.stack(rows))

    def scores_from_losses(self, losses: torch.Tensor) -> torch.Tensor:
        """Scores from `[N, N]` mean losses, row i = every client's model on client i's data."""
        return PEER_LOSS_SCORES[self.score].score(losses)


@register
@dataclass(frozen=True)
class TokenAgreement(ScoredTrust):
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
        return cls(settings.selection(), measure, settings.eval_chunk)

    def scores(self, model: CollaborativeModel, data: ClientData) -> torch.Tensor:
        n = model.num_clients
        total, positions = torch.zeros(n, n, dtype=torch.float64), 0
        # one sequence at a time: every client's full-vocabulary outputs are held at once
        for seq in (s for batch in data.ref_batches(self.measure.num_batches) for s in batch):
            outputs = model.client_outputs(
                seq[None, :-1], self.measure.predict, self.measure.positions, self.eval_chunk
            )
            total += self.measure.distance_sum(outputs)
            positions += outputs[0, ..., 0].numel()
        return self.scores_from_distances(total / positions)

    @staticmethod
    def scores_from_distances(distances: torch.Tensor) -> torch.Tensor:
        """Scores from `[N, N]` mean distances (`measure.distance_sum` over positions / positions)."""
        return token_scores(distances)
