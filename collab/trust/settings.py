"""Strategy names and the trust settings of a run (one frozen, validated dataclass)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .families import FAMILIES, ScoredTrust, TrustFamily
from .matrices import VARIANTS, Selection
from .scores import PEER_LOSS_SCORES, SIMILARITIES, STATIC_RULES, TOKEN_DISTANCES, check_choice

STRATEGIES = tuple(name + (f"-{v}" if v else "") for name, family in FAMILIES.items()
                   for v in (VARIANTS if issubclass(family, ScoredTrust) else ("",)))
ALIASES = {"ref": "dynamic-ref", "token": "dynamic-token", "local": "none", "fedavg": "naive",
           # the reference code's spellings
           "dynamic-thresh-ref": "dynamic-ref-thresh", "dynamic-top-k-ref": "dynamic-ref-top-k",
           "dynamic-thresh-token": "dynamic-token-thresh", "dynamic-top-k-token": "dynamic-token-top-k"}


@dataclass(frozen=True)
class Strategy:
    """A parsed strategy name: the family `base`, filtered by `variant` before the softmax."""

    base: str
    variant: str = ""  # "", "thresh" or "top-k"

    @classmethod
    def parse(cls, name: str) -> Strategy:
        name = ALIASES.get(name, name)
        if name not in STRATEGIES:
            raise ValueError(f"unknown trust strategy {name!r}; choose one of {', '.join(STRATEGIES)} "
                             f"(other names: {', '.join(f'{k}={v}' for k, v in ALIASES.items())}).")
        base = max((b for b in FAMILIES if name.startswith(b)), key=len)
        return cls(base, name[len(base):].lstrip("-"))

    @property
    def name(self) -> str:
        return self.base + (f"-{self.variant}" if self.variant else "")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class TrustSettings:
    """Every trust option of a run: the strategy, when it aggregates, and how scores become trust.

    Where this project's definitions differ from the reference code's, ours are the defaults and
    the reference's are one option away (README.md, Differences from the reference code).
    """

    strategy: str = field(default="dynamic", metadata=_help(
        f"trust strategy: {', '.join(STRATEGIES)}; other names: {', '.join(f'{k}={v}' for k, v in ALIASES.items())}"))
    trust_freq: int = field(default=10, metadata=_help("aggregate every this many steps"))
    pretraining_rounds: int = field(default=20, metadata=_help("local-only steps before the first aggregation"))
    k: int = field(default=3, metadata=_help("peers kept by the -top-k variants"))
    threshold: float | None = field(default=None, metadata=_help(
        "score threshold of the -thresh variants (default: the one tuned to the chosen score)"))
    temperature: float = field(default=1.0, metadata=_help(
        "dynamic strategies: softmax of scores / temperature (1: the paper's; lower sharpens the rows)"))
    similarity: str = field(default="peft-rows", metadata=_help(
        "dynamic: cosine similarity of the rows of A [r, d_in] and B [d_out, r] (peft-rows), of the reference "
        "code's rows, A [d_in, r] and B [r, d_out] (reference-rows), or of the updates A@B (update)"))
    ref_score: str = field(default="perplexity", metadata=_help(
        "dynamic-ref: minus the peer's perplexity (the paper's) or minus its loss (level-free)"))
    token_distance: str = field(default="top-probs", metadata=_help(
        "dynamic-token: probabilities on client i's top tokens at every position (top-probs), or the reference "
        "code's top raw logits at the last position of 4 reference batches (reference-logits)"))
    token_top_k: int | None = field(default=None, metadata=_help(
        "dynamic-token: tokens compared per position (default: 10 for top-probs, 100 for reference-logits)"))
    static_rule: str = field(default="overlap", metadata=_help(
        "static: P P^T of the measured mixture (overlap), or each client's own mixture over the clients "
        "mainly of each category (own-mixture: the reference code's hand-set matrices)"))
    eval_chunk: int | None = field(default=None, metadata=_help(
        "clients per pass when scoring trust (default: the model's client chunk)"))

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategy", Strategy.parse(self.strategy).name)
        if self.trust_freq < 1:
            raise ValueError(f"trust_freq must be >= 1, got {self.trust_freq}.")
        for name in ("token_top_k", "eval_chunk"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (or unset for the default), got {getattr(self, name)}.")
        if self.pretraining_rounds < 0:
            raise ValueError(f"pretraining_rounds must be >= 0, got {self.pretraining_rounds}.")
        self.selection()  # checks k and the temperature
        for name, choices in (("similarity", SIMILARITIES), ("ref_score", PEER_LOSS_SCORES),
                              ("token_distance", TOKEN_DISTANCES), ("static_rule", STATIC_RULES)):
            check_choice(name, getattr(self, name), choices)

    @property
    def family(self) -> str:
        return Strategy.parse(self.strategy).base

    @property
    def variant(self) -> str:
        return Strategy.parse(self.strategy).variant

    def selection(self) -> Selection:
        """How a scored family's scores become trust under these settings."""
        return Selection(self.variant, self.k, self.threshold, self.temperature)


def build_family(settings: TrustSettings) -> TrustFamily:
    """The trust family object the settings describe, from the registry."""
    return FAMILIES[settings.family].from_settings(settings)
