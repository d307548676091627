"""The trust settings of a run: one frozen, validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from lora_gpt.errors import ConfigError
from lora_gpt.options import option, require, require_choice

from .matrices import Selection
from .peers import PeerSampling
from .registry import ALIASES, FAMILIES, Strategy, load_plugins, strategy_names
from .scores import PEER_LOSS_SCORES, SIMILARITIES, STATIC_RULES, TOKEN_DISTANCES

TOKEN_SOURCES = ("reported", "sent")


def _strategy_help() -> str:
    """The `--trust` help, listing the strategies registered when the help is shown."""
    return (
        f"trust strategy: {', '.join(strategy_names())}; other names: "
        f"{', '.join(f'{k}={v}' for k, v in ALIASES.items())}"
    )


@dataclass(frozen=True)
class TrustSettings:
    """Every trust option of a run: the strategy, when it aggregates, and how scores become trust.

    Where this project's definitions differ from the reference code's, ours are the defaults and
    the reference's are one option away (docs/trust.md, Differences from the reference code).
    """

    GROUP: ClassVar[str] = "trust"

    strategy: str = option("dynamic", _strategy_help, alias="trust")
    trust_freq: int = option(10, "aggregate every this many steps")
    pretraining_rounds: int = option(
        20,
        "local-only steps before the first aggregation, which comes at the first "
        "multiple of --trust_freq at or after it (the paper's 100 and 25 aggregate at "
        "steps 100, 125, ..., as the reference code does)",
    )
    k: int = option(3, "peers kept by the -top-k variants")
    threshold: float | None = option(
        None, "score threshold of the -thresh variants (default: the one tuned to the chosen score)", alias="thresh"
    )
    temperature: float = option(
        1.0,
        "dynamic strategies: softmax of scores / temperature (1: the paper's; lower sharpens the rows)",
        alias="trust_temperature",
    )
    similarity: str = option(
        "peft-rows",
        "dynamic: cosine similarity of the rows of A [r, d_in] and B [d_out, r] "
        "(peft-rows), of the reference code's rows, A [d_in, r] and B [r, d_out] "
        "(reference-rows), or of the updates A@B (update)",
        choices=SIMILARITIES,
    )
    ref_score: str = option(
        "perplexity",
        "dynamic-ref: minus the peer's perplexity (the paper's) or minus its loss (level-free)",
        choices=PEER_LOSS_SCORES,
    )
    token_distance: str = option(
        "top-probs",
        "dynamic-token: probabilities on client i's top tokens at every "
        "position (top-probs), or the reference code's top raw logits at the "
        "last position of 4 reference batches (reference-logits)",
        choices=TOKEN_DISTANCES,
    )
    token_top_k: int | None = option(
        None, "dynamic-token: tokens compared per position (default: 10 for top-probs, 100 for reference-logits)"
    )
    token_source: str = option(
        "reported",
        "dynamic-token: the reference predictions each client reports of its own model (reported), or "
        "predictions of the adapter it sent (sent: in-process runs only), so that a client cannot win "
        "trust with another model's predictions (docs/attacks.md)",
        choices=TOKEN_SOURCES,
    )
    norm_bound: float | None = option(
        None,
        "before averaging, scale every adapter tensor down to at most this many times the median norm of that "
        "tensor among the round's clients (None: off): a defence against oversized adapters (docs/attacks.md)",
    )
    static_rule: str = option(
        "overlap",
        "static: P P^T of the measured mixture (overlap), each client's own "
        "mixture over the clients mainly of each category (own-mixture: the rule "
        "behind the reference code's hand-set matrices), or those matrices as the "
        "reference code uses them (reference: own-mixture but on three mixed "
        "categories, where its 5:3:1 table, made symmetric, rows not normalised)",
        choices=STATIC_RULES,
    )
    peers: int = option(
        0,
        "dynamic-ref, dynamic-token, learned, fedfomo: score each client against this many candidate peers per "
        "aggregation instead of all (0, or N-1 and more: all); unscored peers get no weight",
        alias="trust_peers",
    )
    explore: int = option(
        2,
        "of the --trust_peers candidates, how many are drawn at random each aggregation; the "
        "rest are the best of the previous trust row",
        alias="trust_explore",
    )
    learn_every: int = option(
        1,
        "learned: choose the trust rows at every this many aggregations, keeping them in between "
        "(1: at every aggregation; each choice costs what dynamic-ref's scores cost, and more)",
        alias="trust_learn_every",
    )
    parts: int | None = option(
        None,
        "measure each aggregation's losses on the trust split on one of this many interleaved parts of its "
        "batches, a different part each aggregation: cost / N, noise x sqrt(N) (default: the strategy's own, "
        "8 for learned, 1 for the rest)",
        alias="trust_parts",
    )
    eval_chunk: int | None = option(
        None, "clients (dynamic-ref: pairs) per pass when scoring trust (default: --client_chunk)", resume_free=True
    )
    plugins: tuple[str, ...] = option(
        (),
        "Python files (.py) or modules that register trust strategies of your own (collab.trust."
        "register_family); --trust then takes their names",
        alias="trust_plugins",
    )

    def __post_init__(self) -> None:
        # absolute, so that a federation's processes started elsewhere find the same files
        plugins = tuple(str(Path(p).expanduser().resolve()) if p.endswith(".py") else p for p in self.plugins)
        object.__setattr__(self, "plugins", plugins)
        load_plugins(self.plugins)
        try:
            object.__setattr__(self, "strategy", Strategy.parse(self.strategy).name)
        except ValueError as err:
            raise ConfigError(f"--trust: {err}") from None
        require(self, "trust_freq", self.trust_freq >= 1, ">= 1")
        require(self, "pretraining_rounds", self.pretraining_rounds >= 0, ">= 0")
        require(self, "learn_every", self.learn_every >= 1, ">= 1")
        require(self, "norm_bound", self.norm_bound is None or self.norm_bound > 0, "> 0 (or unset: off)")
        for name in ("token_top_k", "eval_chunk", "parts"):
            require(
                self, name, getattr(self, name) is None or getattr(self, name) >= 1, ">= 1 (or unset for the default)"
            )
        self.selection()  # checks k and the temperature
        self.sampling()  # checks the peers and the random share
        if self.peers and not getattr(FAMILIES[self.family], "scores_pairs", False):
            raise ConfigError(
                f"--trust_peers bounds the pairs that dynamic-ref, dynamic-token, learned and fedfomo score; "
                f"{self.strategy} scores no pairs. Fix: drop --trust_peers, or --trust dynamic-ref or "
                "dynamic-token."
            )
        if self.peers and self.variant == "top-k" and self.k > self.peers + 1:
            raise ConfigError(
                f"--k {self.k} exceeds the {self.peers + 1} clients each client scores (itself and "
                f"--trust_peers {self.peers}). Fix: --k {self.peers + 1} or less, or more --trust_peers."
            )
        for name in ("similarity", "ref_score", "token_distance", "token_source", "static_rule"):
            require_choice(self, name)

    def aggregates_at(self, step: int) -> bool:
        """Whether clients aggregate after optimizer step `step` (1-based: the steps done)."""
        return step > 0 and step >= self.pretraining_rounds and step % self.trust_freq == 0

    @property
    def family(self) -> str:
        return Strategy.parse(self.strategy).base

    @property
    def variant(self) -> str:
        return Strategy.parse(self.strategy).variant

    def selection(self) -> Selection:
        """How a scored family's scores become trust under these settings."""
        return Selection(self.variant, self.k, self.threshold, self.temperature)

    def sampling(self) -> PeerSampling:
        """Which pairs a pair-scored family scores under these settings."""
        return PeerSampling(self.peers, self.explore)
