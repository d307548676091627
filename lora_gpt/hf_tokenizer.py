"""GPT-2's tokenizer as Hugging Face's files (`vocab.json`, `merges.txt`, `tokenizer_config.json`),
derived from tiktoken's ranks, so an exported model folder carries its tokenizer and
`transformers.AutoTokenizer.from_pretrained(folder)` works offline.

Byte-level BPE: a token's bytes, each mapped through GPT-2's printable byte table, are its
`vocab.json` key, its rank its id. Every multi-byte token was made by one merge of two tokens of
lower rank; running BPE on its bytes with only the lower ranks allowed ends in exactly that pair,
and `merges.txt` lists the pairs in rank order.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from .config import GPT2_VOCAB_SIZE, GPTConfig
from .tokenizer import EOT_TOKEN, get_tokenizer

EOT_TEXT = "<|endoftext|>"
FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")


@functools.lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's table from a byte to a printable character (`bytes_to_unicode` in its encoder.py):
    printable Latin-1 bytes stand for themselves, the others for code points from 256 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _merge_pair(ranks: dict[bytes, int], token: bytes) -> tuple[bytes, bytes]:
    """The two tokens whose merge made `token`: BPE on its bytes, allowing only lower ranks."""
    parts = [bytes([b]) for b in token]
    limit = ranks[token]
    while len(parts) > 2:
        found = [(ranks.get(a + b, limit), i) for i, (a, b) in enumerate(zip(parts, parts[1:], strict=False))]
        rank, i = min(found)
        if rank >= limit:
            raise ValueError(f"the ranks cannot make {token!r} by merges of lower rank; they are not a BPE.")
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts[0], parts[1]


@functools.lru_cache(maxsize=1)
def vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """GPT-2's `vocab.json` (printable token -> id) and `merges.txt` lines, in rank order."""
    ranks: dict[bytes, int] = get_tokenizer()._mergeable_ranks
    table = byte_to_unicode()

    def printable(token: bytes) -> str:
        return "".join(table[b] for b in token)

    vocab = {printable(token): rank for token, rank in ranks.items()}
    vocab[EOT_TEXT] = EOT_TOKEN
    merges = [
        " ".join(map(printable, _merge_pair(ranks, token)))
        for token, _ in sorted(ranks.items(), key=lambda kv: kv[1])
        if len(token) > 1
    ]
    return vocab, merges


def save_hf_tokenizer(folder: str | Path, config: GPTConfig) -> Path | None:
    """Write GPT-2's tokenizer beside a model of configuration `config` in `folder`, in Hugging
    Face's layout (`FILES`); nothing (None) for a model whose vocabulary is not GPT-2's."""
    if config.vocab_size != GPT2_VOCAB_SIZE:
        return None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    settings = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": config.block_size,
        "bos_token": EOT_TEXT,
        "eos_token": EOT_TEXT,
        "unk_token": EOT_TEXT,
        "add_prefix_space": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2))
    return folder
