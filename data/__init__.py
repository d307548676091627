"""Datasets for collaborative fine-tuning: recipes, client splits, token files, the DataModule.

Example:

    folder = prepare_recipe("offline_multi_specific", num_clients=8)   # tokenize once, reuse after
    dm = ClientDataModule(folder=folder, config=DataConfig(batch_size=4, sequence_length=128))  # [N, b, T+1]
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ClientDataModule": "datamodule",
    "prepare_recipe": "prepare",
    "pretraining_corpus": "pretraining",
    "list_recipes": "recipes",
    "get_recipe": "recipes",
    "Budget": "split",
    "DataConfig": "config",
    "DataError": "errors",
    "DataFileError": "errors",
    "DataNotFoundError": "errors",
    "ManifestError": "errors",
    "SourceUnavailableError": "errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # imported on first use: `python -m data.prepare` would otherwise import its module twice
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'data' has no attribute {name!r}")
