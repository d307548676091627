"""GPT-2 tokens of a category's documents, produced lazily: documents are tokenized a batch at a
time with tiktoken's threaded batch encoder, only as far as the splits need them, so a large
or streamed source costs what is used, not what exists."""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import islice

import numpy as np

from lora_gpt.tokenizer import EOT_TOKEN, get_tokenizer

BATCH_DOCUMENTS = 256


class TextExhausted(Exception):
    """A category ran out of documents before its splits were filled."""


class TokenStream:
    """One category's documents as token arrays (each ending in EOT), in the given order."""

    def __init__(self, documents: Iterable[str], threads: int | None = None) -> None:
        self._documents: Iterator[str] = iter(documents)
        self._ready: deque[np.ndarray] = deque()
        self._threads = threads or min(8, os.cpu_count() or 1)
        self.documents_used = 0

    def next_document(self) -> np.ndarray:
        """The next document's tokens; `TextExhausted` at the end."""
        while not self._ready:
            batch = list(islice(self._documents, BATCH_DOCUMENTS))
            if not batch:
                raise TextExhausted
            for ids in get_tokenizer().encode_ordinary_batch(batch, num_threads=self._threads):
                if ids:
                    self._ready.append(np.array(ids + [EOT_TOKEN], dtype=np.uint16))
        self.documents_used += 1
        return self._ready.popleft()

    def take(self, size: int) -> np.ndarray:
        """Exactly `size` tokens of whole documents; the last one is cut to fit and its rest is
        dropped, so no document is ever shared between two pieces."""
        pieces, missing = [], size
        while missing > 0:
            piece = self.next_document()[:missing]
            pieces.append(piece)
            missing -= len(piece)
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint16)
