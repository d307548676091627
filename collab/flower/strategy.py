"""The federated server's method and per-client state, without Flower: personalised trust aggregation.

`PersonalizedTrust` keeps every client's latest adapter and, at each aggregation step, gives each
participating client its own trust-weighted average, computed by the run's trust family (the objects
`collab.fit` uses: `candidates`, `scores_from_*`, `to_trust`, `aggregate`) from what the clients
measured. Clients absent from a round keep their adapters and are left out of that round's averages:
the method runs on the clients that took part. It keeps each round's summary and the last trust
between every two clients (the next round's prior for `--trust_peers`), saves itself after every
round, and a restarted server goes on from the last saved round.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..run_folder import RunFolderError
from ..trust import (
    AdapterSimilarity,
    FedAvg,
    Local,
    PeerLoss,
    StaticMixture,
    TokenAgreement,
    TrustFamily,
    TrustSettings,
    aggregate,
    build_family,
    finite_clients,
    trust_quality,
    usable_clients,
)

STATE_FILE = "server_state.pt"
Adapter = dict[str, torch.Tensor]


def round_ends(settings: TrustSettings, iterations: int) -> list[int]:
    """The optimizer step each round trains up to: every aggregation step of `collab.fit`, then the
    last step. Round r trains steps `ends[r-1]..ends[r]` (from 0 for the first)."""
    return [s for s in range(1, iterations + 1) if settings.aggregates_at(s) or s == iterations]


@dataclass
class PersonalizedTrust:
    """Every client's latest adapter, which of them the clients already hold, and the trust rounds."""

    settings: TrustSettings
    num_clients: int
    seed: int = 0  # the run's seed: with the step, it fixes the random candidates of `--trust_peers`
    adapters: dict[int, Adapter] = field(default_factory=dict)  # client -> its latest adapter
    held: set[int] = field(default_factory=set)  # clients that hold exactly `adapters[n]`
    reset: set[int] = field(default_factory=set)  # clients to reset their optimizer moments, as broken
    mixture: dict[int, list[float]] = field(default_factory=dict)  # client -> its category shares
    rounds_done: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one summary per aggregation
    prior: torch.Tensor | None = None  # [num_clients, num_clients]: the last trust of i in j (0: none yet)
    traffic: list[dict[str, Any]] = field(default_factory=list)  # one row per message
    train_loss: list[dict[str, Any]] = field(default_factory=list)  # one row per client and round

    @property
    def family(self) -> TrustFamily:
        return build_family(self.settings)

    def measures(self) -> str:
        """What the clients must measure for an aggregation: `adapters` (nothing more), `peer_losses`
        (dynamic-ref: each client scores its peers' adapters) or `ref_predictions` (dynamic-token)."""
        family = self.family
        return (
            "peer_losses"
            if isinstance(family, PeerLoss)
            else "ref_predictions"
            if isinstance(family, TokenAgreement)
            else "adapters"
        )

    def owed(self, client: int) -> Adapter | None:
        """The adapter to send `client` with its next message: its average, if it does not hold it yet."""
        return None if client in self.held else self.adapters.get(client)

    def received(self, client: int, adapter: Mapping[str, torch.Tensor]) -> None:
        """`client` trained and sent its adapter."""
        self.adapters[client] = {k: v.detach().float().cpu() for k, v in adapter.items()}
        self.held.add(client)
        self.reset.discard(client)

    def rejoined(self, client: int) -> None:
        """`client` came back without its state (a new process): it holds nothing of ours."""
        self.held.discard(client)

    def candidates(self, step: int, present: Sequence[int]) -> torch.Tensor | None:
        """`[P, P]` bool: the pairs of present clients to measure at aggregation step `step` (None:
        all), as `collab.fit` picks them: from the last trust among them, or their adapters."""
        present = list(present)
        prior = self.prior[present][:, present] if self.prior is not None else None
        return self.family.candidates(prior, self.stacked(present), (self.seed, step))

    def scores(
        self, present: Sequence[int], measured: torch.Tensor | None, pairs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`[P, P]` scores of the present clients, from the family's pure step on what was measured
        (`measured`: dynamic-ref's peer losses, dynamic-token's mean distances, at `pairs`)."""
        family = self.family
        if isinstance(family, (Local, FedAvg)):
            return family.scores_from_count(len(present))
        if isinstance(family, StaticMixture):
            return family.scores_from_mixture(torch.tensor([self.mixture[n] for n in present], dtype=torch.float64))
        if isinstance(family, AdapterSimilarity):
            return family.scores_from_adapters(self.stacked(present))
        if isinstance(family, (PeerLoss, TokenAgreement)):
            if measured is None:
                raise ValueError(f"{family.name} scores what the clients measured (`measures`); nothing was given.")
            if isinstance(family, PeerLoss):
                return family.scores_from_losses(measured)
            return family.scores_from_distances(measured, pairs)
        raise TypeError(
            f"no federated measurement for trust family {family.name}; add it to "
            "PersonalizedTrust.scores and PersonalizedTrust.measures."
        )

    def stacked(self, clients: Sequence[int]) -> Adapter:
        """`[len(clients), ...]` adapters, as the batched run stacks them."""
        return {name: torch.stack([self.adapters[n][name] for n in clients]) for name in self.adapters[clients[0]]}

    def aggregate(
        self, step: int, present: Sequence[int], measured: torch.Tensor | None = None, pairs: torch.Tensor | None = None
    ) -> dict[str, Any]:
        """Aggregation after optimizer step `step` among the `present` clients, from what was
        measured at `pairs` (None: all), as `collab.fit`'s `TrustAggregation.aggregate_clients`
        does it; returns its record."""
        present = list(present)
        stacked = self.stacked(present)
        finite = finite_clients(stacked)
        scores = self.scores(present, measured, pairs).cpu()
        usable = usable_clients(scores, finite, pairs)
        trust = self.family.to_trust(scores, finite, pairs)
        if self.prior is None:
            self.prior = torch.zeros(self.num_clients, self.num_clients)
        index = torch.tensor(present)
        self.prior[index[:, None], index[None, :]] = trust
        new = aggregate(stacked, trust, usable)
        for i, n in enumerate(present):
            if not torch.equal(trust[i], torch.eye(len(present))[i]) or not usable[i]:
                self.adapters[n] = {name: t[i].clone() for name, t in new.items()}
                self.held.discard(n)
            if not usable[i]:
                self.reset.add(n)
        record: dict[str, Any] = {
            "step": step,
            "strategy": self.settings.strategy,
            "clients": present,
            "trust": trust.tolist(),
            "scores": scores.tolist(),
            "excluded": [present[i] for i in (~usable).nonzero().flatten().tolist()],
        }
        if pairs is not None:
            record["scored"] = int(pairs.sum())
        if all(n in self.mixture for n in present):
            mixture = torch.tensor([self.mixture[n] for n in present], dtype=torch.float32)
            record["quality"] = trust_quality(trust, mixture)
        self.history.append({k: v for k, v in record.items() if k not in ("trust", "scores")})
        return record

    def state_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.settings.strategy,
            "num_clients": self.num_clients,
            "adapters": self.adapters,
            "held": sorted(self.held),
            "reset": sorted(self.reset),
            "mixture": self.mixture,
            "rounds_done": self.rounds_done,
            "history": self.history,
            "prior": self.prior,
            "traffic": self.traffic,
            "train_loss": self.train_loss,
        }

    def save(self, folder: Path) -> None:
        """Write the state atomically into the run folder (a crash leaves the previous round's)."""
        path = Path(folder) / STATE_FILE
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    @classmethod
    def resume(cls, folder: Path, settings: TrustSettings, num_clients: int, seed: int = 0) -> PersonalizedTrust:
        """The state saved in `folder` after its last round, or a fresh one; a state saved by a run
        with another strategy or client count is refused."""
        path = Path(folder) / STATE_FILE
        if not path.exists():
            return cls(settings, num_clients, seed)
        saved = torch.load(path, weights_only=False)
        if (saved["strategy"], saved["num_clients"]) != (settings.strategy, num_clients):
            raise RunFolderError(
                f"{path} belongs to a run of {saved['strategy']} with {saved['num_clients']} clients, "
                f"not {settings.strategy} with {num_clients}. Fix: another run folder, or delete it."
            )
        return cls(
            settings,
            num_clients,
            seed,
            saved["adapters"],
            set(saved["held"]),
            set(saved["reset"]),
            saved["mixture"],
            saved["rounds_done"],
            saved["history"],
            saved.get("prior"),
            saved["traffic"],
            saved["train_loss"],
        )
