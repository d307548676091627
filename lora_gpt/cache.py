"""Where files built once and reused are kept: the tokenizer's ranks, corpora, datasets, bases."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "LORA_GPT_CACHE"


def cache_dir() -> Path:
    """Folder for files this project builds once and reuses (`$LORA_GPT_CACHE` overrides)."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "lora_gpt"))
