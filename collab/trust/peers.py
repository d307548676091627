"""Bounded-cost trust scoring: each client scores m candidate peers per aggregation, not all N.

`dynamic-ref` evaluates every client's model on every client's data (N² evaluations) and
`dynamic-token` forms N² distances, so with hundreds of clients scoring every pair costs more than
training. `PeerSampling` picks, for each client, itself plus `peers` candidates: the
`peers - explore` best by a cheap prior (the previous aggregation's trust row, or before the first
one the similarity of the adapters) and `explore` drawn at random from the rest, so a good peer
that the prior missed can still be found and kept. Peers left unscored get no weight, so an
aggregation costs N * (m + 1) scores. The choice is a pure function of (prior, seed), so the
simulation and a federated server pick the same candidates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from lora_gpt.clients import mix64
from lora_gpt.errors import ConfigError

from .scores import row_cosine


@dataclass(frozen=True)
class PeerSampling:
    """Score `peers` candidate peers of each client per aggregation (0: every peer), `explore` of
    them drawn at random, the rest the best of the prior."""

    peers: int = 0
    explore: int = 2

    def __post_init__(self) -> None:
        if self.peers < 0:
            raise ConfigError(f"--trust_peers must be >= 0 (0: score every peer), got {self.peers}.")
        if self.explore < 0:
            raise ConfigError(f"--trust_explore must be >= 0, got {self.explore}.")
        if self.peers and self.explore > self.peers:
            raise ConfigError(
                f"--trust_explore {self.explore} exceeds --trust_peers {self.peers}: the random peers "
                f"are part of the {self.peers} scored. Fix: --trust_explore {self.peers} or less."
            )

    def bounded(self, num_clients: int) -> bool:
        """Whether fewer than all pairs are scored among `num_clients` clients (m >= N-1 is every pair)."""
        return 0 < self.peers < num_clients - 1

    def candidates(
        self, prior: torch.Tensor | None, adapters: Mapping[str, torch.Tensor], seed: Sequence[int]
    ) -> torch.Tensor | None:
        """The pairs to score (None: every pair), ranked by the previous trust `prior`, or before the
        first aggregation by how alike the adapters are (cheap: no model is evaluated)."""
        n = next(iter(adapters.values())).shape[0]
        if not self.bounded(n):
            return None
        return self.choose(prior if prior is not None else row_cosine(adapters, dim=-2), seed)

    def choose(self, prior: torch.Tensor, seed: Sequence[int]) -> torch.Tensor | None:
        """`[N, N]` bool: the pairs (i, j) to score, each client itself and `peers` others; None
        where every pair is scored. `prior` `[N, N]` ranks the candidates (higher first, ties in
        random order); `seed` (e.g. run seed and step) fixes the random draws."""
        n = prior.shape[0]
        if not self.bounded(n):
            return None
        generator = torch.Generator().manual_seed(mix64(*seed))
        prior = prior.detach().double().cpu().nan_to_num(nan=float("-inf"))
        best = self.peers - self.explore
        chosen = torch.eye(n, dtype=torch.bool)
        for i in range(n):
            others = torch.randperm(n, generator=generator)
            others = others[others != i]  # a random order, so that ties fall at random
            ranked = others[torch.argsort(prior[i, others], descending=True, stable=True)]
            rest = ranked[best:]
            chosen[i, ranked[:best]] = True
            chosen[i, rest[torch.randperm(len(rest), generator=generator)[: self.explore]]] = True
        return chosen
