"""A Flower `Grid` that delivers every message at once to ClientApps in this process: the server and
client apps run as in Flower's runtimes (the same Messages, Contexts and records), only without the
transport, so tests of the method take seconds instead of a runtime's start-up per run. Nodes can be
taken down (they never answer) and started again under a new node id, as a restarted SuperNode."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

RUN_ID = 1
_node_ids = itertools.count(100)


class InProcessGrid(Grid):
    """Client `n` runs on a node with `partition-id=n`."""

    def __init__(self, app: ClientApp, num_clients: int) -> None:
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, 0  # as the runtimes set them
        self.app = app
        self.contexts: dict[int, Context] = {}
        self.down: set[int] = set()  # clients whose node does not answer
        for n in range(num_clients):
            self.start(n)

    def start(self, client: int) -> int:
        """A new node for `client` (a fresh Context: what a restarted SuperNode has); returns its id."""
        node = next(_node_ids)
        self.contexts = {k: c for k, c in self.contexts.items() if c.node_config["partition-id"] != client}
        self.contexts[node] = Context(
            run_id=RUN_ID, node_id=node, node_config={"partition-id": client}, state=RecordDict(), run_config={}
        )
        return node

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for message in messages:
            context = self.contexts.get(message.metadata.dst_node_id)
            if context is not None and context.node_config["partition-id"] not in self.down:
                replies.append(self.app(message, context))
        return replies

    # The rest of Grid's interface, which the ServerApp does not use.
    def set_run(self, run) -> None:
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        raise NotImplementedError

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError
