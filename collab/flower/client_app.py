"""The Flower `ClientApp`: one client, its own data and adapter, doing what the server asks.

Flower re-creates the app for every message, so the client's training state (a Lightning checkpoint
of its adapter, AdamW moments and schedule position, `collab.flower.local`) lives in `Context.state`
between messages, the last two rounds' of it, keyed by step. It is also written to a folder of the
client's own (`state-dir` in the node config, else `clients/client_NN` in the run folder), so a
SuperNode that was killed and restarted, or a new run of a restarted server, resumes from it. Which
client a node is comes from the node config's `partition-id` (the simulation sets it;
`flower-supernode --node-config "partition-id=N"` in deployment); the run's options from
`config.yaml` in the run folder (run config `run-dir`).

Messages: `query.hello` (who are you), `train` (train up to a step), `query.peer_losses` (score these
adapters on your `trust` split), `query.ref_top` and `query.ref_values` (your top tokens on the shared
reference text, then your predictions on the union), `evaluate` (evaluate your adapter, or the one
sent, which you keep). The client answers measurements; it never learns which trust family asked.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from ..attacks import attack_generator, sent_adapter
from ..cli import load_config
from . import records
from .local import LocalClient, checkpoint_adapter, with_adapter
from .token_union import on_union, top_ids

STATE_KEY = "training"  # Context.state record of the client's training checkpoints, keyed by step
KEEP = 2  # checkpoints kept: a server restarted from its last saved round may ask to redo the round after it


def run_dir(run_config: Mapping[str, Any]) -> Path:
    """The run folder a run config names."""
    if not run_config.get("run-dir"):
        raise ValueError(
            "no run folder: start the run with --run-config \"run-dir='FOLDER'\" (collab.flower.deploy "
            "does), or build the apps with a `run-dir` default (collab.flower.simulate does)."
        )
    return Path(str(run_config["run-dir"]))


class ClientState:
    """A client's training checkpoints by step: in `Context.state`, mirrored to a folder of its own (the
    node config's `state-dir`, else `clients/client_NN` in the run folder), read back when the
    context has none (a restarted SuperNode, a new run of a restarted server)."""

    def __init__(self, context: Context, default_folder: Path) -> None:
        self.context = context
        self.folder = Path(str(context.node_config.get("state-dir") or default_folder))
        if STATE_KEY not in context.state:
            context.state[STATE_KEY] = ConfigRecord(dict(self._from_disk()))

    def _from_disk(self) -> Mapping[str, bytes]:
        if not self.folder.is_dir():
            return {}
        files = sorted(self.folder.glob("step_*.ckpt"))[-KEEP:]
        return {str(int(f.stem.removeprefix("step_"))): f.read_bytes() for f in files}

    @property
    def record(self) -> ConfigRecord:
        """The checkpoints in `Context.state`: step (a string) -> the checkpoint's bytes."""
        return self.context.state.config_records[STATE_KEY]

    @property
    def steps(self) -> list[int]:
        return sorted(int(k) for k in self.record)

    def _checkpoint(self, step: int) -> bytes:
        state = self.record[str(step)]
        if not isinstance(state, bytes):
            raise TypeError(f"the context's checkpoint of step {step} is a {type(state).__name__}, not bytes.")
        return state

    def at_or_before(self, step: int) -> bytes | None:
        """The latest checkpoint at or before `step` (None: none, train from step 0)."""
        earlier = [s for s in self.steps if s <= step]
        return self._checkpoint(earlier[-1]) if earlier else None

    def latest(self) -> bytes:
        if not self.steps:
            raise RuntimeError(
                "this client has not trained yet: the server asks for measurements only after a train round."
            )
        return self._checkpoint(self.steps[-1])

    def put(self, step: int, state: bytes) -> None:
        record = self.record
        record[str(step)] = state
        for old in self.steps[:-KEEP]:
            del record[str(old)]
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f"step_{step:06d}.ckpt.tmp"
        tmp.write_bytes(state)
        tmp.replace(self.folder / f"step_{step:06d}.ckpt")
        for path in sorted(self.folder.glob("step_*.ckpt"))[:-KEEP]:
            path.unlink()


def make_client_app(defaults: Mapping[str, Any] | None = None) -> ClientApp:
    """The ClientApp; `defaults` serve for run config keys the run does not set (the simulation's `run-dir`)."""
    app = ClientApp()

    def local(context: Context) -> tuple[LocalClient, ClientState]:
        folder = run_dir({**(defaults or {}), **context.run_config})
        client = int(context.node_config["partition-id"])
        state = ClientState(context, folder / "clients" / f"client_{client:02d}")
        return LocalClient(load_config(folder / "config.yaml"), client), state

    @app.query("hello")
    def hello(message: Message, context: Context) -> Message:
        client, state = local(context)
        step = state.steps[-1] if state.steps else -1
        return Message(records.hello_reply(client.client, client.view.mixture[0].tolist(), step), reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        client, state = local(context)
        first, last, adapter, reset = records.train_request(message.content)
        held = state.at_or_before(first)
        new, start, losses = client.fit(held, last, adapter, reset)
        sent = checkpoint_adapter(new)
        if client.bad and client.config.trust.aggregates_at(last):
            # what it held when the segment began: the server's average, else its own, else the initial adapter
            received = adapter or (checkpoint_adapter(held) if held is not None else client.initial_adapter())
            sent = sent_adapter(
                client.config.attack, sent, received, attack_generator(client.config.run.seed, client.client, last)
            )
            if client.config.attack.kind != "mimicry":  # a mimic keeps its trained model to report predictions of
                new = with_adapter(new, sent)
        state.put(last, new)
        return Message(records.train_reply(sent, start, losses), reply_to=message)

    @app.query("peer_losses")
    def peer_losses(message: Message, context: Context) -> Message:
        client, state = local(context)
        own = checkpoint_adapter(state.latest())
        peers, order, part = records.peer_losses_request(message.content)
        losses = client.peer_losses(own, peers, order, part)
        return Message(records.losses_reply(losses), reply_to=message)

    @app.query("ref_top")
    def ref_top(message: Message, context: Context) -> Message:
        client, state = local(context)
        m = records.measure(message.content)
        tops = client.ref_outputs(checkpoint_adapter(state.latest()), m, lambda s, outputs: top_ids(outputs, m.top_k))
        return Message(records.ref_reply(records.IDS, tops), reply_to=message)

    @app.query("ref_values")
    def ref_values(message: Message, context: Context) -> Message:
        client, state = local(context)
        union = records.sequences(message.content, records.IDS)
        values = client.ref_outputs(
            checkpoint_adapter(state.latest()),
            records.measure(message.content),
            lambda s, outputs: on_union(outputs, union[s]),
        )
        return Message(records.ref_reply(records.VALUES, values), reply_to=message)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        """Evaluate the adapter sent (the client's average, kept as its own where it has a training
        state to keep it in), else its own, else the initial one if it never trained."""
        client, state = local(context)
        adapter = records.adapter(message.content)
        kept = False
        if adapter is not None and state.steps:
            state.put(state.steps[-1], with_adapter(state.latest(), adapter))
            kept = True
        elif adapter is None and state.steps:
            adapter = checkpoint_adapter(state.latest())
        return Message(records.metrics_reply(client.evaluate(adapter), kept), reply_to=message)

    return app


app = make_client_app()  # `flwr run`'s component (collab/flower/app/pyproject.toml)
