"""The dataset recipes: where each category's documents come from, how clients split them,
and how many tokens each client gets."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable

from .sources import debian, hf
from .sources.local import load_local

PRETRAIN_SHARE = 3  # of every 10 offline documents (by content hash) go to base pretraining only


@dataclass(frozen=True)
class Budget:
    """Tokens per client in each split, and per category in the shared reference stream."""

    train: int
    val: int
    trust: int
    ref: int


@dataclass(frozen=True)
class Recipe:
    name: str
    split: str  # "specific": one category per client; "mixed": 3/4 one category, 1/4 another
    num_clients: int  # default client count
    load: Callable[[int], dict[str, list[str]]]  # tokens needed per category -> documents by category
    budget: Budget
    offline: bool  # built from Debian's archive: documents of the pretraining share are left out


def in_pretraining_share(doc: str) -> bool:
    """Whether an offline document is reserved for base pretraining (never given to a client)."""
    return int(hashlib.sha1(doc.encode()).hexdigest()[:8], 16) % 10 < PRETRAIN_SHARE


def _offline(sources: dict[str, Callable[[], list[str]]]) -> Callable[[int], dict[str, list[str]]]:
    def load(tokens_needed: int) -> dict[str, list[str]]:
        return {cat: [d for d in get() if not in_pretraining_share(d)] for cat, get in sources.items()}
    return load


OFFLINE_SOURCES: dict[str, Callable[[], list[str]]] = {
    "french": partial(debian.debian_reference, "fr"),
    "german": partial(debian.debian_reference, "de"),
    "italian": partial(debian.debian_reference, "it"),
    "english": partial(debian.debian_reference, "en"),
    "java": debian.java_sources,
    "computers": partial(debian.fortunes, "computers"),
    "songs-poems": partial(debian.fortunes, "songs-poems"),
}

MULTI = {k: OFFLINE_SOURCES[k] for k in ("french", "german", "italian")}
CODE_PROSE = {k: OFFLINE_SOURCES[k] for k in ("java", "english")}
TOPICS = {"manual": OFFLINE_SOURCES["english"], "computers": OFFLINE_SOURCES["computers"],
          "songs-poems": OFFLINE_SOURCES["songs-poems"]}

OFFLINE_BUDGET = Budget(train=30_000, val=6_000, trust=2_000, ref=10_000)
TOPICS_BUDGET = Budget(train=12_000, val=3_000, trust=1_000, ref=3_000)  # fortune files are small
# The paper's three-language budget: ~840k train and ~160k validation tokens per client.
PAPER_BUDGET = Budget(train=840_000, val=160_000, trust=40_000, ref=300_000)
AGNEWS_BUDGET = Budget(train=200_000, val=40_000, trust=10_000, ref=100_000)


def _hf_docs(loader: Callable[..., dict[str, list[str]]], tokens_per_doc: int) -> Callable[[int], dict[str, list[str]]]:
    def load(tokens_needed: int) -> dict[str, list[str]]:
        return loader(max_docs=2 * tokens_needed // tokens_per_doc + 10)
    return load


RECIPES: dict[str, Recipe] = {}
for _split in ("specific", "mixed"):
    for _name, _sources, _clients, _budget in (("offline_multi", MULTI, 8, OFFLINE_BUDGET),
                                               ("offline_code_prose", CODE_PROSE, 8, OFFLINE_BUDGET),
                                               ("offline_topics", TOPICS, 6, TOPICS_BUDGET)):
        RECIPES[f"{_name}_{_split}"] = Recipe(f"{_name}_{_split}", _split, _clients, _offline(_sources), _budget, True)
    RECIPES[f"agnews_{_split}"] = Recipe(f"agnews_{_split}", _split, 4 if _split == "mixed" else 8,
                                         _hf_docs(hf.ag_news, 50), AGNEWS_BUDGET, False)
    RECIPES[f"three_multi_{_split}"] = Recipe(f"three_multi_{_split}", _split, 9,
                                              _hf_docs(partial(hf.wikipedia, ["fr", "it", "de"]), 700),
                                              PAPER_BUDGET, False)
    RECIPES[f"github_wiki_{_split}"] = Recipe(f"github_wiki_{_split}", _split, 8,
                                              _hf_docs(hf.github_wiki, 600), PAPER_BUDGET, False)


def list_recipes() -> list[str]:
    return sorted(RECIPES)


def get_recipe(name: str, **budget_overrides: int) -> Recipe:
    """A named recipe, or a bring-your-own one for a path (`folder`, `.csv`, `.jsonl`).

    A path recipe's name may end in `:mixed` to split it the mixed way (default specific).
    """
    path_part, _, split = name.partition(":") if not Path(name).exists() else (name, "", "")
    if name in RECIPES:
        recipe = RECIPES[name]
    elif Path(path_part).exists():
        if split not in ("", "specific", "mixed"):
            raise ValueError(f"{name!r}: a path recipe may end in ':specific' or ':mixed', not {split!r}.")
        path = Path(path_part)
        recipe = Recipe(f"local_{path.stem}", split or "specific", len(load_local(path)),
                        lambda tokens_needed: load_local(path), OFFLINE_BUDGET, False)
    else:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(list_recipes())}; or give a "
                         "folder (one sub-folder or file per category) or a .csv/.jsonl with text and label columns.")
    overrides = {k: v for k, v in budget_overrides.items() if v is not None}
    for key, value in overrides.items():
        if key not in Budget.__dataclass_fields__:
            raise ValueError(f"unknown budget {key!r}; budgets are train, val, trust, ref.")
        if value < 1:
            raise ValueError(f"the {key} budget must be >= 1 token, got {value}.")
    return replace(recipe, budget=replace(recipe.budget, **overrides)) if overrides else recipe
