"""What data a run trains on and how it is batched: one frozen, validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from lora_gpt.errors import ConfigError
from lora_gpt.options import flag_name, option, require, require_choice

from .split import PAIRINGS

DEFAULT_DATASET = "offline_multi_specific"
BUDGETS = ("train", "val", "trust", "ref")


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
        "(default: client n+1's) or pairs (the reference code's AG News: clients 2k "
        "and 2k+1 swap)",
        choices=PAIRINGS,
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

    def __post_init__(self) -> None:
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        for name in ("num_clients", *(f"{b}_tokens" for b in BUDGETS)):
            require(self, name, getattr(self, name) is None or getattr(self, name) >= 1, ">= 1")
        if self.pairing is not None:
            require_choice(self, "pairing")
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
        used = manifest.get("budget", manifest["options"]["budget"])
        folder_has = {
            "dataset": manifest["recipe"],
            "num_clients": manifest["num_clients"],
            "pairing": manifest["options"].get("pairing"),
            **{f"{b}_tokens": used[b] for b in BUDGETS},
        }
        clash = {
            name: (getattr(self, name), value)
            for name, value in folder_has.items()
            if getattr(self, name) is not None and getattr(self, name) != value
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
