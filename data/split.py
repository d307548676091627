"""Which client gets what: each category's documents are dealt out, in order, to the shared
reference stream first and then to every client's train / val / trust splits. Pieces hold
whole documents (see `TokenStream.take`), so no document is in two places: not in two clients,
not in two splits, not in a split and the reference stream.

Many clients, or your own data: `fitted_budget` shrinks a budget in proportion, down to `FLOOR`, until every
category's text fills every piece; where even the floor is too much, or the budget is fixed, the
error names the largest client count the text serves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np

from lora_gpt.errors import ConfigError

from .tokenize import TextExhausted, TokenizedDocuments, TokenStream

SPLITS = ("train", "val", "trust")
KINDS = ("specific", "mixed")
MAJOR_SHARE = 0.75  # a mixed client: 3/4 of its own category, 1/4 of a partner's
# Whose major category a mixed client takes as its minor: `ring` (ours), client n+1's, so every
# category is some client's minor; `pairs` (the reference code's AG News), its partner's in the
# pairs (0, 1), (2, 3), ..., so two clients share the same two categories; `reference`, the reference
# code's own for each recipe: `pairs` on AG News (src/data/agnews_mixed.py:34-45 at e47fc90), `ring`
# on its other mixed recipes (three_multi_mixed, github_wiki_mixed).
PAIRINGS = ("ring", "pairs", "reference")
REFERENCE_PAIRED = ("agnews_mixed",)  # the recipes the reference code pairs


@dataclass(frozen=True)
class Budget:
    """Tokens per client in each split, and per category in the shared reference stream."""

    train: int
    val: int
    trust: int
    ref: int

    def __str__(self) -> str:
        return f"train {self.train:,}, val {self.val:,}, trust {self.trust:,} per client, ref {self.ref:,} per category"


# A split's smallest useful size, in windows of collab.fit's default sequence (128 tokens and the
# next-token target): budgets shrunk for many clients stop here (or at the recipe's own, if smaller).
WINDOW = 128 + 1
FLOOR = Budget(train=8 * WINDOW, val=4 * WINDOW, trust=4 * WINDOW, ref=8 * WINDOW)


@dataclass
class Split:
    clients: list[dict[str, np.ndarray]]  # client -> split name -> uint16 tokens
    counts: np.ndarray  # [N, C] tokens each client got from each category, all splits together
    ref: np.ndarray  # the shared reference stream, `budget.ref` tokens of each category in turn
    documents_used: list[int]  # per category, cut ones included

    @property
    def mixture(self) -> np.ndarray:
        """`[N, C]`: each client's real share of tokens from each category (rows sum to 1)."""
        return self.counts / self.counts.sum(axis=1, keepdims=True)


def resolve_pairing(kind: str, pairing: str | None, recipe: str = "") -> str | None:
    """The pairing a split of `recipe` uses: `ring` unless asked for a mixed split; none for a specific
    one; `reference` as the reference code pairs that recipe."""
    if pairing is not None and pairing not in PAIRINGS:
        raise ConfigError(f"unknown pairing {pairing!r}; use one of {', '.join(PAIRINGS)}.")
    if pairing == "reference":
        return ("pairs" if recipe in REFERENCE_PAIRED else "ring") if kind == "mixed" else None
    if kind == "specific" and pairing is not None:
        raise ConfigError(
            "--pairing applies to the mixed split; this recipe's split is specific (one category per "
            "client). Fix: the mixed recipe (RECIPE_mixed, or PATH:mixed for your own data), or no "
            "--pairing."
        )
    return (pairing or PAIRINGS[0]) if kind == "mixed" else None


def minor_category(n: int, num_categories: int, pairing: str) -> int:
    """A mixed client's minor category: the major one (`m mod C`) of client m, its neighbour or partner."""
    partner = n + 1 if pairing == "ring" else n ^ 1
    return partner % num_categories


