"""The robust rules a user would pick instead of trust, as baselines on the same adapters: Flower's
own `FedMedian`, `FedTrimmedAvg` and `Krum` (`flwr.server.strategy.aggregate`), one global model for
every client, no personalisation. Each is a trust family so that it runs through the one trust
round of every runtime; its recorded trust is what the rule gives each client: uniform for the
coordinate-wise median and trimmed mean (every client counts in every coordinate, none is
weighted), one-hot on the chosen client for Krum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from flwr.server.strategy.aggregate import aggregate_krum, aggregate_median, aggregate_trimmed_avg

from .families import FixedTrust
from .matrices import finite_clients
from .protocols import Measurements
from .registry import register_family
from .settings import TrustSettings

TRIM_PROPORTION = 0.2  # flwr's FedTrimmedAvg default (beta): this share cut at each end of each coordinate
KRUM_MALICIOUS = 2  # the bad clients Krum allows for (f): the most the attack benchmark runs


def client_arrays(adapters: Mapping[str, torch.Tensor], usable: torch.Tensor) -> list[tuple[list[np.ndarray], int]]:
    """The usable clients' adapters as flwr's aggregate functions take them: (arrays, examples)."""
    names = list(adapters)
    return [([adapters[n][i].detach().cpu().float().numpy() for n in names], 1) for i in usable.nonzero().flatten()]


def _global(adapters: Mapping[str, torch.Tensor], arrays: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """One global adapter (`arrays`, in `adapters`' order) given to every client."""
    return {
        name: torch.from_numpy(np.asarray(arr)).to(a.device, a.dtype).expand_as(a).clone()
        for (name, a), arr in zip(adapters.items(), arrays, strict=True)
    }


class RobustRule(FixedTrust):
    """A Flower robust rule: every usable client counts the same; `aggregate` is the rule's."""

    needs: ClassVar[tuple[str, ...]] = ("adapters",)

    @classmethod
    def from_settings(cls, settings: TrustSettings) -> RobustRule:
        return cls()

    def scores(self, measured: Measurements, pairs: torch.Tensor | None = None) -> torch.Tensor:
        return torch.ones(measured.num_clients, measured.num_clients)

    def rule(self, results: list[tuple[list[np.ndarray], int]]) -> list[np.ndarray]:
        raise NotImplementedError

    def aggregate(
        self, adapters: Mapping[str, torch.Tensor], trust: torch.Tensor, usable: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return _global(adapters, self.rule(client_arrays(adapters, usable)))


@register_family
@dataclass(frozen=True)
class FedMedian(RobustRule):
    """`fedmedian`: every client takes the coordinate-wise median of the adapters (flwr's)."""

    name: ClassVar[str] = "fedmedian"

    def rule(self, results: list[tuple[list[np.ndarray], int]]) -> list[np.ndarray]:
        return aggregate_median(results)


@register_family
@dataclass(frozen=True)
class FedTrimmedAvg(RobustRule):
    """`fedtrimmedavg`: the coordinate-wise mean without the `TRIM_PROPORTION` highest and lowest (flwr's)."""

    name: ClassVar[str] = "fedtrimmedavg"

    def rule(self, results: list[tuple[list[np.ndarray], int]]) -> list[np.ndarray]:
        return aggregate_trimmed_avg(results, TRIM_PROPORTION)


@register_family
@dataclass(frozen=True)
class Krum(FixedTrust):
    """`krum`: every client takes the one adapter closest to its n - f - 2 nearest (flwr's Krum,
    f = `KRUM_MALICIOUS`); its trust is one-hot on the client Krum chose."""

    name: ClassVar[str] = "krum"
    needs: ClassVar[tuple[str, ...]] = ("adapters",)

    @classmethod
    def from_settings(cls, settings: TrustSettings) -> Krum:
        return cls()

    def scores(self, measured: Measurements, pairs: torch.Tensor | None = None) -> torch.Tensor:
        adapters = measured.adapters()
        usable = finite_clients(adapters)
        results = client_arrays(adapters, usable)
        chosen = aggregate_krum(results, KRUM_MALICIOUS, 0)
        index = usable.nonzero().flatten().tolist()
        winner = next(index[i] for i, (arrays, _) in enumerate(results) if arrays is chosen)
        scores = torch.zeros(measured.num_clients, measured.num_clients)
        scores[:, winner] = 1.0
        return scores
