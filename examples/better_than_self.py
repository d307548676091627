"""A trust strategy of your own, in one file: `better-than-self`.

Client i trusts peer j only where j's model predicts i's own held-out text (its `trust` split) better
than i's model does, with a softmax over how many nats better (at `--trust_temperature`); its own
model always keeps a share. A peer that does not help gets nothing, however similar it looks.

Run it in the batched run or in a Flower federation, with any option of `collab.fit`:

    python -m collab.fit --trust_plugins examples/better_than_self.py --trust better-than-self
    python -m collab.flower.simulate --trust_plugins examples/better_than_self.py --trust better-than-self

The family says what it needs measured (`needs`: the pair losses; in a federation each client scores
its peers' adapters on its own data, so no data leaves a client) and how measurements become trust;
the trust round (checks, aggregation, records) and both runtimes do the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from collab.trust import Measurements, TrustFamily, TrustSettings, register_family


@register_family
@dataclass(frozen=True)
class BetterThanSelf(TrustFamily):
    """`better-than-self`: softmax of how many nats better each peer's model predicts a client's data
    than the client's own model, over the peers that do better (and the client itself)."""

    name: ClassVar[str] = "better-than-self"
    needs: ClassVar[tuple[str, ...]] = ("pair_losses",)
    temperature: float = 1.0  # nats

    @classmethod
    def from_settings(cls, settings: TrustSettings) -> BetterThanSelf:
        return cls(temperature=settings.temperature)

    def scores(self, measured: Measurements, pairs: torch.Tensor | None = None) -> torch.Tensor:
        losses = measured.pair_losses(pairs)  # [N, N]: client j's model on client i's trust split
        return losses.diagonal()[:, None] - losses  # nats below the client's own loss; 0 on the diagonal

    def weigh(self, scores: torch.Tensor, usable: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
        helps = (scores >= 0) & usable[None, :]  # NaN (unmeasured) compares false: no weight
        return torch.softmax(scores.masked_fill(~helps, float("-inf")) / self.temperature, dim=1)
