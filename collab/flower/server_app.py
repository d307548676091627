"""The Flower `ServerApp`: rounds of local training and personalised trust aggregation.

A round is the local steps between two of `collab.fit`'s aggregation steps (`strategy.round_ends`):
each client trains from where it is up to the round's last step, starting from the average the
server owes it, and sends its adapter; at an aggregation step the clients measure what the trust
family needs (`dynamic-ref`: each client scores its peers' adapters on its own `trust` split;
`dynamic-token`: its predictions on the shared reference text) and the strategy gives each client
its own trust-weighted average. After the last round every client evaluates its final adapter.

A client that does not answer in `round-timeout` seconds, or fails, is left out of the round (and of
that round's averages); a node that appears later (a restarted SuperNode) is asked who it is and
rejoins. The strategy's state is saved in the run folder after every round, so a restarted run on
the same folder goes on from its last saved round. The run folder gets `summary.json` (with the bytes
of every message), `trust/step_NNNNNN.json` per aggregation, `adapters/client_NN/`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from lora_gpt import inject_lora, lora_parameters, save_adapters

from ..cli import load_config
from ..fit import load_base
from ..report import SUMMARY_FILE
from ..trust import TokenAgreement
from . import records
from .client_app import run_dir
from .strategy import PersonalizedTrust, round_ends
from .token_union import mean_distances, union_ids

logger = logging.getLogger(__name__)


class Federation:
    """The server's side of one run: which node is which client, the messages, the rounds."""

    def __init__(self, grid: Grid, folder: Path, run_config: Mapping[str, Any]) -> None:
        self.grid, self.folder = grid, folder
        self.config = load_config(folder / "config.yaml")
        self.num_clients = self.config.data.prepared_clients
        self.strategy = PersonalizedTrust.resume(folder, self.config.trust, self.num_clients, self.config.run.seed)
        self.round_timeout = float(run_config.get("round-timeout", 600))
        self.join_timeout = float(run_config.get("join-timeout", 300))
        self.nodes: dict[int, int] = {}  # client -> its node
        self.asked: set[int] = set()  # nodes asked who they are (a replaced node is not asked again)
        self.round = self.strategy.rounds_done

    def send(self, contents: Mapping[int, RecordDict], kind: str) -> dict[int, RecordDict]:
        """Send each client its content as a `kind` message; the replies of those that answered in time."""
        messages = {n: Message(c, self.nodes[n], kind, group_id=str(self.round)) for n, c in contents.items()}
        replies = {
            r.metadata.src_node_id: r for r in self.grid.send_and_receive(messages.values(), timeout=self.round_timeout)
        }
        answered = {}
        for n, message in messages.items():
            reply = replies.get(message.metadata.dst_node_id)
            good = reply if reply is not None and not reply.has_error() else None
            self.strategy.traffic.append(
                {
                    "round": self.round,
                    "client": n,
                    "message": kind,
                    "down": records.message_bytes(message),
                    "up": records.message_bytes(good) if good is not None else 0,
                }
            )
            if good is not None:
                answered[n] = good.content
            else:
                why = "no reply in time" if reply is None else f"error {reply.error.reason}"
                logger.warning("round %d: client %d left out of %s (%s)", self.round, n, kind, why)
        return answered

    def discover(self, wait: bool) -> None:
        """Ask nodes not seen before who they are; with `wait`, until every client is there (or the
        join timeout). A client seen again on a new node gets its adapter with its next message."""
        deadline = time.monotonic() + self.join_timeout
        while True:
            new = [i for i in self.grid.get_node_ids() if i not in self.asked]
            self.asked.update(new)
            if new:
                hellos = {i: Message(RecordDict(), i, "query.hello", group_id=str(self.round)) for i in new}
                for reply in self.grid.send_and_receive(hellos.values(), timeout=self.round_timeout):
                    if reply.has_error():
                        continue
                    node = reply.metadata.src_node_id
                    client, mixture, _ = records.hello(reply.content)
                    self.strategy.mixture[client] = mixture
                    self.strategy.rejoined(client)
                    self.nodes[client] = node
                    self.strategy.traffic.append(
                        {
                            "round": self.round,
                            "client": client,
                            "message": "query.hello",
                            "down": records.message_bytes(hellos[node]),
                            "up": records.message_bytes(reply),
                        }
                    )
            if not wait or len(self.nodes) == self.num_clients:
                return
            if time.monotonic() > deadline:
                missing = sorted(set(range(self.num_clients)) - set(self.nodes))
                raise TimeoutError(
                    f"clients {missing} did not join in {self.join_timeout:.0f} s; start a SuperNode "
                    'for each client (--node-config "partition-id=N"), or raise --join_timeout.'
                )
            time.sleep(0.5)

    def train(self, first: int, last: int) -> list[int]:
        """Every known client trains up to step `last`; returns those that sent their adapter."""
        s = self.strategy
        replies = self.send(
            {n: records.train_content(first, last, s.owed(n), n in s.reset) for n in self.nodes}, "train"
        )
        for n, content in replies.items():
            adapter, start, losses = records.train_result(content)
            s.received(n, adapter)
            s.train_loss.append({"round": self.round, "client": n, "start": start, "loss": losses})
        return sorted(replies)

    def measure(self, step: int, present: list[int]) -> tuple[list[int], torch.Tensor | None, torch.Tensor | None]:
        """What the trust family needs measured by the clients at the pairs it picks (all, or each
        client's `--trust_peers` candidates), the clients that measured it, and the pairs among them."""
        what, s = self.strategy.measures(), self.strategy
        if what == "adapters":
            return present, None, None
        pairs = s.candidates(step, present)
        if what == "peer_losses":
            order = {
                i: [j for b, j in enumerate(present) if pairs is None or pairs[a, b]] for a, i in enumerate(present)
            }
            replies = self.send(
                {
                    i: records.peer_losses_content({j: s.adapters[j] for j in order[i] if j != i}, order[i])
                    for i in present
                },
                "query.peer_losses",
            )
            done = sorted(replies)
            losses = torch.full((len(done), len(done)), float("nan"))
            for a, i in enumerate(done):
                for j, loss in zip(order[i], records.losses(replies[i]).tolist(), strict=True):
                    if j in done:
                        losses[a, done.index(j)] = loss
            return done, losses, among(pairs, present, done)
        if what == "ref_predictions":
            family = s.family
            assert isinstance(family, TokenAgreement)
            tops = {
                n: records.sequences(c, records.IDS)
                for n, c in self.send({n: RecordDict() for n in present}, "query.ref_top").items()
            }
            union = [union_ids(per_client) for per_client in zip(*(tops[n] for n in sorted(tops)), strict=True)]
            replies = self.send({n: records.ref_union_content(union) for n in sorted(tops)}, "query.ref_values")
            done = sorted(replies)
            values = [records.sequences(replies[n], records.VALUES) for n in done]
            kept = among(pairs, present, done)
            return done, mean_distances(family.measure, values, kept), kept
        raise ValueError(f"unknown measurement {what!r}")

    def run(self) -> dict[str, Any]:
        ends = round_ends(self.config.trust, self.config.optim.iterations)
        for r in range(self.strategy.rounds_done, len(ends)):
            self.round = r
            self.discover(wait=not self.nodes)
            present = self.train(ends[r - 1] if r else 0, ends[r])
            if self.config.trust.aggregates_at(ends[r]):
                present, measured, pairs = self.measure(ends[r], present)
                if present:
                    self.save_trust(self.strategy.aggregate(ends[r], present, measured, pairs))
            self.strategy.rounds_done = r + 1
            self.strategy.save(self.folder)
        self.round = len(ends)
        self.discover(wait=not self.nodes)
        final = self.send({n: records.evaluate_content(self.strategy.owed(n)) for n in self.nodes}, "evaluate")
        self.save_adapters()
        return self.write_summary(ends, {n: records.metrics(c) for n, c in final.items()})

    def save_trust(self, record: dict[str, Any]) -> None:
        folder = self.folder / "trust"
        folder.mkdir(exist_ok=True)
        (folder / f"step_{record['step']:06d}.json").write_text(json.dumps(record))

    def save_adapters(self) -> None:
        """Each client's final adapter, in this project's format (`adapters/client_NN/`, as `collab.fit`)."""
        s, c = self.strategy, self.config
        model = inject_lora(load_base(c.run, c.data.sequence_length), c.lora, num_adapters=self.num_clients)
        with torch.no_grad():
            for n, adapter in s.adapters.items():
                for name, p in lora_parameters(model).items():
                    p[n] = adapter[name]
        for n in s.adapters:
            save_adapters(model, self.folder / "adapters" / f"client_{n:02d}", adapters=n)

    def write_summary(self, ends: Sequence[int], final: Mapping[int, Mapping[str, float]]) -> dict[str, Any]:
        s = self.strategy
        clients = [final.get(n) for n in range(self.num_clients)]
        answered = [m for m in clients if m is not None]
        mean = {k: sum(m[k] for m in answered) / len(answered) for k in answered[0]} if answered else None
        summary = {
            "folder": str(self.folder),
            "config": self.config.to_dict(),
            "runtime": "flower",
            "round_ends": list(ends),
            "final": {"step": ends[-1], "clients": clients, "mean": mean},
            "train_loss": s.train_loss,
            "trust": [{k: r[k] for k in ("step", "clients", "quality", "excluded") if k in r} for r in s.history],
            "traffic": traffic_summary(s.traffic),
            "messages": s.traffic,
        }
        (self.folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
        return summary


def among(pairs: torch.Tensor | None, present: Sequence[int], kept: Sequence[int]) -> torch.Tensor | None:
    """The pairs of the `kept` clients, from `pairs` among the `present` ones (None: all)."""
    if pairs is None:
        return None
    index = torch.tensor([list(present).index(n) for n in kept], dtype=torch.long)
    return pairs[index[:, None], index[None, :]]


def traffic_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Bytes per client and round (`down`: server to client, `up`: back), summed over a round's messages,
    and their mean over the rounds and clients that exchanged any."""
    per: dict[tuple[int, int], dict[str, int]] = {}
    for row in rows:
        cell = per.setdefault((row["round"], row["client"]), {"down": 0, "up": 0})
        cell["down"] += row["down"]
        cell["up"] += row["up"]
    table = [{"round": r, "client": n, **v} for (r, n), v in sorted(per.items())]
    mean = {k: sum(t[k] for t in table) / len(table) for k in ("down", "up")} if table else {"down": 0, "up": 0}
    return {"per_client_round": table, "mean_per_client_round": mean}


def make_server_app(defaults: Mapping[str, Any] | None = None) -> ServerApp:
    """The ServerApp; `defaults` serve for run config keys the run does not set (the simulation's `run-dir`,
    `round-timeout`, `join-timeout`)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_config = {**(defaults or {}), **context.run_config}
        Federation(grid, run_dir(run_config), run_config).run()

    return app


app = make_server_app()  # `flwr run`'s component (collab/flower/app/pyproject.toml)
