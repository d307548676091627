"""Bad clients: what a faulty or malicious client sends, for measuring trust under attack.

A run with `--attack.kind KIND --attack.bad K` adds K bad clients after the dataset's honest ones
(ids H..H+K-1), so the honest clients train on exactly the data, batches and initial adapters of
the same run without them (`none`'s honest clients end bitwise as in the clean run). Bad client b
poses as honest client `poses_as[b]`: it declares that client's category mixture (what `static`
trusts), and trains on a copy of its data, with its own batches (or, for the data-poisoning
attacks, on that data's tokens shuffled, or on another category's data).

What a bad client sends at an aggregation is one function of what it holds (`sent_adapter`): its
trained adapter, the adapter it received at the last aggregation, and a seeded generator. The
batched run applies it to the bad rows of the stacked adapters before the round measures them
(`BatchedAttack`); a Flower run's bad ClientApps apply it to their own adapter, so both runtimes
compute the same attack. `mimicry` also reports, for `dynamic-token`'s scores, the predictions of
the model it trained while it sends noise: a client that supplies the numbers it is scored with
can win an honest group's trust (`--trust.token_source sent` scores the adapter sent instead).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from data.config import DataConfig
from data.datamodule import ClientDataModule
from lora_gpt.errors import ConfigError
from lora_gpt.options import flag_name, option, require, require_choice
from lora_gpt.training import random_windows

# What each attack's bad client sends (`sent_adapter`) or trains on (`AttackedDataModule`).
ATTACKS = {
    "none": "no bad clients",
    "noise": "Gaussian noise, each tensor at --attack.scale x its trained tensor's norm",
    "scaled": "its trained adapter with B x --attack.scale, so its update B A is scaled by it",
    "sign-flip": "its trained adapter with B negated, so its update B A points the other way",
    "free-rider": "back the adapter it received at the last aggregation; it trains nothing of its own",
    "zero": "the zero adapter (no update at all)",
    "shuffled": "its adapter trained on its copied data with each window's tokens shuffled",
    "mislabel": "its adapter trained on another category's data than the one it declares",
    "mimicry": "noise as `noise`, while it reports its trained model's reference predictions (dynamic-token)",
}
DEFAULT_SCALE = {"noise": 5.0, "mimicry": 5.0, "scaled": 10.0}
DATA_ATTACKS = ("shuffled", "mislabel")


@dataclass(frozen=True)
class AttackConfig:
    """The bad clients a run adds after the dataset's honest ones, and what they do."""

    GROUP: ClassVar[str] = "attack"

    kind: str = option(
        "none", "what the bad clients do: " + "; ".join(f"{k}: {v}" for k, v in ATTACKS.items()), choices=ATTACKS
    )
    bad: int = option(1, "how many bad clients join (ids after the honest clients'); read only with --attack.kind")
    poses_as: tuple[int, ...] = option(
        (),
        "the honest client each bad client poses as: it declares that client's mixture and trains on "
        "a copy of its data (default: spread evenly over the honest clients)",
    )
    scale: float | None = option(
        None, "noise and mimicry: the noise's norm in trained norms (default 5); scaled: B's factor (default 10)"
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "poses_as", tuple(int(n) for n in self.poses_as))
        require_choice(self, "kind")
        require(self, "bad", self.bad >= 1, ">= 1", "drop --attack.kind (or --attack.kind none) for a clean run")
        if self.active and self.poses_as and len(self.poses_as) != self.bad:
            raise ConfigError(
                f"{flag_name(self, 'poses_as')} names {len(self.poses_as)} honest clients for "
                f"{flag_name(self, 'bad')} {self.bad} bad ones. Fix: one id per bad client, or drop it."
            )
        if self.scale is not None:
            require(self, "scale", self.scale > 0, "> 0")

    @property
    def active(self) -> bool:
        return self.kind != "none"

    @property
    def count(self) -> int:
        """The bad clients a run adds (0 without an attack)."""
        return self.bad if self.active else 0

    @property
    def factor(self) -> float:
        """The attack's scale, or its default."""
        return self.scale if self.scale is not None else DEFAULT_SCALE.get(self.kind, 1.0)

    def sources(self, honest: int) -> list[int]:
        """The honest client each bad client poses as, among `honest` clients (checked)."""
        if not self.active:
            return []
        sources = list(self.poses_as) or [b * honest // self.bad for b in range(self.bad)]
        wrong = [n for n in sources if not 0 <= n < honest]
        if wrong:
            raise ConfigError(
                f"{flag_name(self, 'poses_as')}: {wrong} are not honest clients; the dataset holds clients "
                f"0..{honest - 1}. Fix: ids below {honest}."
            )
        return sources


def _noise_like(t: torch.Tensor, norm: float, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(t.shape, generator=generator, dtype=torch.float64)
    return (noise * (norm / noise.norm().clamp_min(1e-30))).to(t.dtype)


def sent_adapter(
    attack: AttackConfig,
    trained: Mapping[str, torch.Tensor],
    received: Mapping[str, torch.Tensor],
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """What one bad client sends (one client's tensors by name, `...lora_A`/`...lora_B`), from the
    adapter it `trained` and the one it `received` at the last aggregation."""
    kind, s = attack.kind, attack.factor
    out = {}
    for name, t in trained.items():
        t = t.detach().cpu()
        if kind in ("noise", "mimicry"):
            out[name] = _noise_like(t, s * float(t.double().norm()), generator)
        elif kind == "scaled":
            out[name] = t * s if name.endswith("lora_B") else t.clone()
        elif kind == "sign-flip":
            out[name] = -t if name.endswith("lora_B") else t.clone()
        elif kind == "free-rider":
            out[name] = received[name].detach().cpu().clone()
        elif kind == "zero":
            out[name] = torch.zeros_like(t)
        else:  # none and the data attacks send what they trained
            out[name] = t.clone()
    return out


def attack_generator(seed: int, client: int, step: int) -> torch.Generator:
    """The generator bad client `client` draws its noise from at the aggregation after `step`: the
    same in every runtime."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence((seed, client, step)).generate_state(1)[0]))


class AttackedDataModule(ClientDataModule):
    """The dataset's honest clients, then the bad clients: each declares the mixture of the honest
    client it poses as and reads that client's splits, with batches of its own; `shuffled` shuffles
    each training window's tokens, `mislabel` trains on the first honest client of another category.
    `client=n` is client n's own view (a federated client, honest or bad), as for `ClientDataModule`."""

    def __init__(
        self,
        *,
        folder: str | Path,
        config: DataConfig,
        attack: AttackConfig,
        seed: int = 0,
        accumulate: int = 1,
        client: int | None = None,
    ) -> None:
        super().__init__(folder=folder, config=config, seed=seed, accumulate=accumulate)
        self.attack, self.honest = attack, self.num_clients
        sources = attack.sources(self.honest)
        every = list(range(self.honest + len(sources)))
        if client is not None and client not in every:
            raise ConfigError(
                f"client {client} is not in this run, which holds honest clients 0..{self.honest - 1} and bad "
                f"clients {self.honest}..{len(every) - 1}. Fix: a client id (partition-id) below {len(every)}."
            )
        self.slots = every if client is None else [client]  # the run's ids of this view's clients
        data = list(range(self.honest)) + sources  # whose splits each of the run's clients reads
        categories = self.client_categories + [self.client_categories[n] for n in sources]
        self.train_sources = [self._trains_on(data[n], categories) if n >= self.honest else n for n in self.slots]
        self.clients = [data[n] for n in self.slots]
        self.num_clients = len(self.clients)
        self.mixture = np.asarray(self.manifest["mixture"], dtype=np.float64)[self.clients]
        self.client_categories = [categories[n] for n in self.slots]

    def _trains_on(self, source: int, categories: Sequence[int]) -> int:
        if self.attack.kind != "mislabel":
            return source
        other = [n for n in range(self.honest) if categories[n] != categories[source]]
        if not other:
            raise ConfigError("--attack.kind mislabel needs honest clients of more than one category.")
        return other[0]

    def train_batch(self, t: int) -> torch.Tensor:
        """Micro-batch t: the honest clients' as without the bad ones; each bad client's windows drawn
        with its own id from the split it trains on (shuffled for `shuffled`)."""
        span = self.sequence_length + 1
        rows = []
        for slot, n in zip(self.slots, self.train_sources, strict=True):
            windows = random_windows(self.tokens(n, "train"), self.batch_size, span, (self.seed, slot, t))
            if slot >= self.honest and self.attack.kind == "shuffled":
                windows = np.random.default_rng((self.seed, slot, t, 1)).permuted(windows, axis=1)
            rows.append(windows)
        return torch.from_numpy(np.stack(rows))


@dataclass
class ReportedPredictions:
    """A `CollaborativeModel` whose clients report the reference-text predictions of `reported`
    (the bad clients' trained adapters, the honest clients' own), while it holds what they sent."""

    model: Any  # the CollaborativeModel whose rows hold what the clients sent
    reported: dict[str, torch.Tensor]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def client_logits(
        self, idx: torch.Tensor, positions: slice = slice(None), chunk: int | None = None
    ) -> Iterator[torch.Tensor]:
        with _holding(self.model, self.reported):
            yield from self.model.client_logits(idx, positions, chunk)


@contextmanager
def _holding(model: Any, adapters: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """`model`'s stacked adapters set to `adapters` for the block, then back."""
    params = model.adapters()
    kept = {name: p.detach().clone() for name, p in params.items()}
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(adapters[name])
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(kept[name])


@dataclass
class BatchedAttack:
    """The bad clients of a batched run: before each round their rows of the stacked adapters become
    what they send; after it, what they received is kept (free riders send it back)."""

    attack: AttackConfig
    honest: int
    seed: int = 0
    token_source: str = "reported"
    received: dict[str, torch.Tensor] | None = None  # the bad rows' last received adapters

    def start(self, model: Any) -> None:
        """Before training: what the bad clients hold is what they received (the initial adapters)."""
        if self.received is None:
            self.received = {name: p.detach().cpu()[self.honest :].clone() for name, p in model.adapters().items()}

    def send(self, model: Any, step: int) -> Any:
        """Replace the bad rows of `model`'s adapters with what the bad clients send; returns the
        model the round should measure (reporting the trained predictions, for mimicry)."""
        params = model.adapters()
        trained = {name: p.detach().cpu().clone() for name, p in params.items()}
        if self.received is None:
            raise RuntimeError("BatchedAttack.start(model) keeps the bad clients' initial adapters before training.")
        with torch.no_grad():
            for b in range(trained[next(iter(trained))].shape[0] - self.honest):
                slot = self.honest + b
                sent = sent_adapter(
                    self.attack,
                    {name: t[slot] for name, t in trained.items()},
                    {name: t[b] for name, t in self.received.items()},
                    attack_generator(self.seed, slot, step),
                )
                for name, p in params.items():
                    p[slot].copy_(sent[name].to(p.device, p.dtype))
        if self.attack.kind == "mimicry" and self.token_source == "reported":
            return ReportedPredictions(model, {name: t.to(params[name].device) for name, t in trained.items()})
        return model

    def after(self, adapters: Mapping[str, torch.Tensor]) -> None:
        """Keep what the bad clients received."""
        self.received = {name: a[self.honest :].detach().cpu().clone() for name, a in adapters.items()}


def trust_shares(trust_dir: Path, honest: int) -> list[dict[str, Any]]:
    """Per aggregation recorded in `trust_dir` (a run folder's `trust/`): the mean share of the honest
    clients' trust on bad clients (ids >= `honest`), among the clients of the round."""
    shares = []
    for path in sorted(trust_dir.glob("step_*.json")):
        record = json.loads(path.read_text())
        clients, trust = record["clients"], torch.tensor(record["trust"], dtype=torch.float64)
        rows = [i for i, n in enumerate(clients) if n < honest]
        bad = [j for j, n in enumerate(clients) if n >= honest]
        share = float(trust[rows][:, bad].sum(1).mean()) if rows else 0.0
        shares.append({"step": record["step"], "honest_trust_on_bad": share})
    return shares


def attack_summary(attack: AttackConfig, honest: int, clients: Sequence[Any], trust_dir: Path) -> dict[str, Any]:
    """What a run's summary says of its attack: who was bad, the honest clients' final mean
    metrics, and their trust on bad clients per aggregation (from the run folder's trust records)."""
    present = [c for c in clients[:honest] if c is not None]
    mean = {k: sum(c[k] for c in present) / len(present) for k in present[0]} if present else None
    return {
        "kind": attack.kind,
        "honest": list(range(honest)),
        "bad": list(range(honest, len(clients))),
        "poses_as": attack.sources(honest),
        "scale": attack.factor,
        "honest_final": mean,
        "rounds": trust_shares(trust_dir, honest),
    }
