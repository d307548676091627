"""A tiny in-memory stand-in for `data.ClientDataModule`, so collaborative training can be tested
on data whose structure is known exactly: clients of category c see a token cycle of period
3 + c, so same-category clients share what they must learn."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from lora_gpt.training import random_windows

VOCAB = 64


def category_stream(category: int, length: int, offset: int) -> np.ndarray:
    period = 3 + category
    return (np.arange(offset, offset + length) % period) * (category + 1) % VOCAB


class _Windows(IterableDataset):
    def __init__(self, module: SyntheticClients, start: int) -> None:
        self.module, self.start = module, start

    def __iter__(self):
        t = self.start
        while True:
            yield self.module.train_batch(t)
            t += 1


class SyntheticClients(L.LightningDataModule):
    def __init__(
        self,
        num_clients: int = 4,
        num_categories: int = 2,
        batch_size: int = 2,
        sequence_length: int = 16,
        seed: int = 0,
        accumulate: int = 1,
    ) -> None:
        super().__init__()
        self.num_clients, self.batch_size, self.T = num_clients, batch_size, sequence_length
        self.seed, self.accumulate = seed, accumulate
        self.client_categories = [n % num_categories for n in range(num_clients)]
        self.categories = [f"cat{c}" for c in range(num_categories)]
        self.mixture = np.eye(num_categories)[self.client_categories]
        self.data_dir = "synthetic"
        self.streams = [category_stream(c, 4096, 97 * n) for n, c in enumerate(self.client_categories)]

    def train_batch(self, t: int) -> torch.Tensor:
        span = self.T + 1
        return torch.from_numpy(
            np.stack(
                [
                    random_windows(self.streams[n], self.batch_size, span, (self.seed, n, t))
                    for n in range(self.num_clients)
                ]
            )
        )

    def train_dataloader(self):
        start = self.trainer.global_step * self.accumulate if self.trainer is not None else 0
        return DataLoader(_Windows(self, start), batch_size=None)

    def fixed_batches(self, tag: int, count: int = 2) -> list[torch.Tensor]:
        return [self.train_batch(10_000 * tag + i) for i in range(count)]

    def val_dataloader(self):
        return DataLoader(self.fixed_batches(1), batch_size=None)

    def trust_batches(self, num_batches=None):
        return self.fixed_batches(2)

    def ref_batches(self, num_batches=None):
        return [b[0] for b in self.fixed_batches(3)]
