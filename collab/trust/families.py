"""The trust families: small objects that say what they need measured about a round's clients
(`needs`, from `protocols.Measurements`), turn it into `scores` (higher = more trust), and turn
scores into trust (`to_trust`: a row-stochastic `[N, N]` matrix; only `static`'s `reference` rule keeps
the reference code's rows as they are). Registered by name.

A family never learns who measured: the batched run answers its requests in this process, a
federated server with messages to the clients, and both run the same round (`collab.trust.round`).
The families that score pairs of clients by evaluating models (`PairScoredTrust`) can score only
the `candidates` pairs (`.peers`): unscored pairs are NaN and get no weight.

A family of your own is a subclass registered with `register_family` in a file passed as
`--trust_plugins FILE.py` (docs: Writing a trust strategy; examples/ holds one).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

from .matrices import COLLAPSE_SHARE, VARIANTS, Selection, aggregate, exclude_nonfinite, row_normalize, usable_clients
from .peers import PeerSampling
from .protocols import Measurements
from .registry import FAMILIES, register_family
from .scores import (
    PEER_LOSS_SCORES,
    SIMILARITIES,
    STATIC_RULES,
    UNNORMALISED_RULES,
    TokenMeasure,
    TopProbabilities,
    check_choice,
    token_measure,
    token_scores,
)
from .settings import TrustSettings


class TrustFamily(ABC):
    """One family of trust strategies."""

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()  # the `Measurements` members `scores` calls
    variants: ClassVar[tuple[str, ...]] = ("",)  # the name suffixes it takes (`collab.trust.VARIANTS`)
    scores_pairs: ClassVar[bool] = False  # whether --trust_peers can bound what it measures
    fixed: ClassVar[bool] = False  # trust set by design (none, naive, static), never learned from scores
    default_parts: ClassVar[int] = 1  # --trust_parts where unset: the share of the trust split a round measures

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: TrustSettings) -> TrustFamily:
        """The family a run's trust settings describe."""

    @abstractmethod
    def scores(self, measured: Measurements, pairs: torch.Tensor | None = None) -> torch.Tensor:
        """`[P, P]`: how much client i should trust client j, on this family's own scale; only the
        pairs set in `pairs` (`[P, P]` bool, from `candidates`) where it is given, NaN elsewhere."""

    def candidates(
        self, prior: torch.Tensor | None, adapters: Mapping[str, torch.Tensor], seed: Sequence[int]
    ) -> torch.Tensor | None:
        """`[P, P]` bool: the pairs to score this aggregation (None: every pair). `prior` is the
        previous aggregation's trust (None before the first), `seed` fixes any random choice."""
        return None

    def reuses_prior(self, round_index: int) -> bool:
        """Whether the round numbered `round_index` (0: the first) keeps the previous round's trust
        rows as its scores, measuring nothing: only families whose scores are trust rows may."""
        return False

    @abstractmethod
    def weigh(self, scores: torch.Tensor, usable: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
        """Trust rows from scores, giving the clients that are not `usable`, and the pairs not
        `scored`, no weight."""

    def to_trust(
        self, scores: torch.Tensor, finite: torch.Tensor | None = None, scored: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Row-stochastic `[P, P]` trust from scores. Clients whose adapter is not `finite`, or whose
        model scores non-finite on a usable client's data, get no weight in anyone's average and
        restart from the mean of the others (`usable_clients`, `exclude_nonfinite`); pairs outside
        `scored` (the `candidates`, where not every pair was scored) get no weight."""
        scores = scores.cpu()
        usable = usable_clients(scores, finite, scored)
        return exclude_nonfinite(self.weigh(scores, usable, scored), usable)

    def aggregate(
        self, adapters: Mapping[str, torch.Tensor], trust: torch.Tensor, usable: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Each client's new adapter: by default the `trust`-weighted average (`matrices.aggregate`); a
        family with a rule that is no weighted average (a median) overrides it."""
        return aggregate(adapters, trust, usable)

    def collapse_advice(self, kind: str, settings: TrustSettings, steps: Sequence[int]) -> str:
        """What to say when the trust rows stayed `self` (local training) or `uniform` (plain
        averaging) at aggregation `steps`, and what changes it."""
        t = settings.temperature
        where = f"at the aggregations of steps {steps[0]}-{steps[-1]} ({len(steps)} of them)"
        if kind == "self":
            return (
                f"{settings.strategy}: every client's trust row was one-hot on itself {where}, so the clients "
                f"trained alone, as with --trust none: the scores differ by more than the softmax at "
                f"--trust_temperature {t:g} lets through. Raise --trust_temperature (e.g. {10 * t:g})."
            )
        return (
            f"{settings.strategy}: every client's trust row was within {COLLAPSE_SHARE:.0%} of uniform {where}, "
            f"so the clients averaged as with --trust naive: the scores differ too little for the softmax at "
            f"--trust_temperature {t:g}. Lower --trust_temperature (e.g. {t / 10:g})."
        )


def build_family(settings: TrustSettings) -> TrustFamily:
    """The trust family object the settings describe, from the registry."""
    cls = FAMILIES[settings.family]
    if not (isinstance(cls, type) and issubclass(cls, TrustFamily)):
        raise TypeError(f"{settings.family} is registered as {cls!r}, not a TrustFamily subclass.")
    family = cls.from_settings(settings)
    if not isinstance(family, TrustFamily):
        raise TypeError(f"{settings.family}'s from_settings returned {type(family).__name__}, not a TrustFamily.")
    return family


class FixedTrust(TrustFamily):
    """Trust from fixed non-negative affinities, rows normalised: no evaluation, no softmax."""

    fixed: ClassVar[bool] = True

    def weigh(self, scores: torch.Tensor, usable: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
        return row_normalize(scores.nan_to_num(0.0) * usable[None, :])


@dataclass(frozen=True)
class ScoredTrust(TrustFamily):
    """Trust from measured scores through a `Selection` (filter, then softmax with temperature)."""

    variants: ClassVar[tuple[str, ...]] = VARIANTS
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

    scores_pairs: ClassVar[bool] = True
    sampling: PeerSampling = field(default_factory=PeerSampling)

    def candidates(
        self, prior: torch.Tensor | None, adapters: Mapping[str, torch.Tensor], seed: Sequence[int]
    ) -> torch.Tensor | None:
        """The pairs `sampling` picks (`PeerSampling.candidates`)."""
        return self.sampling.candidates(prior, adapters, seed)


@register_family
@dataclass(frozen=True)
class Local(FixedTrust):
    """`none`: every client keeps its own adapter (local training)."""

    name: ClassVar[str] = "none"

    @classmethod
    def from_settings(cls, settings: TrustSettings) -> Local:
        return cls()

    def scores(self, measured: Measurements, pairs: torch.Tensor | None = None) -> torch.Tensor:
        return torch.eye(measured.num_clients)


@register_family
@dataclass(frozen=True)
class FedAvg(FixedTrust):
    """`naive`: every client takes the plain mean of all adapters."""

    name: ClassVar[str] = "naive"

    @classmethod
    def from_settings(cls, settings: TrustSettings) -> FedAvg:
        return cls()

    def scores(self, measured: Measurements, pairs: torch.Tensor | None = None) -> torch.Tensor:
        return torch.ones(measured.num_clients, measured.num_clients)


@register_family
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

    def scores(self, measured: Measurements, pairs: torch.Tensor | None = None) -> torch.Tensor:
        return STATIC_RULES[self.rule](measured.mixture().double()).float()

    def weigh(self, scores: torch.Tensor, usable: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
        if self.rule in UNNORMALISED_RULES:  # the reference code's matrices, rows as it sets them
            return scores.nan_to_num(0.0) * usable[None, :]
        return super().weigh(scores, usable, scored)


@register_family
@dataclass(frozen=True)
class AdapterSimilarity(ScoredTrust):
    """`dynamic`: softmax of how alike the clients' adapters are (`scores.SIMILARITIES`)."""

    name: ClassVar[str] = "dynamic"
    needs: ClassVar[tuple[str, ...]] = ("adapters",)
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

    def scores(self, measured: Measurements, pairs: torch.Tensor | None = None) -> torch.Tensor:
        return SIMILARITIES[self.similarity].score(measured.adapters())


@register_family
@dataclass(frozen=True)
class PeerLoss(PairScoredTrust):
    """`dynamic-ref`: softmax of how well client j's model predicts client i's `trust` split
    (`scores.PEER_LOSS_SCORES`: minus perplexity, the paper's, or minus the loss)."""

    name: ClassVar[str] = "dynamic-ref"
    needs: ClassVar[tuple[str, ...]] = ("pair_losses",)
    score: str = "perplexity"

    def __post_init__(self) -> None:
        check_choice("dynamic-ref score", self.score, PEER_LOSS_SCORES)
        super().__post_init__()

    @property
    def default_threshold(self) -> float:
        return PEER_LOSS_SCORES[self.score].threshold

    @classmethod
    def from_settings(cls, settings: TrustSettings) -> PeerLoss:
        return cls(selection=settings.selection(), sampling=settings.sampling(), score=settings.ref_score)

    def scores(self, measured: Measurements, pairs: torch.Tensor | None = None) -> torch.Tensor:
        return PEER_LOSS_SCORES[self.score].score(measured.pair_losses(pairs).cpu())

    def collapse_advice(self, kind: str, settings: TrustSettings, steps: Sequence[int]) -> str:
        said = super().collapse_advice(kind, settings, steps)
        if kind == "self" and self.score == "perplexity":
            said += " Or --ref_score loss, whose softmax depends on perplexity ratios, not their level."
        return said


@register_family
@dataclass(frozen=True)
class TokenAgreement(PairScoredTrust):
    """`dynamic-token`: softmax of minus how far apart the clients' predictions on the shared
    reference text are (`scores.TOKEN_DISTANCES`), rows scaled by `scores.token_scores`."""

    name: ClassVar[str] = "dynamic-token"
    needs: ClassVar[tuple[str, ...]] = ("token_distances",)
    measure: TokenMeasure = field(default_factory=TopProbabilities)

    @property
    def default_threshold(self) -> float:
        return self.measure.threshold

    @classmethod
    def from_settings(cls, settings: TrustSettings) -> TokenAgreement:
        return cls(
            selection=settings.selection(),
            sampling=settings.sampling(),
            measure=token_measure(settings.token_distance, settings.token_top_k),
        )

    def scores(self, measured: Measurements, pairs: torch.Tensor | None = None) -> torch.Tensor:
        return token_scores(measured.token_distances(self.measure, pairs).cpu(), pairs)
