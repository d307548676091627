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


class TokenizedDocuments:
    """One category's documents as token arrays (each ending in EOT), in the given order,
    tokenized on first access and kept."""

    def __init__(self, documents: Iterable[str], threads: int | None = None) -> None:
        self._documents: Iterator[str] = iter(documents)
        self._tokens: list[np.ndarray] = []
        self._threads = threads or min(8, os.cpu_count() or 1)

    def __getitem__(self, i: int) -> np.ndarray:
        """Document i's tokens; `TextExhausted` past the last document."""
        while i >= len(self._tokens):
            batch = list(islice(self._documents, BATCH_DOCUMENTS))
            if not batch:
                raise TextExhausted
            for ids in get_tokenizer().encode_ordinary_batch(batch, num_threads=self._threads):
                if ids:
                    self._tokens.append(np.array(ids + [EOT_TOKEN], dtype=np.uint16))
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

    def take(self, size: int) -> np.ndarray:
        """Exactly `size` tokens of whole documents; the last one is cut to fit and its rest is
        dropped, so no document is ever shared between two pieces."""
        pieces, missing = [], size
        while missing > 0:
            piece = self.next_document()[:missing]
            pieces.append(piece)
            missing -= len(piece)
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint16)
