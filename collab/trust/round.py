"""One trust round, written once for every runtime: check that every adapter is finite, choose the
pairs to score, measure what the family needs, turn scores into trust, average, record.

`TrustRounds` holds what carries from one round to the next (the last trust between every two
clients, the prior of `--trust_peers`; a summary per round) and runs a round on whatever answers
the family's `Measurements`: the batched run in this process (`collab.aggregation`), or a federated
server's messages to its clients (`collab.flower`). A round runs among the clients given to it (all
of them in the batched run; in a federation, those that took part).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .families import TrustFamily, build_family
from .matrices import bound_norms, collapse, finite_clients, trust_quality, usable_clients
from .protocols import Measurements, Part
from .settings import TrustSettings

COLLAPSED_ROUNDS = 3  # consecutive rounds that make a collapse worth saying


@dataclass(frozen=True)
class RoundOutcome:
    """What a round gives the runtime to apply, and what the run folder keeps of it."""

    adapters: dict[str, torch.Tensor]  # `[P, ...]`: each client's new adapter
    trust: torch.Tensor  # `[P, P]`
    usable: torch.Tensor  # `[P]` bool: False = left out of every average and reset, as broken
    record: dict[str, Any]  # the round as `trust/step_NNNNNN.json` holds it


@dataclass(frozen=True)
class PartMeasurements:
    """`measured`, with its losses on the trust split measured on one `part` of the batches only
    (`--trust_parts`); every other measurement as it is."""

    measured: Measurements
    part: Part

    def __getattr__(self, name: str) -> Any:
        return getattr(self.measured, name)

    def pair_losses(self, pairs: torch.Tensor | None = None, part: Part | None = None) -> torch.Tensor:
        return self.measured.pair_losses(pairs, self.part)

    def mixture_losses(self, rows: torch.Tensor, part: Part | None = None) -> torch.Tensor:
        return self.measured.mixture_losses(rows, self.part)


class TrustRounds:
    """A run's trust rounds among `num_clients` clients, with the settings' family."""

    def __init__(self, settings: TrustSettings, num_clients: int, seed: int = 0) -> None:
        self.settings, self.num_clients, self.seed = settings, num_clients, seed
        self.family: TrustFamily = build_family(settings)
        self.prior: torch.Tensor | None = None  # [N, N]: the last trust of i in j (None before the first round)
        self.history: list[dict[str, Any]] = []  # per round: its record without the matrices

    def run(self, step: int, measured: Measurements, clients: Sequence[int] | None = None) -> RoundOutcome:
        """The aggregation after optimizer step `step` among `clients` (ids in the run; None: all),
        whose adapters and measurements `measured` answers in that order."""
        clients = list(range(self.num_clients)) if clients is None else list(clients)
        if measured.num_clients != len(clients):
            raise ValueError(f"{measured.num_clients} clients measured for a round among {len(clients)}.")
        adapters = {name: a.detach() for name, a in measured.adapters().items()}
        finite = finite_clients(adapters)
        index = torch.tensor(clients)
        among = (index[:, None], index[None, :])
        parts = self.settings.parts or self.family.default_parts
        part = (len(self.history) % parts, parts) if parts > 1 else None
        if self.prior is not None and self.family.reuses_prior(len(self.history)):
            pairs, scores, part = None, self.prior[among].clone(), None
        else:
            pairs = self.family.candidates(
                None if self.prior is None else self.prior[among], adapters, (self.seed, step)
            )
            scores = self.family.scores(measured if part is None else PartMeasurements(measured, part), pairs).cpu()
        usable = usable_clients(scores, finite, pairs)
        trust = self.family.to_trust(scores, finite, pairs)
        bound = self.settings.norm_bound
        new = self.family.aggregate(adapters if bound is None else bound_norms(adapters, usable, bound), trust, usable)
        if self.prior is None:
            self.prior = torch.zeros(self.num_clients, self.num_clients)
        self.prior[among] = trust
        record: dict[str, Any] = {
            "step": step,
            "strategy": self.settings.strategy,
            "clients": clients,
            "trust": trust.tolist(),
            "scores": scores.tolist(),
            "excluded": [clients[i] for i in (~usable).nonzero().flatten().tolist()],
            "quality": trust_quality(trust, measured.mixture().float()),
            "collapse": None if self.family.fixed else collapse(trust),
        }
        if pairs is not None:
            record["scored"] = int(pairs.sum())
        if part is not None:
            record["part"] = list(part)
        self.history.append({k: v for k, v in record.items() if k not in ("trust", "scores")})
        return RoundOutcome(new, trust, usable, record)

    def warnings(self) -> list[str]:
        """What the rounds so far say about the strategy: a trust that stayed local training or
        plain averaging for `COLLAPSED_ROUNDS` rounds in a row (or every round of a shorter run)."""
        kinds = [r.get("collapse") for r in self.history]
        need = min(COLLAPSED_ROUNDS, max(len(kinds), 2))
        said = []
        for kind in ("self", "uniform"):
            streak = best = 0
            for k in kinds:
                streak = streak + 1 if k == kind else 0
                best = max(best, streak)
            if best >= need:
                steps = [r["step"] for r in self.history if r.get("collapse") == kind]
                said.append(self.family.collapse_advice(kind, self.settings, steps))
        return said

    def state_dict(self) -> dict[str, Any]:
        return {"prior": None if self.prior is None else self.prior.tolist(), "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        prior = state.get("prior")
        self.prior = None if prior is None else torch.tensor(prior)
        self.history = list(state.get("history", []))
