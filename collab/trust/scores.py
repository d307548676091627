"""What each trust family measures, as pure functions, each next to the `-thresh` threshold tuned
to its scale: choosing a definition chooses its threshold too. Scores are higher for more trust.

Where this project's definition differs from the reference code's on purpose, both are here under
names that say what they compute; docs/trust.md (Differences from the reference code) says which is
the default and why.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
import torch.nn.functional as F

from lora_gpt.errors import ConfigError

from .matrices import overlap


def check_choice(what: str, value: str, choices: Mapping[str, object]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}.")


@dataclass(frozen=True)
class ScoreDefinition:
    """A score and the `-thresh` threshold tuned to its scale."""

    score: Callable[..., torch.Tensor]
    threshold: float


# --- dynamic: how alike two clients' adapters are (cosine similarity, threshold 0.5 as in the paper)


def row_cosine(adapters: Mapping[str, torch.Tensor], dim: int) -> torch.Tensor:
    """`[N, N]` mean cosine similarity of matching vectors of two clients' adapter matrices, pooled
    over every matrix of every adapted layer (a matrix with more vectors weighs more).

    The vectors run along `dim` of our layout, A `[N, d_in, r]` and B `[N, r, d_out]`: `dim=-2`
    compares the rows of PEFT's layout (A's r rows of length d_in, B's d_out rows of length r);
    `dim=-1` the rows of the reference code's layout (A's d_in rows of length r, B's r rows of
    length d_out), which its `F.cosine_similarity(A_i, A_j)` compares.
    """
    total, vectors = torch.zeros(()), 0
    for tensor in adapters.values():
        unit = F.normalize(tensor.detach().double(), dim=dim)
        total = total + torch.einsum("i...,j...->ij", unit, unit)
        vectors += tensor[0].numel() // tensor.shape[dim]
    return (total / vectors).float()


def update_cosine(adapters: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """`[N, N]` cosine similarity of each layer's full update `A @ B` (what the adapter adds to the
    weight), from r x r Gram matrices in closed form, averaged over layers."""
    sims = []
    for name_a in sorted(k for k in adapters if k.endswith("lora_A")):
        A = adapters[name_a].detach().double()
        B = adapters[name_a[:-1] + "B"].detach().double()
        # <A_i B_i, A_j B_j>_F = sum((A_i^T A_j) * (B_i B_j^T)): r x r work, no d_in x d_out
        gram = (torch.einsum("idr,jds->ijrs", A, A) * torch.einsum("irk,jsk->ijrs", B, B)).sum((-2, -1))
        norms = gram.diagonal().clamp_min(1e-30).sqrt()
        sims.append(gram / (norms[:, None] * norms[None, :]))
    return torch.stack(sims).mean(0).float()


SIMILARITIES = {
    "peft-rows": ScoreDefinition(partial(row_cosine, dim=-2), 0.5),
    "reference-rows": ScoreDefinition(partial(row_cosine, dim=-1), 0.5),
    "update": ScoreDefinition(update_cosine, 0.5),
}


# --- dynamic-ref: how well client j's model predicts client i's data (`[N, N]` mean losses in nats)


def minus_perplexity(losses: torch.Tensor) -> torch.Tensor:
    """The paper's score. Its spread grows with the perplexity level: rows are one-hot at
    perplexities near 500 and flat near 20, whatever the models' relative quality."""
    return -losses.double().exp().float()


def minus_loss(losses: torch.Tensor) -> torch.Tensor:
    """A level-free score: softmax weights then depend only on the ratios of perplexities."""
    return -losses.float()


PEER_LOSS_SCORES = {
    "perplexity": ScoreDefinition(minus_perplexity, -30.0),  # the paper's threshold: peers under perplexity 30
    "loss": ScoreDefinition(minus_loss, -math.log(30.0)),  # the same cut, as a loss
}


# --- dynamic-token: how far apart two clients' predictions on the shared reference text are

PAIR_ELEMENTS = 1 << 22  # elements of one block of pairs' gathered predictions


