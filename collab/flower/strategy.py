"""The federated server's method as a Flower `Strategy`: personalised trust aggregation, each client
sent its own average.

A Flower round here is the stretch of `collab.fit`'s run up to its next aggregation or evaluation
step (`schedule`); round 0 is step 0, the base, evaluated only. `configure_train` sends each client
the steps to train and, where it does not hold it yet, its average; `aggregate_train` keeps every
client's adapter and, at an aggregation step, runs the trust round (`collab.trust.TrustRounds`,
the same as `collab.fit`'s) on the clients' own measurements (`measure.FederatedMeasurements`);
`configure_evaluate` / `aggregate_evaluate` evaluate every client where `collab.fit` evaluates, and
close the round: the state is saved in the run folder (a restarted server goes on from the last
saved round) and one line per round goes to its `rounds.jsonl`.

A client that does not answer in time is left out of the round and of that round's averages, and a
node that appears later (a restarted SuperNode) is asked who it is and rejoins; a client whose app
raises stops the run with its message (`ClientFailed`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from ..config import FitConfig
from ..run_folder import RunFolder, RunFolderError
from ..summary import mean_metrics
from ..trust import TrustRounds
from . import records
from .measure import ClientsAbsent, FederatedMeasurements

logger = logging.getLogger(__name__)
Adapter = dict[str, torch.Tensor]
FATAL_ERRORS = (ErrorCode.CLIENT_APP_RAISED_EXCEPTION, ErrorCode.LOAD_CLIENT_APP_EXCEPTION)


class ClientFailed(RuntimeError):
    """A client's app raised: the same error would come back every round."""


def schedule(config: FitConfig) -> list[int]:
    """The step each round ends at: 0 (the base), then every step where `collab.fit` aggregates or
    evaluates, and the last step."""
    last, trust, every = config.optim.iterations, config.trust, config.run.eval_freq
    return [0] + [s for s in range(1, last + 1) if trust.aggregates_at(s) or s % every == 0 or s == last]


def client_error(reply: Message) -> str:
    """The message a failed client app raised, without the runtime's wrapping: the deployment runtime's
    `<class 'X'>:<'message'>`, or the simulation's traceback ending `... Message: message`."""
    reason = reply.error.reason or ""
    if "Message: " in reason:
        return reason.rpartition("Message: ")[2].strip()
    start, end = reason.find(":<'"), reason.rfind("'>")
    return reason[start + 3 : end] if 0 <= start < end else reason.strip()