def design_shares(kind: str, num_clients: int, num_categories: int, pairing: str | None = None) -> np.ndarray:
    """`[N, C]` planned shares. Client n's main category is n mod C, so clients are spread evenly
    over categories; a mixed client adds the main category of its neighbour (`ring`: every
    category is some client's minor) or of its partner (`pairs`: clients 2k and 2k+1 swap)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown split kind {kind!r}; use one of {', '.join(KINDS)}.")
    pairing = resolve_pairing(kind, pairing)
    if num_clients < 1:
        raise ConfigError(f"num_clients must be at least 1, got {num_clients}.")
    if kind == "specific" and num_clients < num_categories:
        raise ConfigError(
            f"the specific split gives each of the {num_categories} categories at least one client, so "
            f"it needs num_clients >= {num_categories}, got {num_clients}. Fix: --num_clients "
            f"{num_categories} or more, or the mixed variant of the recipe."
        )
    if kind == "mixed" and num_categories < 2:
        raise ConfigError("a mixed split needs at least 2 categories; this data has 1. Fix: use the specific split.")
    if pairing == "pairs" and num_clients % 2:
        raise ConfigError(
            f"--pairing pairs makes pairs of clients 2k and 2k+1, so it needs an even num_clients, "
            f"got {num_clients}. Fix: --num_clients {num_clients - 1} or {num_clients + 1}, or --pairing "
            "ring."
        )
    shares = np.zeros((num_clients, num_categories))
    for n in range(num_clients):
        if kind == "specific":
            shares[n, n % num_categories] = 1.0
        else:
            assert pairing is not None  # resolve_pairing gives every mixed split one
            shares[n, n % num_categories] = MAJOR_SHARE
            shares[n, minor_category(n, num_categories, pairing)] = 1 - MAJOR_SHARE
    return shares


def piece_sizes(shares: np.ndarray, size: int) -> list[tuple[int, int]]:
    """(category, tokens) pieces of a `size`-token split, largest share first; rounding goes to
    the largest, so the pieces add up to exactly `size`."""
    cats = [int(c) for c in np.argsort(-shares, kind="stable") if shares[c] > 0]
    minor = [(c, int(round(size * shares[c]))) for c in cats[1:]]
    return [(cats[0], size - sum(s for _, s in minor))] + minor


def category_needs(shares: np.ndarray, budget: Budget) -> np.ndarray:
    """Tokens each category must provide (before the remainders of cut documents)."""
    need = np.full(shares.shape[1], budget.ref, dtype=np.int64)
    for row in shares:
        for split in SPLITS:
            for cat, size in piece_sizes(row, getattr(budget, split)):
                need[cat] += size
    return need


@dataclass(frozen=True)
class Layout:
    """Who holds which categories: the split kind, the client count and (mixed) the pairing."""

    kind: str
    num_clients: int
    num_categories: int
    pairing: str | None = None

    def shares(self) -> np.ndarray:
        return design_shares(self.kind, self.num_clients, self.num_categories, self.pairing)

    def allows(self, num_clients: int) -> bool:
        """Whether this split can have `num_clients` clients (specific: one per category at least;
        pairs: an even count)."""
        try:
            replace(self, num_clients=num_clients).shares()
        except ConfigError:
            return False
        return True


class NotEnoughText(Exception):
    """A category ran out of documents while its pieces were dealt."""

    def __init__(self, category: int) -> None:
        super().__init__(category)
        self.category = category


def deal(
    docs: list[TokenizedDocuments],
    shares: np.ndarray,
    budget: Budget,
    on_tokens: Callable[[int], None] = lambda n: None,
) -> Split:
    """Deal documents out: the reference stream, then client by client, split by split;
    `NotEnoughText` when a category runs out."""
    streams = [TokenStream(d) for d in docs]

    def take(cat: int, size: int) -> np.ndarray:
        try:
            piece = streams[cat].take(size)
        except TextExhausted:
            raise NotEnoughText(cat) from None
        on_tokens(size)
        return piece

    ref = np.concatenate([take(c, budget.ref) for c in range(len(streams))])
    clients, counts = [], np.zeros(shares.shape, dtype=np.int64)
    for n, row in enumerate(shares):
        splits = {}
        for split in SPLITS:
            pieces = piece_sizes(row, getattr(budget, split))
            splits[split] = np.concatenate([take(cat, size) for cat, size in pieces])
            for cat, size in pieces:
                counts[n, cat] += size
        clients.append(splits)
    return Split(clients, counts, ref, [s.documents_used for s in streams])


def share_out(documents: list[list[np.ndarray]], shares: np.ndarray) -> list[dict[int, list[np.ndarray]]]:
    """Every category's `documents`, whole, to the clients holding it, in proportion to their shares
    of it, by document count, as the reference code cuts AG News (src/data/agnews_mixed.py:28-45 at
    e47fc90): each holder gets the floor of its part (`len // 4`, `len // 2`), the last of the largest
    holders the rest. Client -> category -> its documents."""
    out: list[dict[int, list[np.ndarray]]] = [{} for _ in range(shares.shape[0])]
    for cat, docs in enumerate(documents):
        holders = np.flatnonzero(shares[:, cat] > 0)
        part = shares[holders, cat]
        counts = np.floor(part / part.sum() * len(docs)).astype(int)
        rest = len(part) - 1 - int(np.argmax(part[::-1]))  # the last of the largest
        counts[rest] += len(docs) - counts.sum()
        for n, end, size in zip(holders, np.cumsum(counts), counts, strict=True):
            out[n][cat] = docs[end - size : end]
    return out


def whole_shares(
    docs: list[TokenizedDocuments],
    held_out: list[TokenizedDocuments],
    shares: np.ndarray,
    budget: Budget,
    on_tokens: Callable[[int], None] = lambda n: None,
) -> Split:
    """The reference code's AG News volumes: every client's whole share of its categories' documents
    as its train split, and its share of the `held_out` documents (the dataset's test split) as its
    val split (`share_out`). The reference stream (`budget.ref` per category) and every client's
    trust piece (`budget.trust`), which the reference code has not, come first out of the train
    documents, so no document is in two places; `NotEnoughText` when a category runs out there."""
    streams = [TokenStream(d) for d in docs]

    def take(cat: int, size: int) -> np.ndarray:
        try:
            piece = streams[cat].take(size)
        except TextExhausted:
            raise NotEnoughText(cat) from None
        on_tokens(size)
        return piece

    ref = np.concatenate([take(c, budget.ref) for c in range(len(streams))])
    counts = np.zeros(shares.shape, dtype=np.int64)
    trust = []
    for n, row in enumerate(shares):
        pieces = piece_sizes(row, budget.trust)
        trust.append(np.concatenate([take(cat, size) for cat, size in pieces]))
        for cat, size in pieces:
            counts[n, cat] += size
    train = share_out([s.rest() for s in streams], shares)
    val = share_out([TokenStream(d).rest() for d in held_out], shares)
    clients = []
    for n, row in enumerate(shares):
        order = [int(c) for c in np.argsort(-row, kind="stable") if row[c] > 0]  # main category first
        splits = {"trust": trust[n]}
        for name, parts in (("train", train[n]), ("val", val[n])):
            documents = [d for cat in order for d in parts[cat]]
            splits[name] = np.concatenate(documents) if documents else np.zeros(0, dtype=np.uint16)
            for cat in order:
                counts[n, cat] += sum(map(len, parts[cat]))
            on_tokens(len(splits[name]))
        clients.append(splits)
    return Split(clients, counts, ref, [s.documents_used for s in streams])


def fits(docs: list[TokenizedDocuments], shares: np.ndarray, budget: Budget) -> bool:
    """Whether the text fills every piece of these clients at `budget`."""
    try:
        deal(docs, shares, budget)
    except NotEnoughText:
        return False
    return True


def most_clients(docs: list[TokenizedDocuments], layout: Layout, budget: Budget) -> int:
    """The largest client count below `layout.num_clients` that the split allows and the text
    serves at `budget`; 0 if none. A client's shares do not depend on the count and clients are
    dealt in order, so fewer clients never need more text: a binary search."""
    shares = layout.shares()
    lo, hi = 0, layout.num_clients - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(docs, shares[:mid], budget) else (lo, mid - 1)
    while lo and not layout.allows(lo):
        lo -= 1
    return lo


def scaled(budget: Budget, train: int, floor: Budget = FLOOR) -> Budget:
    """`budget` with `train` train tokens and its other splits shrunk in proportion, none below
    its floor (nor a floor above the budget itself)."""
    return Budget(**{k: max(min(getattr(floor, k), v), v * train // budget.train) for k, v in asdict(budget).items()})


def fitted_budget(docs: list[TokenizedDocuments], categories: list[str], layout: Layout, budget: Budget) -> Budget:
    """`budget` if the text fills it, else the largest budget in proportion to it, down to
    `FLOOR`, that the text fills: a binary search over the train tokens, as smaller pieces never
    need more documents. Where even the floor is too much, the error names the largest client
    count that works."""
    shares = layout.shares()
    if fits(docs, shares, budget):
        return budget
    smallest = scaled(budget, 0)  # every split at its floor
    try:
        deal(docs, shares, smallest)
    except NotEnoughText as short:
        raise shortage(docs, categories, layout, smallest, short.category, at_floor=True) from None
    lo, hi = smallest.train, budget.train - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(docs, shares, scaled(budget, mid)) else (lo, mid - 1)
    return scaled(budget, lo)


def split_clients(
    docs: list[TokenizedDocuments],
    categories: list[str],
    layout: Layout,
    budget: Budget,
    on_tokens: Callable[[int], None] = lambda n: None,
) -> Split:
    """Every client's splits and the reference stream at `budget`; where a category runs out, an
    error naming it and the largest client count that works."""
    try:
        return deal(docs, layout.shares(), budget, on_tokens)
    except NotEnoughText as short:
        raise shortage(docs, categories, layout, budget, short.category, at_floor=False) from None


def shortage(
    docs: list[TokenizedDocuments], categories: list[str], layout: Layout, budget: Budget, short: int, at_floor: bool
) -> ConfigError:
    """The error for a category that ran out: what it has, what the clients need, and the fix."""
    n_docs, tokens = docs[short].tokenized()  # all of it: it ran out
    need = category_needs(layout.shares(), budget)[short]
    most = most_clients(docs, layout, budget)
    at = "even at the smallest budgets" if at_floor else "at these budgets"
    sizes = f"{budget}" + ("; budgets shrink toward these until the text suffices" if at_floor else "")
    fixes = [f"--num_clients {most} or fewer (the most this text serves {at.removeprefix('even ')})"] if most else []
    fixes.append(
        "more text in that category"
        if at_floor
        else "smaller budgets (--train_tokens, --val_tokens, --trust_tokens, --ref_tokens)"
    )
    return ConfigError(
        f"not enough text in category {categories[short]!r} for {layout.num_clients} clients {at} "
        f"({sizes}): its {n_docs:,} documents ({tokens:,} tokens) ran out, where these clients need "
        f"at least {need:,} tokens of it (and more, as each piece takes whole documents and drops the "
        f"rest of its last one). Fix: {', or '.join(fixes)}."
    )
