"""The corpus the offline base model is pretrained on: reserved shares of chosen offline corpora.

A document is reserved when its content hash falls in the first 20% of the hash range
(`offline.for_pretraining`), or when its corpus is used by no recipe (`offline.PRETRAINING_ONLY`);
no offline recipe ever gives a reserved document to a client or to a reference stream, so the
base model has seen none of the fine-tuning or evaluation text.
Of the reserved documents, those in the first 1% of the hash range are the validation set.
Which corpora, and at most how many tokens of each, is a `mix` (`DEFAULT_MIX`), so that the big
ones do not drown the rest; documents of all corpora are interleaved so that any stretch of
`train.bin` or `val.bin` is a mixture.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lora_gpt.cache import cache_dir

from .manifest import MANIFEST, read_manifest, verify, write_json, write_tokens
from .sources import offline
from .tokenize import TextExhausted, TokenizedDocuments, TokenStream

FORMAT_VERSION = 4  # bump when how a corpus is built changes: the corpus is rebuilt
# The default base knows English (all of the English corpora's reserved shares, ~320k tokens) and
# has read some German and Italian (300k tokens of each language's fortunes), but no French, no
# Java and none of the Debian Reference manual in French, German or Italian: like GPT-2 meeting
# the paper's French, German and Italian Wikipedia, it leaves the clients' adapters much to learn.
# Chosen by measurement (docs/data.md, "The offline base model"): adding the three languages' manuals made
# the base better on the clients' text and left the adapters little to learn.
DEFAULT_MIX: dict[str, int] = {
    "english_manual": 600_000,
    "english_manpages": 600_000,
    **{f"fortunes_{topic}": 600_000 for topic in offline.FORTUNE_TOPICS},
    "fortunes_de": 300_000,
    "fortunes_it": 300_000,
}


def _tokenized(texts: list[str], limit: int) -> list[np.ndarray]:
    """Whole documents' tokens, in order, until `limit` tokens (the last one cut to fit)."""
    stream, docs, total = TokenStream(TokenizedDocuments(texts)), [], 0
    while total < limit:
        try:
            doc = stream.next_document()[: limit - total]
        except TextExhausted:
            break
        docs.append(doc)
        total += len(doc)
    return docs


def _interleaved(docs: list[np.ndarray]) -> np.ndarray:
    order = np.random.default_rng(0).permutation(len(docs))
    return np.concatenate([docs[i] for i in order])


def pretraining_corpus(mix: dict[str, int] | None = None, out: Path | None = None, progress: bool = True) -> Path:
    """Folder with `train.bin` / `val.bin` (uint16 GPT-2 tokens) and a manifest, built on first use
    from the pretraining share of the corpora in `mix` (corpus name -> most tokens taken;
    default `DEFAULT_MIX`), under `cache_dir()/pretraining-v.../<key of the mix>` unless `out`."""
    mix = dict(DEFAULT_MIX if mix is None else mix)
    unknown = sorted(set(mix) - set(offline.CORPORA))
    if unknown or not mix or min(mix.values()) < 1:
        raise ValueError(
            f"a pretraining mix maps offline corpora ({', '.join(offline.CORPORA)}) to positive token "
            f"caps; got {mix}" + (f" (unknown: {', '.join(unknown)})" if unknown else "") + "."
        )
    key = hashlib.sha256(json.dumps(mix, sort_keys=True).encode()).hexdigest()[:10]
    folder = (
        Path(out)
        if out is not None
        else (cache_dir() / f"pretraining-v{offline.CORPUS_VERSION}.{FORMAT_VERSION}" / key)
    )
    if (folder / MANIFEST).exists():
        verify(folder, read_manifest(folder), hashes=False)
        return folder
    train, val, sizes = [], [], {}
    for name, cap in tqdm(mix.items(), desc="pretraining corpus", disable=not progress):
        docs = offline.corpus(name)
        reserved = docs if name in offline.PRETRAINING_ONLY else [d for d in docs if offline.for_pretraining(d)]
        held_out = [d for d in reserved if offline.hash_permille(d) < offline.PRETRAIN_VAL_PERMILLE]
        rest = [d for d in reserved if offline.hash_permille(d) >= offline.PRETRAIN_VAL_PERMILLE]
        rest = [rest[i] for i in np.random.default_rng(0).permutation(len(rest))]  # the cap takes a sample
        corpus_train = _tokenized(rest, cap)
        corpus_val = _tokenized(held_out, max(cap // 10, 1))
        sizes[name] = {"train": sum(map(len, corpus_train)), "val": sum(map(len, corpus_val))}
        train += corpus_train
        val += corpus_val
    files = {
        "train.bin": write_tokens(folder / "train.bin", _interleaved(train)),
        "val.bin": write_tokens(folder / "val.bin", _interleaved(val)),
    }
    write_json(
        folder / MANIFEST,
        {
            "share": f"documents whose sha1 falls in the first {offline.PRETRAIN_PERMILLE / 10:g}% of the hash range "
            f"(validation: the first {offline.PRETRAIN_VAL_PERMILLE / 10:g}%), and all of "
            f"{', '.join(sorted(offline.PRETRAINING_ONLY))} (used by no recipe); never given to a client",
            "corpus_version": offline.CORPUS_VERSION,
            "mix": mix,
            "corpora": sizes,
            "files": files,
        },
    )
    return folder
