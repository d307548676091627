"""The LightningDataModule over a prepared dataset: `[N, b, T+1]` batches, one slice per client."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from lora_gpt.errors import ConfigError
from lora_gpt.training import random_windows

from .config import DataConfig
from .manifest import client_file, read_manifest, verify
from .split import SPLITS


def window_counts(manifest: dict, config: DataConfig, split: str, num_batches: int | None = None) -> tuple[int, int]:
    """`(asked, used)`: the evaluation windows asked of `split` ("val", "trust" or "ref": `num_batches`,
    default `config.eval_batches`, of `config.batch_size`) and those every client gets. Without
    `config.eval_overlap`, windows do not overlap, so the shortest client's split (or the ref stream)
    caps them; with it, every client gets all it asked for."""
    files = manifest["files"]
    if split == "ref":
        lengths = [files["ref.bin"]["tokens"]]
    else:
        lengths = [files[client_file(n, split)]["tokens"] for n in range(manifest["num_clients"])]
    asked = (num_batches or config.eval_batches) * config.batch_size
    return asked, asked if config.eval_overlap else min(asked, min(lengths) // (config.sequence_length + 1))


class _TrainBatches(IterableDataset):
    """Endless training micro-batches, from micro-batch `start` on."""

    def __init__(self, datamodule: ClientDataModule, start: int) -> None:
        self.datamodule, self.start = datamodule, start

    def __iter__(self) -> Iterator[torch.Tensor]:
        t = self.start
        while True:
            yield self.datamodule.train_batch(t)
            t += 1


class ClientDataModule(L.LightningDataModule):
    """Every client's token streams from a folder made by `data.prepare_recipe`.

    Training micro-batch t of client n is a pure function of (seed, n, t): every trust strategy
    sees the same data for a seed, and a resumed run (the iterator starts at
    `trainer.global_step * accumulate`) continues with exactly the batches it would have seen.
    Evaluation batches are fixed, non-overlapping windows spread over the whole split, so a
    mixed client's are drawn from all of its categories. Token files are memory-mapped and
    opened per access (a long-lived memmap leaks memory), never read whole.

    `client=n` is client n's own view, for a federated client: batches `[1, b, T+1]` of client n's
    files only (and the shared ref stream), the same windows as slice n of the whole view. How many
    evaluation windows every client gets comes from the manifest's token counts, not the files.
    """

    def __init__(
        self, *, folder: str | Path, config: DataConfig, seed: int = 0, accumulate: int = 1, client: int | None = None
    ) -> None:
        super().__init__()
        self.data_dir = Path(folder)
        self.manifest: dict = read_manifest(self.data_dir)
        self.batch_size, self.sequence_length = config.batch_size, config.sequence_length
        self.config, self.seed, self.eval_batches, self.accumulate = config, seed, config.eval_batches, accumulate
        total = self.manifest["num_clients"]
        if client is not None and not 0 <= client < total:
            raise ConfigError(
                f"client {client} is not in {self.data_dir}, which holds clients 0..{total - 1}. Fix: "
                "a client id (partition-id) below the dataset's client count."
            )
        self.clients: list[int] = list(range(total)) if client is None else [client]
        self.num_clients: int = len(self.clients)
        self.categories: list[str] = self.manifest["categories"]
        self.mixture: np.ndarray = np.asarray(self.manifest["mixture"], dtype=np.float64)[self.clients]
        self.client_categories: list[int] = [self.manifest["client_categories"][n] for n in self.clients]
        self._verified = False
        self._check_lengths()

    def _check_lengths(self) -> None:
        span = self.sequence_length + 1
        for n in self.clients:
            for split in SPLITS:
                have = self.manifest["files"][client_file(n, split)]["tokens"]
                if have < span:
                    raise ConfigError(
                        f"client {n}'s {split} split holds {have:,} tokens, fewer than one window of {span:,} "
                        f"(sequence_length + 1) in {self.data_dir}. Fix: --sequence_length {have - 1} or less, "
                        f"or prepare the dataset with a larger --{split}_tokens."
                    )
        have = self.manifest["files"]["ref.bin"]["tokens"]
        if have < span:
            raise ConfigError(
                f"the shared ref stream holds {have:,} tokens, fewer than one window of {span:,} in "
                f"{self.data_dir}. Fix: a shorter --sequence_length, or a larger --ref_tokens."
            )

    def setup(self, stage: str | None = None) -> None:
        """Check every token file this view reads against the manifest's sha256 (once)."""
        if not self._verified:
            mine = {client_file(n, split) for n in self.clients for split in SPLITS} | {"ref.bin"}
            verify(
                self.data_dir,
                {**self.manifest, "files": {k: v for k, v in self.manifest["files"].items() if k in mine}},
            )
            self._verified = True

    def tokens(self, client: int | None, split: str = "train") -> np.memmap:
        """One token file, memory-mapped: a client's split, or the shared ref stream (`client=None`)."""
        rel = "ref.bin" if client is None else client_file(client, split)
        return np.memmap(self.data_dir / rel, dtype=np.uint16, mode="r")

    def train_batch(self, t: int) -> torch.Tensor:
        """Training micro-batch t, `[N, b, T+1]` int64: b random windows of each client's own train split."""
        span = self.sequence_length + 1
        return torch.from_numpy(
            np.stack(
                [
                    random_windows(self.tokens(n, "train"), self.batch_size, span, (self.seed, n, t))
                    for n in self.clients
                ]
            )
        )

    def _windows(self, tokens: np.ndarray, count: int) -> np.ndarray:
        """`count` windows spread evenly from the start to the end of `tokens` (starts at least a
        window apart where `count <= len // span`, overlapping beyond that)."""
        span = self.sequence_length + 1
        starts = np.linspace(0, len(tokens) - span, count).astype(np.int64)
        return np.stack([tokens[s : s + span] for s in starts]).astype(np.int64)

    def _window_count(self, split: str, num_batches: int | None) -> int:
        asked, used = window_counts(self.manifest, self.config, split, num_batches)
        if used < asked:
            warnings.warn(
                f"the {split} split holds {used} non-overlapping windows of {self.sequence_length + 1} tokens "
                f"for some client, fewer than the {asked} asked for; every client gets {used}. Prepare the "
                f"dataset with a larger --{split}_tokens for more, or let them overlap (--data.eval_overlap).",
                stacklevel=3,
            )
        return used

    def _client_batches(self, split: str, num_batches: int | None) -> list[torch.Tensor]:
        streams = [self.tokens(n, split) for n in self.clients]
        count = self._window_count(split, num_batches)
        windows = np.stack([self._windows(s, count) for s in streams])
        return list(torch.from_numpy(windows).split(self.batch_size, dim=1))

    def val_batches(self, num_batches: int | None = None) -> list[torch.Tensor]:
        """`[N, b, T+1]` batches of each client's `val` split: the reported metric."""
        return self._client_batches("val", num_batches)

    def trust_batches(self, num_batches: int | None = None) -> list[torch.Tensor]:
        """`[N, b, T+1]` batches of each client's `trust` split, held apart from `val`, for
        trust scores that must not peek at the reported metric (or, with `--data.trust_split val`,
        of the `val` split, as the reference code scores)."""
        return self._client_batches(self.config.trust_split, num_batches)

    def ref_batches(self, num_batches: int | None = None) -> list[torch.Tensor]:
        """`[b, T+1]` batches of the reference stream shared by all clients, spanning every category."""
        windows = self._windows(self.tokens(None), self._window_count("ref", num_batches))
        return list(torch.from_numpy(windows).split(self.batch_size))

    def train_dataloader(self) -> DataLoader:
        start = self.trainer.global_step * self.accumulate if self.trainer is not None else 0
        return DataLoader(_TrainBatches(self, start), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        # A list of batches is a map-style dataset, though torch annotates DataLoader's dataset as Dataset.
        return DataLoader(self.val_batches(), batch_size=None)  # type: ignore[arg-type]
