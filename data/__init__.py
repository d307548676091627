"""Datasets for collaborative fine-tuning: recipes, client splits, token files, the DataModule."""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ClientDataModule": "datamodule", "ManifestError": "manifest", "prepare_recipe": "prepare",
    "pretraining_corpus": "pretraining", "get_recipe": "recipes", "list_recipes": "recipes",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # imported on first use, so `python -m data.prepare` does not import its own module twice
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'data' has no attribute {name!r}")