class PersonalizedTrust(Strategy):
    """Every client's latest adapter, which of them the clients hold, the trust rounds, the curves."""

    def __init__(
        self,
        config: FitConfig,
        folder: RunFolder,
        round_timeout: float,
        join_timeout: float,
        nodes: set[int] | None = None,
    ) -> None:
        self.config, self.folder = config, folder
        self.round_timeout, self.join_timeout = round_timeout, join_timeout
        self.allowed = nodes  # the only nodes to talk to (None: any node of the federation)
        self.num_clients = config.data.prepared_clients + config.attack.count  # bad clients after the honest
        self.schedule = schedule(config)
        self.rounds = TrustRounds(config.trust, self.num_clients, config.run.seed)
        self.adapters: dict[int, Adapter] = {}  # client -> its latest adapter
        self.held: set[int] = set()  # clients that hold exactly `adapters[n]`
        self.reset: set[int] = set()  # clients to reset their optimizer moments, as broken
        self.mixture: dict[int, list[float]] = {}  # client -> its category shares
        self.rounds_done = 0  # rounds of the schedule finished (and saved)
        self.curves: list[dict[str, Any]] = []  # per evaluation step, as collab.fit's
        self.losses: dict[int, list[float | None]] = {}  # step -> each client's train loss
        self.traffic: list[dict[str, Any]] = []  # one row per message
        self.nodes: dict[int, int] = {}  # client -> its node
        self.asked: set[int] = set()  # nodes asked who they are (a replaced node is not asked again)
        self.grid: Grid | None = None
        self.pending: list[Message] = []  # what the last configure_train or configure_evaluate sent
        self.first = 0  # the schedule's round of Flower's server round 1
        self.seconds = 0.0

    # --- running it

    def run(self, grid: Grid) -> None:
        """Every round left of the schedule, through Flower's own round loop (`Strategy.start`)."""
        self.grid, self.first = grid, self.rounds_done
        started = time.monotonic()
        left = len(self.schedule) - self.rounds_done
        if left:
            self.start(grid, ArrayRecord(), num_rounds=left, timeout=self.round_timeout)
        self.seconds += time.monotonic() - started

    def index(self, server_round: int) -> int:
        return self.first + server_round - 1

    def summary(self) -> None:
        logger.info(
            "personalised trust: %s, %d clients, %d rounds to step %d",
            self.config.trust.strategy,
            self.num_clients,
            len(self.schedule),
            self.schedule[-1],
        )

    # --- messages

    def messages(self, r: int, contents: Mapping[int, RecordDict], kind: str) -> list[Message]:
        return [Message(c, self.nodes[n], kind, group_id=str(r)) for n, c in contents.items()]

    def replies(self, r: int, sent: Iterable[Message], replies: Iterable[Message]) -> dict[int, RecordDict]:
        """The contents of the good replies to `sent`, by client; every message's bytes counted. A
        client app that raised stops the run; a client that did not answer is left out."""
        by_node = {m.metadata.src_node_id: m for m in replies}
        client_of = {node: n for n, node in self.nodes.items()}
        answered = {}
        for message in sent:
            n = client_of[message.metadata.dst_node_id]
            reply = by_node.get(message.metadata.dst_node_id)
            good = reply if reply is not None and not reply.has_error() else None
            self.traffic.append(
                {
                    "round": r,
                    "client": n,
                    "message": message.metadata.message_type,
                    "down": records.message_bytes(message),
                    "up": records.message_bytes(good) if good is not None else 0,
                }
            )
            if reply is not None and reply.has_error() and reply.error.code in FATAL_ERRORS:
                raise ClientFailed(f"client {n} failed in {message.metadata.message_type}: {client_error(reply)}")
            if good is not None:
                answered[n] = good.content
            else:
                why = "no reply in time" if reply is None else f"error {reply.error.reason}"
                logger.warning("round %d: client %d left out of %s (%s)", r, n, message.metadata.message_type, why)
        return answered

    def exchange(self, r: int, contents: Mapping[int, RecordDict], kind: str) -> dict[int, RecordDict]:
        """Send and receive outside Flower's own train and evaluate calls (who-are-you, measurements)."""
        assert self.grid is not None, "exchanges happen while the strategy runs"
        sent = self.messages(r, contents, kind)
        return self.replies(r, sent, self.grid.send_and_receive(sent, timeout=self.round_timeout))

    def discover(self, r: int, wait: bool) -> None:
        """Ask nodes not seen before who they are; with `wait`, until every client is there (or the
        join timeout). A client seen again on a new node gets its adapter with its next message."""
        assert self.grid is not None
        deadline = time.monotonic() + self.join_timeout
        while True:
            new = [
                i
                for i in self.grid.get_node_ids()
                if i not in self.asked and (self.allowed is None or i in self.allowed)
            ]
            self.asked.update(new)
            if new:
                hellos = [Message(RecordDict(), i, "query.hello", group_id=str(r)) for i in new]
                for reply in self.grid.send_and_receive(hellos, timeout=self.round_timeout):
                    if reply.has_error() and reply.error.code in FATAL_ERRORS:
                        raise ClientFailed(
                            f"node {reply.metadata.src_node_id} failed when asked who it is: {client_error(reply)}"
                        )
                    if reply.has_error():
                        continue
                    client, mixture, _ = records.hello(reply.content)
                    self.mixture[client] = mixture
                    self.held.discard(client)  # a new node holds nothing of ours
                    self.nodes[client] = reply.metadata.src_node_id
                    sent = next(m for m in hellos if m.metadata.dst_node_id == reply.metadata.src_node_id)
                    self.traffic.append(
                        {
                            "round": r,
                            "client": client,
                            "message": "query.hello",
                            "down": records.message_bytes(sent),
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

    def owed(self, client: int) -> Adapter | None:
        """The adapter to send `client` with its next message: its average, if it does not hold it yet."""
        return None if client in self.held else self.adapters.get(client)

    # --- Flower's Strategy

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        r = self.index(server_round)
        self.discover(r, wait=not self.nodes)
        if r == 0:
            return []  # round 0 is the base, evaluated only
        first, last = self.schedule[r - 1], self.schedule[r]
        contents = {n: records.train_content(first, last, self.owed(n), n in self.reset) for n in self.nodes}
        self.pending = self.messages(r, contents, "train")
        return self.pending

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        r = self.index(server_round)
        if r == 0:
            return None, None
        trained = self.replies(r, self.pending, replies)
        for n, content in trained.items():
            adapter, start, losses = records.train_result(content)
            self.adapters[n] = {k: v.detach().float().cpu() for k, v in adapter.items()}
            self.held.add(n)
            self.reset.discard(n)
            for step, loss in zip(range(start + 1, self.schedule[r] + 1), losses, strict=True):
                self.losses.setdefault(step, [None] * self.num_clients)[n] = loss
        step = self.schedule[r]
        if self.config.trust.aggregates_at(step) and trained:
            self.aggregate(r, step, sorted(trained))
        mean = [v for v in self.losses.get(step, []) if v is not None]
        return None, MetricRecord({"train_loss": sum(mean) / len(mean)}) if mean else None

    def aggregate(self, r: int, step: int, present: list[int]) -> None:
        """The trust round among the clients that trained, narrowed to those that answer its measurements."""
        while present:
            measured = FederatedMeasurements(
                present, self.adapters, self.mixture, lambda contents, kind: self.exchange(r, contents, kind)
            )
            try:
                outcome = self.rounds.run(step, measured, present)
                break
            except ClientsAbsent as absent:
                present = absent.answered
        else:
            return
        eye = torch.eye(len(present))
        for i, n in enumerate(present):
            if not torch.equal(outcome.trust[i], eye[i]) or not outcome.usable[i]:
                self.adapters[n] = {name: t[i].clone() for name, t in outcome.adapters.items()}
                self.held.discard(n)
            if not outcome.usable[i]:
                self.reset.add(n)
        self.folder.write_trust(outcome.record)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        r = self.index(server_round)
        step = self.schedule[r]
        self.pending = []
        if step == 0 or step % self.config.run.eval_freq == 0 or step == self.schedule[-1]:
            self.discover(r, wait=False)
            self.pending = self.messages(r, {n: records.evaluate_content(self.owed(n)) for n in self.nodes}, "evaluate")
        return self.pending

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        r = self.index(server_round)
        mean = None
        if self.pending:
            clients: list[dict[str, float] | None] = [None] * self.num_clients
            for n, content in self.replies(r, self.pending, replies).items():
                clients[n], kept = records.metrics(content)
                if kept:
                    self.held.add(n)
            mean = mean_metrics(clients)
            self.curves.append({"step": self.schedule[r], "clients": clients, "mean": mean})
        self.close_round(r)
        return MetricRecord(dict[str, int | float | list[int] | list[float]](mean)) if mean else None

    def close_round(self, r: int) -> None:
        """Save the state after round `r`, and say the round in `rounds.jsonl`."""
        self.rounds_done = r + 1
        self.save()
        rows = [t for t in self.traffic if t["round"] == r]
        answered = sorted({t["client"] for t in rows if t["up"] > 0 and t["message"] != "query.hello"})
        line = {
            "round": r,
            "rounds": len(self.schedule),
            "step": self.schedule[r],
            "clients": len(answered),
            "of": self.num_clients,
            "down": sum(t["down"] for t in rows),
            "up": sum(t["up"] for t in rows),
            "train_loss": mean_metrics([{"loss": v} for v in self.losses.get(self.schedule[r], []) if v is not None]),
            "val": self.curves[-1]["mean"] if self.curves and self.curves[-1]["step"] == self.schedule[r] else None,
        }
        with open(self.folder.rounds, "a") as f:
            f.write(json.dumps(line) + "\n")

    # --- state

    def state_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.config.trust.strategy,
            "num_clients": self.num_clients,
            "adapters": self.adapters,
            "held": sorted(self.held),
            "reset": sorted(self.reset),
            "mixture": self.mixture,
            "rounds_done": self.rounds_done,
            "rounds": self.rounds.state_dict(),
            "curves": self.curves,
            "losses": self.losses,
            "traffic": self.traffic,
            "seconds": self.seconds,
        }

    def save(self) -> None:
        """Write the state atomically into the run folder (a crash leaves the previous round's)."""
        path = self.folder.server_state
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load(self) -> None:
        """Go on from the state saved in the run folder, if any; a state saved by a run with another
        strategy or client count is refused."""
        path = self.folder.server_state
        if not path.exists():
            return
        saved = torch.load(path, weights_only=False)
        if (saved["strategy"], saved["num_clients"]) != (self.config.trust.strategy, self.num_clients):
            raise RunFolderError(
                f"{path} belongs to a run of {saved['strategy']} with {saved['num_clients']} clients, not "
                f"{self.config.trust.strategy} with {self.num_clients}. Fix: another run folder, or delete it."
            )
        self.adapters, self.mixture = saved["adapters"], saved["mixture"]
        self.held, self.reset = set(saved["held"]), set(saved["reset"])
        self.rounds_done, self.curves, self.losses = saved["rounds_done"], saved["curves"], saved["losses"]
        self.traffic, self.seconds = saved["traffic"], saved["seconds"]
        self.rounds.load_state_dict(saved["rounds"])
