"""Which clients a forward pass serves, and each client's own dropout stream.

A collaborative batch is `[k, ...]`: slice i belongs to client `start + i` and runs that client's
adapter. In training, every dropout mask of client n is drawn from a generator seeded by
(client n's seed for this micro-step, the dropout site), never from the global generator. So a
client's masks do not depend on which other clients share its pass, on how clients are chunked,
on N, or on a resume: chunked training, resumed training and N separate runs are the same step.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

_MASK64 = (1 << 64) - 1


def mix64(*values: int) -> int:
    """A 63-bit hash of integers (splitmix64 finaliser, chained): seeds that differ in any input
    are unrelated, and the same inputs give the same seed on every machine."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (value & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & _MASK64
        state ^= state >> 29
    return state >> 1


def site_id(name: str) -> int:
    """A dropout site's fixed number, from its module name (stable across runs and injections)."""
    return zlib.crc32(name.encode())


def client_seeds(seed: int, clients: range, step: int) -> tuple[int, ...]:
    """Each client's dropout seed for one micro-step of a run seeded `seed`."""
    return tuple(mix64(seed, n, step) for n in clients)


@dataclass(frozen=True)
class ClientSlice:
    """Clients `start..stop-1` run on the input's leading slices, one slice each.

    `dropout_seeds` (one per client, from `client_seeds`) give each client its own dropout
    stream in training; without them dropout draws from torch's global generator.
    """

    start: int
    stop: int
    dropout_seeds: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop:
            raise ValueError(f"ClientSlice needs 0 <= start < stop, got {self.start}..{self.stop}.")
        if self.dropout_seeds is not None and len(self.dropout_seeds) != len(self):
            raise ValueError(f"{len(self.dropout_seeds)} dropout seeds for {len(self)} clients.")

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def adapters(self) -> slice:
        return slice(self.start, self.stop)

    def site_seeds(self, site: int) -> list[int]:
        """The seeds of this call's clients at one dropout site."""
        assert self.dropout_seeds is not None
        return [mix64(s, site) for s in self.dropout_seeds]


def keep_mask(shape: tuple[int, ...], p: float, seeds: list[int], device: torch.device,
              dtype: torch.dtype) -> torch.Tensor:
    """`[k, *shape]` dropout multipliers (0 or 1/(1-p)): slice i drawn from its own seed."""
    mask = torch.empty(len(seeds), *shape, device=device, dtype=dtype)
    generator = torch.Generator(device=device)
    for i, seed in enumerate(seeds):
        generator.manual_seed(seed)
        mask[i].bernoulli_(1.0 - p, generator=generator)
    return mask.div_(1.0 - p)


def client_dropout(x: torch.Tensor, p: float, training: bool, clients: ClientSlice | None,
                   site: int) -> torch.Tensor:
    """Dropout of `x` (`[k, ...]`, slice i for client i of `clients`; any shape for one client)
    from the clients' own streams, or from the global generator when there are none."""
    if not training or p == 0.0:
        return x
    if clients is None or clients.dropout_seeds is None:
        return torch.nn.functional.dropout(x, p, True)
    seeds = clients.site_seeds(site)
    per_client = x if x.shape[0] == len(seeds) else x.unsqueeze(0)
    if per_client.shape[0] != len(seeds):
        raise ValueError(f"input has leading dim {x.shape[0]} for {len(seeds)} clients.")
    mask = keep_mask(tuple(per_client.shape[1:]), p, seeds, x.device, x.dtype)
    return (per_client * mask).view(x.shape)
