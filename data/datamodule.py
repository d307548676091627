"""The LightningDataModule over a prepared dataset: `[N, b, T+1]` batches, one slice per client."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from .manifest import read_manifest, verify


class _TrainWindows(IterableDataset):
    """Endless training micro-batches from micro-batch `start` on (see `ClientDataModule.train_batch`)."""

    def __init__(self, datamodule: "ClientDataModule", start: int) -> None:
        self.datamodule, self.start = datamodule, start

    def __iter__(self):
        t = self.start
        while True:
            yield self.datamodule.train_batch(t)
            t += 1


class ClientDataModule(L.LightningDataModule):
    """Per-client token streams of a folder made by `data.prepare_recipe`.

    Training micro-batch t of client n depends only on (seed, n, t): every strategy sees the
    same batches for a seed, and a resumed run continues with exactly the batches it would have
    seen. Files are memory-mapped, never read whole.
    """

    def __init__(self, data_dir: str | Path, batch_size: int, sequence_length: int, seed: int = 0,
                 eval_batches: int = 4, accumulate: int = 1, verify_hashes: bool = True) -> None:
        super().__init__()
        if batch_size < 1 or sequence_length < 1 or eval_batches < 1 or accumulate < 1:
            raise ValueError("batch_size, sequence_length, eval_batches and accumulate must all be >= 1.")
        self.data_dir = Path(data_dir)
        self.manifest = read_manifest(self.data_dir)
        self.batch_size, self.sequence_length = batch_size, sequence_length
        self.seed, self.eval_batches, self.accumulate = seed, eval_batches, accumulate
        self.num_clients: int = self.manifest["num_clients"]
        self.categories: list[str] = self.manifest["categories"]
        self.mixture = np.asarray(self.manifest["mixture"], dtype=np.float64)
        self.client_categories: list[int] = self.manifest["client_categories"]
        self.verify_hashes = verify_hashes
        self._verified = False
        self._check_lengths()

    def _check_lengths(self) -> None:
        span = self.sequence_length + 1
        for rel, entry in self.manifest["files"].items():
            if entry["tokens"] < span:
                raise ValueError(f"{self.data_dir / rel} holds {entry['tokens']:,} tokens, fewer than one window of "
                                 f"{span} (sequence_length + 1); use a shorter --sequence_length or prepare the "
                                 "dataset with larger budgets.")

    def setup(self, stage: str | None = None) -> None:
        if self.verify_hashes and not self._verified:
            verify(self.data_dir, self.manifest, full=True)
            self._verified = True

    def tokens(self, client: int | None, split: str) -> np.memmap:
        rel = "ref.bin" if client is None else f"client_{client:02d}/{split}.bin"
        return np.memmap(self.data_dir / rel, dtype=np.uint16, mode="r")

    def train_batch(self, t: int) -> torch.Tensor:
        """Micro-batch t: `[N, b, T+1]`, b random windows of each client's own train split."""
        span = self.sequence_length + 1
        out = np.empty((self.num_clients, self.batch_size, span), dtype=np.int64)
        for n in range(self.num_clients):
            tokens = self.tokens(n, "train")
            starts = np.random.default_rng([self.seed, n, t]).integers(0, len(tokens) - span + 1, self.batch_size)
            for i, s in enumerate(starts):
                out[n, i] = tokens[s:s + span]
        return torch.from_numpy(out)

    def _spread_windows(self, tokens: np.ndarray, count: int) -> np.ndarray:
        """`count` non-overlapping windows spread evenly over the whole stream, so a mixed
        client's evaluation covers both of its categories."""
        span = self.sequence_length + 1
        count = max(1, min(count, len(tokens) // span))
        starts = np.linspace(0, len(tokens) - span, count).astype(np.int64)
        return np.stack([tokens[s:s + span] for s in starts]).astype(np.int64)

    def _fixed_batches(self, split: str, num_batches: int) -> list[torch.Tensor]:
        span = self.sequence_length + 1
        per_client = min(num_batches * self.batch_size,
                         min(len(self.tokens(n, split)) // span for n in range(self.num_clients)))
        windows = np.stack([self._spread_windows(self.tokens(n, split), per_client) for n in range(self.num_clients)])
        return list(torch.from_numpy(windows).split(self.batch_size, dim=1))

    def train_dataloader(self) -> DataLoader:
        start = self.trainer.global_step * self.accumulate if self.trainer is not None else 0
        return DataLoader(_TrainWindows(self, start), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._fixed_batches("val", self.eval_batches), batch_size=None)

    def trust_batches(self, num_batches: int | None = None) -> list[torch.Tensor]:
        """`[N, b, T+1]` batches of each client's `trust` split (held apart from `val`)."""
        return self._fixed_batches("trust", num_batches or self.eval_batches)

    def ref_batches(self, num_batches: int | None = None) -> list[torch.Tensor]:
        """`[b, T+1]` batches of the shared reference stream."""
        windows = self._spread_windows(self.tokens(None, "ref"), (num_batches or self.eval_batches) * self.batch_size)
        return list(torch.from_numpy(windows).split(self.batch_size))


