"""`python -m collab.flower.simulate`: the federated run in Flower's simulation runtime, on this machine.

Takes `collab.fit`'s options (and the Flower ones below them); the ServerApp runs in this process and
one ClientApp per client in Flower's simulation runtime (Ray actors, one CPU each). Writes the run
folder (default runs/flower/DATASET-nCLIENTS/TRUST/seedSEED): config.yaml, server_state.pt after every
round, trust/, adapters/, summary.json with the bytes every message carried. Rerun on an interrupted
folder, it goes on from the last saved round.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from lora_gpt.cli import fail
from lora_gpt.errors import FixableError

from ..report import SUMMARY_FILE
from .client_app import make_client_app
from .launch import FlowerRun, command, prepare, print_outcome
from .server_app import make_server_app


def simulate(run: FlowerRun) -> dict[str, Any]:
    """Run the federation in Flower's simulation runtime; returns the summary."""
    from flwr.simulation import run_simulation

    cpus = os.cpu_count() or 1
    run_simulation(
        server_app=make_server_app(run.run_config),
        client_app=make_client_app(run.run_config),
        num_supernodes=run.num_clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": cpus, "include_dashboard": False},
        },
    )
    path = run.folder / SUMMARY_FILE
    if not path.exists():
        raise RuntimeError(f"the simulation ended without {path}: the ServerApp failed (see the log above).")
    return json.loads(path.read_text())


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run = prepare(*command("python -m collab.flower.simulate", __doc__).parse(argv))
        summary = simulate(run)
    except FixableError as err:
        fail(err)
    print_outcome(run, summary, "simulation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
