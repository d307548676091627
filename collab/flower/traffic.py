"""`python -m collab.flower.traffic`: what one client sends and receives in an aggregation round, for
every strategy, counted on the very records the app sends (`collab.flower.records`), at any model
shape: no training and no weights, only the adapters' shapes (a model built on the meta device).

It takes `collab.fit`'s options (`--profile paper`, `--num_clients 8`, `--lora_rank 4`, ...) and
`--model` (a GPT-2 preset: the shape, not weights). A round after the first: the client gets its own
average (nothing under `none`, which averages nothing) and sends its adapter and `--trust_freq` step
losses; dynamic-ref adds its peers' adapters down (its `--trust_peers` candidates only, where set)
and one loss per scored client up; dynamic-token its top token ids at every reference position up,
their union down, and its predictions on the union up. The union holds between k (every client
agrees) and N*k ids (none does) per position: the table counts N*k, an upper bound. The bytes come
from running one trust round whose measurements go to clients that answer with zeros of the right
shapes (`DryClients`), so every strategy, a user's own included, is counted by what it asks; the same
protocol is what the run summaries measure (tests/test_flower.py).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from flwr.app import RecordDict

from lora_gpt import GPT, GPTConfig, inject_lora, lora_parameters
from lora_gpt.cli import Command, fail
from lora_gpt.config import PRESETS
from lora_gpt.errors import FixableError
from lora_gpt.options import option, require_choice

from ..cli import command_with_fit_options, fit_part
from ..config import FitConfig
from ..trust import TokenMeasure, TrustRounds
from . import records
from .measure import FederatedMeasurements

Traffic = dict[str, tuple[int, int]]  # message kind -> (down, up) bytes


def zero_adapter(model: GPTConfig, config: FitConfig) -> dict[str, torch.Tensor]:
    """A client's adapter of the right shapes (zeros: the bytes do not depend on the values)."""
    with torch.device("meta"):
        net = inject_lora(GPT(model), replace(config.lora, init_seed=0), num_adapters=1)
    return {name: torch.zeros(p.shape[1:]) for name, p in lora_parameters(net).items()}


@dataclass
class DryClients:
    """Clients that answer every measurement request with zeros of the shapes real clients send (their
    top token ids all different, so that the union is the widest, N * k), counting one client's bytes."""

    config: FitConfig
    client: int = 1
    traffic: Traffic = field(default_factory=dict)

    def sequences(self, measure: TokenMeasure) -> tuple[int, int]:
        """(reference sequences, positions per sequence) a client predicts on with `measure`."""
        data = self.config.data
        positions = len(range(data.sequence_length)[measure.positions])
        return (measure.num_batches or data.eval_batches) * data.batch_size, positions

    def answer(self, n: int, kind: str, content: RecordDict) -> RecordDict:
        if kind == "query.peer_losses":
            return records.losses_reply(torch.zeros(len(records.peer_losses_request(content)[1])))
        measure = records.measure(content)
        sequences, positions = self.sequences(measure)
        if kind == "query.ref_top":
            ids = torch.arange(n * measure.top_k, (n + 1) * measure.top_k, dtype=torch.int32)
            return records.ref_reply(records.IDS, [ids.expand(positions, -1)] * sequences)
        union = records.sequences(content, records.IDS)
        return records.ref_reply(records.VALUES, [torch.zeros(u.shape) for u in union])

    def exchange(self, contents: Mapping[int, RecordDict], kind: str) -> dict[int, RecordDict]:
        replies = {n: self.answer(n, kind, c) for n, c in contents.items()}
        self.traffic[kind] = (records.content_bytes(contents[self.client]), records.content_bytes(replies[self.client]))
        return replies


def round_traffic(config: FitConfig, model: GPTConfig, num_clients: int) -> Traffic:
    """Bytes of one client's messages in an aggregation round after the first, by message kind: what
    the trust family's measurements ask of the clients (`collab.flower.measure`), answered by
    `DryClients`."""
    settings, adapter = config.trust, zero_adapter(model, config)
    owed = None if settings.family == "none" else adapter
    losses = [0.0] * settings.trust_freq
    dry = DryClients(config)
    dry.traffic["train"] = (
        records.content_bytes(records.train_content(0, settings.trust_freq, owed, False)),
        records.content_bytes(records.train_reply(adapter, 0, losses)),
    )
    clients = list(range(num_clients))
    measured = FederatedMeasurements(
        clients, dict.fromkeys(clients, adapter), dict.fromkeys(clients, [1.0]), dry.exchange
    )
    TrustRounds(settings, num_clients, config.run.seed).run(settings.trust_freq, measured)
    return dry.traffic


STRATEGY_ROWS: dict[str, dict[str, Any]] = {  # table row -> trust options
    "none": {"strategy": "none"},
    "naive": {"strategy": "naive"},
    "static": {"strategy": "static"},
    "dynamic": {"strategy": "dynamic"},
    "dynamic-ref": {"strategy": "dynamic-ref"},
    "dynamic-token (top-probs)": {"strategy": "dynamic-token"},
    "dynamic-token (reference-logits)": {"strategy": "dynamic-token", "token_distance": "reference-logits"},
}


def table(config: FitConfig, model: GPTConfig, num_clients: int) -> str:
    """Markdown: per strategy, a client's bytes down and up per aggregation round, and by which messages."""
    rows = ["| strategy | down per client per round | up per client per round | messages |", "|---|---|---|---|"]
    for name, options in STRATEGY_ROWS.items():
        traffic = round_traffic(replace(config, trust=replace(config.trust, **options)), model, num_clients)
        down, up = (sum(t[i] for t in traffic.values()) for i in (0, 1))
        kinds = ", ".join(f"{k} ({records.megabytes(d)} / {records.megabytes(u)})" for k, (d, u) in traffic.items())
        rows.append(f"| {name} | {records.megabytes(down)} | {records.megabytes(up)} | {kinds} |")
    return "\n".join(rows)


@dataclass(frozen=True)
class TrafficConfig:
    """The model whose adapters' shapes are counted."""

    GROUP: ClassVar[str] = "traffic"

    model: str = option("gpt2", "the GPT-2 shape (gpt2: 124M); its shape only, no weights", choices=PRESETS)

    def __post_init__(self) -> None:
        require_choice(self, "model")


def command() -> Command[tuple[FitConfig, TrafficConfig]]:
    """`collab.fit`'s command with the model shape."""
    return command_with_fit_options(
        "python -m collab.flower.traffic",
        __doc__,
        lambda groups: (fit_part(groups), groups["traffic"]),
        [TrafficConfig],
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config, traffic = command().parse(argv)
    except FixableError as err:
        fail(err)
    model = GPTConfig.from_name(traffic.model)
    clients = config.data.num_clients or 8
    lora = config.lora
    print(
        f"{clients} clients, {args_summary(model, config)}, LoRA r={lora.rank} on {', '.join(lora.targets)}; "
        f"reference text: {config.data.eval_batches} x {config.data.batch_size} sequences of "
        f"{config.data.sequence_length} tokens\n"
    )
    print(table(config, model, clients))
    return 0


def args_summary(model: GPTConfig, config: FitConfig) -> str:
    params = sum(t.numel() for t in zero_adapter(model, config).values())
    return f"GPT-2 shape {model.n_layer} layers x {model.n_embd} ({params:,} adapter parameters per client)"


if __name__ == "__main__":
    sys.exit(main())
