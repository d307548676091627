"""The corpus the offline base model is pretrained on: the share of every offline source's
documents that no recipe ever gives to a client (see `recipes.in_pretraining_share`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lora_gpt.tokenizer import cache_dir

from .manifest import MANIFEST, read_manifest, verify, write_json, write_tokens
from .prepare import tokenize_documents
from .recipes import OFFLINE_SOURCES, in_pretraining_share

VAL_SHARE = 20  # the last 1/20 of each source's tokens is validation
MAX_TOKENS_PER_SOURCE = 400_000  # OpenJDK alone holds millions: keep the languages in balance


def pretraining_corpus(out: Path | None = None, progress: bool = True) -> Path:
    """Folder with `train.bin` / `val.bin` (uint16) of all offline sources' pretraining share."""
    folder = Path(out) if out is not None else cache_dir() / "pretraining-v2"
    if (folder / MANIFEST).exists():
        verify(folder, read_manifest(folder), full=False)
        return folder
    train, val, per_source = [], [], {}
    for i, (name, load) in enumerate(tqdm(OFFLINE_SOURCES.items(), desc="pretraining corpus", disable=not progress)):
        docs = [d for d in load() if in_pretraining_share(d)]
        tokens = tokenize_documents(docs, seed=0, category=i)[:MAX_TOKENS_PER_SOURCE]
        cut = len(tokens) - len(tokens) // VAL_SHARE
        train.append(tokens[:cut])
        val.append(tokens[cut:])
        per_source[name] = int(len(tokens))
    files = {"train.bin": write_tokens(folder / "train.bin", np.concatenate(train)),
             "val.bin": write_tokens(folder / "val.bin", np.concatenate(val))}
    write_json(folder / MANIFEST, {"sources": per_source, "files": files})
    return folder
