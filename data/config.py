"""What data a run trains on and how it is batched: one frozen, validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from lora_gpt.errors import ConfigError
from lora_gpt.options import flag_name, option, require, require_choice

from .recipes import reference_volumes_apply
from .split import PAIRINGS, resolve_pairing
from .tokenize import SEPARATORS

DEFAULT_DATASET = "offline_multi_specific"
BUDGETS = ("train", "val", "trust", "ref")
VOLUMES = ("budgets", "reference")
TRUST_SPLITS = ("trust", "val")


@dataclass(frozen=True)
class DataConfig:
    """The dataset (a recipe, your own files, or a prepared folder) and the batches drawn from it."""

    GROUP: ClassVar[str] = "data"

    dataset: str | None = option(
        None,
        "recipe name, or a folder / CSV / JSONL of your own: PATH gives each client one category, "
        "PATH:mixed the mixed split (default: "
        f"{DEFAULT_DATASET}, or the recipe --data_dir was prepared from)",
    )
    data_dir: Path | None = option(
        None,
        "an already prepared dataset folder (skips preparation); --dataset, "
        "--num_clients, --pairing and the --*_tokens must agree with its manifest",
    )
    num_clients: int | None = option(None, "clients (default: the dataset's own count)")
    pairing: str | None = option(
        None,
        "mixed split: whose main category a client takes as its minor 1/4: ring "
        "(default: client n+1's), pairs (the reference code's AG News: clients 2k "
        "and 2k+1 swap) or reference (the reference code's for each recipe: pairs on "
        "AG News, ring on the others; nothing on a specific split)",
        choices=PAIRINGS,
    )
    volumes: str | None = option(
        None,
        "how much text each client gets: budgets (default: the --*_tokens) or reference (the "
        "reference code's: on AG News each client's whole share of its categories' train "
        "documents, and validation on its share of the test split; the other recipes' "
        "budgets are the reference code's already)",
        choices=VOLUMES,
    )
    separator: str | None = option(
        None,
        "what separates documents in the token files: eot (default: GPT-2's end-of-text token "
        "after each) or space (the reference code's ' '.join: a space before each)",
        choices=SEPARATORS,
    )
    split_seed: int | None = option(
        None,
        "seed of the data split, which documents go to which client and split (default: the "
        "run's --seed, a split per seed; the reference code builds one split for all seeds)",
    )
    train_tokens: int | None = option(
        None, "train tokens per client when preparing the dataset (default: the recipe's)"
    )
    val_tokens: int | None = option(None, "val tokens per client when preparing the dataset (default: the recipe's)")
    trust_tokens: int | None = option(
        None, "trust tokens per client when preparing the dataset (default: the recipe's)"
    )
    ref_tokens: int | None = option(None, "ref tokens per category when preparing the dataset (default: the recipe's)")
    batch_size: int = option(4, "sequences per client per micro-step")
    sequence_length: int = option(128, "tokens per training sequence")
    eval_batches: int = option(4, "validation batches per client per evaluation")
    eval_overlap: bool = option(
        False,
        "let evaluation windows overlap, so that every client gets --eval_batches x --batch_size "
        "of them however short its split (the reference code draws its windows at random, "
        "overlapping); off: non-overlapping windows, as many as the shortest split holds up to that",
    )
    trust_split: str = option(
        "trust",
        "the split dynamic-ref scores a client's peers on: trust (its own, held apart from the "
        "reported metric) or val (the reference code's: the reported split itself)",
        choices=TRUST_SPLITS,
    )

    def __post_init__(self) -> None:
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        for name in ("num_clients", *(f"{b}_tokens" for b in BUDGETS)):
            require(self, name, getattr(self, name) is None or getattr(self, name) >= 1, ">= 1")
        for name in ("pairing", "volumes", "separator"):
            if getattr(self, name) is not None:
                require_choice(self, name)
        require(self, "split_seed", self.split_seed is None or self.split_seed >= 0, ">= 0")
        require_choice(self, "trust_split")
        for name in ("batch_size", "eval_batches"):
            require(self, name, getattr(self, name) >= 1, ">= 1")
        require(self, "sequence_length", self.sequence_length >= 2, ">= 2")

    @property
    def recipe(self) -> str:
        """The recipe or path to prepare (without `--data_dir`)."""
        return self.dataset or DEFAULT_DATASET

    @property
    def prepared_clients(self) -> int:
        """The client count of a config `resolved` against its prepared folder (as a run folder's is)."""
        if self.num_clients is None:
            raise ConfigError("the client count is known once the dataset is prepared (DataConfig.resolved).")
        return self.num_clients

    def budgets(self) -> dict[str, int | None]:
        """The token budgets asked for, as `data.prepare_recipe` takes them (None: the recipe's)."""
        return {b: getattr(self, f"{b}_tokens") for b in BUDGETS}

    def resolved(self, manifest: dict[str, Any]) -> DataConfig:
        """This config with the dataset and client count the prepared folder holds, after refusing
        any option that contradicts the folder's manifest (a `--data_dir` made with other options)."""
        options = manifest["options"]
        used = manifest.get("budget", options["budget"])
        volumes = options.get("volumes", "budgets")
        folder_has = {
            "dataset": manifest["recipe"],
            "num_clients": manifest["num_clients"],
            "pairing": options.get("pairing"),
            "volumes": volumes,
            "separator": options.get("separator", "eot"),
            "split_seed": options["seed"],
            # whole shares have no train or val budget: any asked for contradicts them
            **{f"{b}_tokens": None if volumes == "reference" and b in ("train", "val") else used[b] for b in BUDGETS},
        }
        asked = {name: getattr(self, name) for name in folder_has}
        if self.pairing is not None:
            asked["pairing"] = resolve_pairing(options["kind"], self.pairing, manifest["recipe"])
        if self.volumes == "reference" and not reference_volumes_apply(manifest["recipe"]):
            asked["volumes"] = "budgets"  # the same text either way
        clash = {
            name: (getattr(self, name), value)
            for name, value in folder_has.items()
            if getattr(self, name) is not None and asked[name] != value
        }
        if clash:
            where = self.data_dir or "the prepared dataset"
            said = ", ".join(f"{flag_name(self, k)} {asked} (the folder: {has})" for k, (asked, has) in clash.items())
            raise ConfigError(
                f"{where} was prepared with other options than this run asks for: {said}. Fix: leave "
                "those options out to use the folder as it is, or prepare a dataset with them (drop "
                "--data_dir)."
            )
        return replace(self, dataset=manifest["recipe"], num_clients=manifest["num_clients"])
