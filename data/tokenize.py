"""GPT-2 tokens of a category's documents, produced lazily: documents are tokenized a batch at a
time with tiktoken's threaded batch encoder, only as far as the splits need them, so a large
or streamed source costs what is used, not what exists. Tokenized documents are kept, so
dealing them out again (to find budgets that fit, see `split.fitted_budget`) tokenizes nothing."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from itertools import islice

import numpy as np

from lora_gpt.tokenizer import EOT_TOKEN, get_tokenizer

BATCH_DOCUMENTS = 256


class TextExhausted(Exception):
    """A category ran out of documents before its splits were filled."""


# What separates documents in a token stream: GPT-2's end-of-text token after each ("eot"), or a
# space before each ("space": the reference code's `' '.join(documents)`, tokenized whole; GPT-2's
# pre-tokenizer splits at the space, so each document tokenized after its space gives the same tokens).
SEPARATORS = ("eot", "space")


class TokenizedDocuments:
    """One category's documents as token arrays (each ending in EOT, or each after a space: `separator`),
    in the given order, tokenized on first access and kept."""

    def __init__(self, documents: Iterable[str], threads: int | None = None, separator: str = "eot") -> None:
        if separator not in SEPARATORS:
            raise ValueError(f"unknown separator {separator!r}; use one of {', '.join(SEPARATORS)}.")
        self._documents: Iterator[str] = iter(documents)
        self._tokens: list[np.ndarray] = []
        self._threads = threads or min(8, os.cpu_count() or 1)
        self._space = separator == "space"

    def __getitem__(self, i: int) -> np.ndarray:
        """Document i's tokens; `TextExhausted` past the last document."""
        while i >= len(self._tokens):
            batch = list(islice(self._documents, BATCH_DOCUMENTS))
            if not batch:
                raise TextExhausted
            texts = [f" {d}" if self._space and d else d for d in batch]
            for ids in get_tokenizer().encode_ordinary_batch(texts, num_threads=self._threads):
                if ids:
                    self._tokens.append(np.array(ids if self._space else ids + [EOT_TOKEN], dtype=np.uint16))
        return self._tokens[i]

    def tokenized(self) -> tuple[int, int]:
        """(documents, tokens) tokenized so far: all of them once the text is exhausted."""
        return len(self._tokens), sum(map(len, self._tokens))


class TokenStream:
    """A reading position in a category's documents: hands them out whole, in order."""

    def __init__(self, documents: TokenizedDocuments) -> None:
        self.documents = documents
        self.documents_used = 0

    def next_document(self) -> np.ndarray:
        """The next document's tokens; `TextExhausted` at the end."""
        tokens = self.documents[self.documents_used]
        self.documents_used += 1
        return tokens

    def rest(self) -> list[np.ndarray]:
        """Every document not handed out yet, whole (the stream is read to its end)."""
        documents = []
        try:
            while True:
                documents.append(self.next_document())
        except TextExhausted:
            return documents

    def take(self, size: int) -> np.ndarray:
        """Exactly `size` tokens of whole documents; the last one is cut to fit and its rest is
        dropped, so no document is ever shared between two pieces."""
        pieces, missing = [], size
        while missing > 0:
            piece = self.next_document()[:missing]
            pieces.append(piece)
            missing -= len(piece)
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint16)
