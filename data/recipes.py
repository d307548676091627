"""The dataset recipes: where each category's documents come from, how clients split them, and
how many tokens each client gets.

Paper recipes stream from the Hugging Face hub; offline recipes use text from Debian's archive
(`sources/offline.py`); a path (folder, `.csv`, `.jsonl`) is a recipe of your own data, split
the specific way, or the mixed way when the path ends in `:mixed`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

from lora_gpt.errors import ConfigError

from .errors import DataNotFoundError
from .sources import hf, offline
from .sources.local import TABLE_SUFFIXES, fingerprint, load_local
from .split import KINDS, Budget

Documents = Mapping[str, Iterable[str]]  # category -> its documents, in a seed-dependent order


@dataclass(frozen=True)
class Recipe:
    name: str
    kind: str  # "specific": one category per client; "mixed": 3/4 one category, 1/4 another
    num_clients: int | None  # the default client count (None: one per category)
    budget: Budget
    load: Callable[[int], Documents]  # seed -> documents by category
    description: str
    source_id: str  # what the text is: part of a prepared folder's identity
    held_out: Callable[[int], Documents] | None = None  # seed -> the dataset's test split, where it has one


# Paper budgets. Three-language: ~840k train and ~160k val tokens per client and 300k reference
# tokens per category; GitHub/Wikipedia as three-language with the reference code's 500k
# reference tokens; AG News: its categories hold ~1.5M tokens, so two clients each get a third.
THREE_MULTI_BUDGET = Budget(train=840_000, val=160_000, trust=40_000, ref=300_000)
GITHUB_WIKI_BUDGET = Budget(train=840_000, val=160_000, trust=40_000, ref=500_000)
AGNEWS_BUDGET = Budget(train=500_000, val=45_000, trust=10_000, ref=50_000)
# Offline budgets: small enough that fine-tuning 8 clients takes minutes on a CPU.
OFFLINE_BUDGET = Budget(train=30_000, val=8_000, trust=4_000, ref=10_000)
TOPICS_BUDGET = Budget(train=25_000, val=5_000, trust=2_500, ref=5_000)  # the fortune files are small

# recipe base -> (category -> offline corpora), default clients (specific, mixed), budget, description
OFFLINE_SHAPES: dict[str, tuple[dict[str, tuple[str, ...]], tuple[int, int], Budget, str]] = {
    "offline_multi": (
        {"french": ("french",), "german": ("german",), "italian": ("italian",)},
        (8, 8),
        OFFLINE_BUDGET,
        "French, German, Italian prose: the Debian Reference manual and man pages",
    ),
    "offline_code_prose": (
        {
            "java": ("java",),
            "english": ("english_manual", "english_manpages") + tuple(f"fortunes_{t}" for t in offline.FORTUNE_TOPICS),
        },
        (8, 8),
        OFFLINE_BUDGET,
        "Java (OpenJDK sources) vs English prose (Debian Reference manual, man pages, fortunes)",
    ),
    "offline_manual": (
        {lang: (f"{lang}_manual",) for lang in ("english", *offline.LANGUAGES)},
        (4, 4),
        OFFLINE_BUDGET,
        "one text in four languages: the Debian Reference manual in English, French, German, Italian",
    ),
    "offline_outlier": (
        {
            "manual": ("english_manual",),
            "manpages": ("english_manpages",),
            **{t: (f"fortunes_{t}",) for t in ("computers", "literature", "society")},
            "java": ("java",),
        },
        (6, 6),
        TOPICS_BUDGET,
        "five sources of English prose (manual, man pages, three topics of fortunes) and one of Java",
    ),
    "offline_topics": (
        {t: (f"fortunes_{t}",) for t in offline.FORTUNE_TOPICS},
        (8, 4),
        TOPICS_BUDGET,
        "four topics of English fortunes: " + ", ".join(offline.FORTUNE_TOPICS),
    ),
}
HUB_SHAPES = {  # recipe base -> default clients (specific, mixed), budget, description
    "agnews": ((8, 4), AGNEWS_BUDGET, "AG News (Hugging Face): World, Sports, Business, Sci/Tech"),
    "three_multi": ((9, 9), THREE_MULTI_BUDGET, "Wikipedia (Hugging Face) in French, Italian, German"),
    "github_wiki": ((8, 8), GITHUB_WIKI_BUDGET, "Java from GitHub vs English Wikipedia (Hugging Face)"),
}


def shuffled(docs: list[str], seed: int, category: int) -> list[str]:
    """Documents in the order of seed and category: another seed deals other documents out."""
    return [docs[i] for i in np.random.default_rng([seed, category]).permutation(len(docs))]


def _offline_load(categories: dict[str, tuple[str, ...]], seed: int) -> Documents:
    return {
        cat: shuffled(offline.client_documents(corpora), seed, i) for i, (cat, corpora) in enumerate(categories.items())
    }


def _local_load(path: Path, seed: int) -> Documents:
    return {cat: shuffled(docs, seed, i) for i, (cat, docs) in enumerate(load_local(path).items())}


def _registry() -> dict[str, Recipe]:
    recipes = {}
    for kind in KINDS:
        for base, (categories, clients, budget, text) in OFFLINE_SHAPES.items():
            recipes[f"{base}_{kind}"] = Recipe(
                f"{base}_{kind}",
                kind,
                clients[KINDS.index(kind)],
                budget,
                partial(_offline_load, categories),
                text,
                f"offline-v{offline.CORPUS_VERSION}:{categories}",
            )
        for base, (clients, budget, text) in HUB_SHAPES.items():
            recipes[f"{base}_{kind}"] = Recipe(
                f"{base}_{kind}",
                kind,
                clients[KINDS.index(kind)],
                budget,
                partial(hf.load, base),
                text,
                "hub",
                partial(hf.load, base, held_out=True) if base in hf.HELD_OUT else None,
            )
    return recipes


RECIPES = _registry()


def reference_volumes_apply(recipe: str) -> bool:
    """Whether `--data.volumes reference` changes what `recipe` gets: on a recipe with a test split
    (AG News) it does; the other recipes' budgets are the reference code's already."""
    return recipe in RECIPES and RECIPES[recipe].held_out is not None


def list_recipes() -> list[str]:
    """Names of the built-in recipes (a path to your own data is a recipe too)."""
    return sorted(RECIPES)


def _local_recipe(name: str) -> Recipe | None:
    path, kind = name, "specific"
    if name.endswith(tuple(f":{k}" for k in KINDS)) and not Path(name).exists():
        path, _, kind = name.rpartition(":")
    if not Path(path).exists():
        if "/" in path or path.endswith(TABLE_SUFFIXES):  # meant as a path, not a recipe name
            raise DataNotFoundError(
                f"{path} does not exist. Fix: give an existing folder, .csv or .jsonl of your "
                f"own data, or a recipe name: {', '.join(list_recipes())}."
            )
        return None
    root = Path(path).resolve()
    return Recipe(
        f"{root.name}_{kind}",
        kind,
        None,
        OFFLINE_BUDGET,
        partial(_local_load, root),
        f"your own data: {root}",
        f"local:{root}:{fingerprint(root)}",
    )


def get_recipe(name: str, **budgets: int | None) -> Recipe:
    """A built-in recipe by name, or one of your own data by path (optionally ending in `:mixed`),
    with any budget (`train`, `val`, `trust`, `ref` tokens) replaced where given."""
    recipe = RECIPES.get(name) or _local_recipe(name)
    if recipe is None:
        raise ConfigError(
            f"unknown recipe {name!r}. Known recipes: {', '.join(list_recipes())}. Or give the path "
            "of your own data: a folder with one sub-folder or file per category, or a .csv/.jsonl "
            "with 'text' and 'label' columns (append ':mixed' for the mixed split)."
        )
    given = {k: v for k, v in budgets.items() if v is not None}
    for key, value in given.items():
        if key not in Budget.__dataclass_fields__:
            raise ConfigError(f"unknown budget {key!r}; the budgets are train, val, trust and ref (tokens).")
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"the {key} budget must be a positive number of tokens, got {value!r}.")
    return replace(recipe, budget=replace(recipe.budget, **given))