def token_scores(distances: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
    """Minus the distances with each row scaled to sum to 10, as the reference code scales them:
    scores lie in [-10, 0] whatever the distance's units. A non-finite distance (a broken client)
    stays non-finite and leaves the rest of its row as it would be without it.

    Where only the pairs in `scored` (`[N, N]` bool) were measured, a row's sum is estimated from
    its scored peers as if the others were like them (N times their mean), so that scores keep the
    scale of full scoring; unscored pairs are NaN."""
    distances = distances.float()
    finite = distances.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).abs()
    if scored is None:
        row_sums = finite.sum(dim=1, keepdim=True)
    else:
        counted = scored.cpu()
        finite = finite * counted
        row_sums = finite.sum(dim=1, keepdim=True) * distances.shape[1] / counted.sum(dim=1, keepdim=True)
        distances = distances.masked_fill(~counted, float("nan"))
    return -10.0 * distances / row_sums.clamp_min(1e-12)


def pair_indices(n: int, pairs: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(rows, cols)` of the pairs set in `pairs` (`[n, n]` bool; None: every pair)."""
    mask = torch.ones(n, n, dtype=torch.bool) if pairs is None else pairs.cpu()
    rows, cols = mask.nonzero(as_tuple=True)
    return rows, cols


def pair_sums(
    n: int, pairs: torch.Tensor | None, part: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], block: int
) -> torch.Tensor:
    """`[n, n]` float64: `part(rows, cols)` (`[len(rows)]`, one value per pair) at the pairs set in
    `pairs`, zero elsewhere, `block` pairs at a time (bounding the memory of `part`)."""
    rows, cols = pair_indices(n, pairs)
    out = torch.zeros(n, n, dtype=torch.float64)
    for start in range(0, len(rows), block):
        r, c = rows[start : start + block], cols[start : start + block]
        out[r, c] = part(r, c).double().cpu()
    return out


@dataclass(frozen=True)
class TopProbabilities:
    """This project's: at every position, both clients' probabilities on client i's `top_k` most
    likely tokens (at most the vocabulary); their L1 distance over client i's mass there (0 same,
    up to 2; not symmetric).

    Each client's `predict` is its full next-token distribution; `distance_sum` reads client j's
    only at client i's top tokens, so it gives the same on any subset of the vocabulary that holds
    every client's top tokens (what a federated client can upload instead of the whole vocabulary).
    """

    name: ClassVar[str] = "top-probs"
    top_k: int = 10
    positions: ClassVar[slice] = slice(None)  # every position
    num_batches: ClassVar[int | None] = None  # the data source's evaluation batches
    threshold: ClassVar[float] = -2.5

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(dim=-1)

    def distance_sum(self, outputs: torch.Tensor, pairs: torch.Tensor | None = None) -> torch.Tensor:
        """`[N, N]` summed over the positions of `outputs` `[N, ..., V]`, at the pairs set in `pairs`
        (`[N, N]` bool; None: every pair), zero elsewhere."""
        probs = outputs.flatten(1, -2)  # [N, P, V]
        n, positions = probs.shape[:2]
        top = probs.topk(min(self.top_k, probs.shape[-1]), dim=-1).indices  # [N, P, k]
        own = probs.gather(-1, top)  # [N, P, k]: each client on its own top tokens
        mass = own.sum(-1).clamp_min(1e-12)  # [N, P]

        def part(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
            # [pairs, P, k]: client j on client i's top tokens, read without copying client j's rows
            theirs = probs[j[:, None, None], torch.arange(positions)[None, :, None], top[i]]
            return ((theirs - own[i]).abs().sum(-1) / mass[i]).sum(-1)

        return pair_sums(n, pairs, part, max(1, PAIR_ELEMENTS // (positions * top.shape[-1])))


@dataclass(frozen=True)
class TopLogits:
    """The reference code's: at the last position of each sequence of `num_batches` reference
    batches, each client's own `top_k` raw logits (at most the vocabulary), every other logit
    zero; the symmetric L1 distance of two clients' vectors. Its threshold -50 keeps every peer
    (token scores lie in [-10, 0]); it is kept as the reference has it."""

    name: ClassVar[str] = "reference-logits"
    top_k: int = 100
    positions: ClassVar[slice] = slice(-1, None)  # the last position only
    num_batches: ClassVar[int | None] = 4
    threshold: ClassVar[float] = -50.0

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        kth = logits.topk(min(self.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, 0.0)  # ties with the k-th logit stay, as in the reference

    def distance_sum(self, outputs: torch.Tensor, pairs: torch.Tensor | None = None) -> torch.Tensor:
        """`[N, N]` summed over the positions of `outputs` `[N, ..., V]`, at the pairs set in `pairs`
        (`[N, N]` bool; None: every pair), zero elsewhere."""
        values = outputs.flatten(1, -2)  # [N, P, V]

        def part(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
            return (values[i].double() - values[j].double()).abs().sum((-2, -1))

        return pair_sums(values.shape[0], pairs, part, max(1, PAIR_ELEMENTS // values[0].numel()))


TokenMeasure = TopProbabilities | TopLogits
TOKEN_DISTANCES: dict[str, type[TopProbabilities] | type[TopLogits]] = {
    m.name: m for m in (TopProbabilities, TopLogits)
}


def token_measure(distance: str, top_k: int | None = None) -> TokenMeasure:
    """The measure named `distance` (`TOKEN_DISTANCES`) comparing `top_k` tokens (None: its default)."""
    check_choice("token distance", distance, TOKEN_DISTANCES)
    kind = TOKEN_DISTANCES[distance]
    return kind() if top_k is None else kind(top_k)


# --- static: from the known client x category mixture P `[N, C]` (affinities, rows normalised later)


def own_mixture(mixture: torch.Tensor) -> torch.Tensor:
    """`[N, N]`: client i gives its own share of each category to the clients mainly of that
    category, split evenly among them: `P[i, c_j] / |{k: c_k = c_j}|`, c the main category. The rule
    behind the reference code's hand-set matrices (AG News mixed: 3/4 self, 1/4 partner)."""
    main = mixture.argmax(dim=1)
    members = F.one_hot(main, mixture.shape[1]).double()  # [N, C]
    return mixture.double() @ (members / members.sum(0).clamp_min(1)).T


# The reference code's hand-set three_multi_mixed matrix (src/optim/lora.py:240-261 at e47fc90): of
# client i's weight, 5/9 to the clients mainly of its own category, 3/9 of its minor's and 1/9 of the
# third's, split evenly among them (5 / (3N) each at N/3 clients per category).
REFERENCE_THREE_MIXED = (5 / 9, 3 / 9, 1 / 9)


def reference_matrices(mixture: torch.Tensor) -> torch.Tensor:
    """`[N, N]`: the reference code's hand-set static matrices (`__average_static`,
    src/optim/lora.py:223-273 at e47fc90) as it uses them. On a mixed split of three categories (its
    `three_multi_mixed`) its table: each client's `REFERENCE_THREE_MIXED` shares of its main, minor and
    third category, split among the clients mainly of each, computed for j <= i only and copied to
    (j, i), so row i takes the entries of the clients after it from their rows; the rows are not
    normalised (at N=9 those of the second category's clients sum to 25/27). Elsewhere `own_mixture`,
    which gives the reference's matrices of its other recipes."""
    n, categories = mixture.shape
    mixed = bool(((mixture > 0).sum(dim=1) > 1).any())
    if not (mixed and categories == 3):
        return own_mixture(mixture)
    order = mixture.argsort(dim=1, descending=True, stable=True)  # main, minor, third
    shares = torch.zeros_like(mixture, dtype=torch.float64)
    shares.scatter_(1, order, torch.tensor(REFERENCE_THREE_MIXED, dtype=torch.float64).expand(n, -1).contiguous())
    lower = own_mixture(shares).tril()
    return lower + lower.tril(-1).T


STATIC_RULES = {"overlap": overlap, "own-mixture": own_mixture, "reference": reference_matrices}
# Rules whose rows are used as they are, as the reference code averages with its matrices, not normalised.
UNNORMALISED_RULES = ("reference",)
