"""Which clients a forward pass serves, and each client's own dropout stream.

A collaborative batch is `[k, ...]`: slice i belongs to client `start + i` and runs that client's
adapter. In training, every dropout mask of client n is drawn from a generator seeded by
(client n's seed for this micro-step, the dropout site), never from the global generator. So a
client's masks do not depend on which other clients share its pass, on how clients are chunked,
on N, or on a resume: chunked training, resumed training and N separate runs are the same step.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
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
    stream in training; without them dropout draws from torch's global generator. `picked` (see
    `picked_adapters`) runs chosen adapters instead, in any order and with repeats: slice i runs
    adapter `picked[i]`, e.g. to score chosen (data, adapter) pairs in one pass.
    """

    start: int
    stop: int
    dropout_seeds: tuple[int, ...] | None = None
    picked: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop:
            raise ValueError(f"ClientSlice needs 0 <= start < stop, got {self.start}..{self.stop}.")
        if self.picked is not None and (min(self.picked) != self.start or max(self.picked) + 1 != self.stop):
            raise ValueError(f"picked adapters {self.picked} do not span {self.start}..{self.stop - 1}.")
        if self.dropout_seeds is not None and len(self.dropout_seeds) != len(self):
            raise ValueError(f"{len(self.dropout_seeds)} dropout seeds for {len(self)} clients.")

    def __len__(self) -> int:
        return self.stop - self.start if self.picked is None else len(self.picked)

    @property
    def adapters(self) -> slice | list[int]:
        """The index of the adapters these slices run, into the stacked adapter tensors."""
        return slice(self.start, self.stop) if self.picked is None else list(self.picked)

    def site_seeds(self, site: int) -> list[int]:
        """The seeds of this call's clients at one dropout site."""
        assert self.dropout_seeds is not None
        return [mix64(s, site) for s in self.dropout_seeds]


def client_slices(
    num_clients: int, chunk: int | None = None, *, seed: int | None = None, step: int | None = None, first_id: int = 0
) -> Iterator[ClientSlice]:
    """Clients `0..num_clients-1` in passes of at most `chunk` (default: all in one pass). With a
    run's `seed` and a micro-`step`, each client carries its own dropout stream for that step.
    `first_id` is the run's id of adapter 0 (a federated client holds one adapter, client n's),
    so its streams are the ones client n has in the batched run."""
    if (seed is None) != (step is None):
        raise ValueError("client_slices needs both seed and step for dropout streams, or neither.")
    size = chunk or num_clients
    for start in range(0, num_clients, size):
        stop = min(start + size, num_clients)
        ids = range(first_id + start, first_id + stop)
        seeds = client_seeds(seed, ids, step) if seed is not None and step is not None else None
        yield ClientSlice(start, stop, seeds)


def picked_adapters(ids: Sequence[int]) -> ClientSlice:
    """Slice i of the input runs adapter `ids[i]` (any order, repeats allowed; no dropout streams)."""
    if not ids:
        raise ValueError("picked_adapters needs at least one adapter id.")
    return ClientSlice(min(ids), max(ids) + 1, picked=tuple(int(i) for i in ids))


def keep_probability(p: float) -> float:
    """The keep probability the streams really use: 1 - p rounded to a multiple of 1/65536, since
    each element's decision is one 16-bit random number (4 decisions per 64 random bits, ~4x
    cheaper on a CPU than a float per element)."""
    return 1.0 - round(p * 65536) / 65536


def keep_mask(shape: tuple[int, ...], p: float, seeds: list[int], device: torch.device) -> torch.Tensor:
    """`[k, *shape]` bool keep-decisions, slice i drawn from its own seed."""
    numel = 1
    for size in shape:
        numel *= size
    words = torch.empty(len(seeds), (numel + 3) // 4, dtype=torch.int64, device=device)
    generator = torch.Generator(device=device)
    for i, seed in enumerate(seeds):
        generator.manual_seed(seed)
        words[i].random_(-(2**63), 2**63 - 1, generator=generator)
    threshold = round(p * 65536) - 32768  # int16 r >= threshold with probability keep_probability(p)
    return (words.view(torch.int16)[:, :numel] >= threshold).view(len(seeds), *shape)


def zero_dropped(
    x: torch.Tensor, p: float, training: bool, clients: ClientSlice | None, site: int
) -> tuple[torch.Tensor, float]:
    """`(x with its dropped elements zeroed, the factor the kept ones still need)`: dropout without
    its rescaling, so a caller that multiplies anyway (a matmul's alpha) folds the factor in.
    `x` is `[k, ...]`, slice i for client i of `clients` (any shape for one client); masks come
    from the clients' own streams, or from the global generator when there are none."""
    if not training or p == 0.0:
        return x, 1.0
    if clients is None or clients.dropout_seeds is None:
        return torch.nn.functional.dropout(x, p, True), 1.0
    seeds = clients.site_seeds(site)
    per_client = x if x.shape[0] == len(seeds) else x.unsqueeze(0)
    if per_client.shape[0] != len(seeds):
        raise ValueError(f"input has leading dim {x.shape[0]} for {len(seeds)} clients.")
    keep = keep_mask(tuple(per_client.shape[1:]), p, seeds, x.device)
    # `where` keeps only the bool mask for the backward, not a float copy
    return torch.where(keep, per_client, 0.0).view(x.shape), 1.0 / keep_probability(p)


def client_dropout(x: torch.Tensor, p: float, training: bool, clients: ClientSlice | None, site: int) -> torch.Tensor:
    """Dropout of `x` from the clients' own streams (see `zero_dropped`)."""
    dropped, factor = zero_dropped(x, p, training, clients, site)
    return dropped if factor == 1.0 else dropped * factor
