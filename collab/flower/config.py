"""The Flower launchers' own options: one config group beside `collab.fit`'s."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from lora_gpt.options import option, require


@dataclass(frozen=True)
class FlowerConfig:
    """The federation (collab.flower): how long the server waits for its clients, and who may join."""

    GROUP: ClassVar[str] = "flower"

    round_timeout: float = option(
        600.0,
        "seconds the server waits for a round's replies; a client that has not answered by then is left out of "
        "the round",
    )
    join_timeout: float = option(300.0, "seconds the server waits, at the start, for every client to join")
    time_limit: float = option(3600.0, "seconds after which every process is stopped, finished or not")
    secure: bool = option(
        False,
        "deployment with TLS and SuperNode authentication: a CA, the SuperLink's certificate and a key per SuperNode, "
        "made (owner-only) in the run folder's credentials/ and reused by a rerun; without it, no TLS and any "
        "SuperNode may join",
    )

    def __post_init__(self) -> None:
        for name in ("round_timeout", "join_timeout", "time_limit"):
            require(self, name, getattr(self, name) > 0, "> 0")

    def run_config(self) -> dict[str, Any]:
        """The Flower run config's entries for these options (the app's `pyproject.toml` names them)."""
        return {"round-timeout": self.round_timeout, "join-timeout": self.join_timeout}
