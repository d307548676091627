"""`python -m collab.flower.simulate`: the federated run in Flower's simulation runtime, on this machine.

Takes `collab.fit`'s options (and the Flower ones below them). Starts a Flower SuperLink in simulation
mode on a free loopback port and runs the Flower App on it with `flwr run`, the way Flower's current
release runs simulations: the ServerApp in its own process and one ClientApp per client in the
simulation runtime (Ray actors, one CPU each). Writes the run folder (default
runs/flower/DATASET[-nCLIENTS]/TRUST/seedSEED) with the same files as `collab.fit` (config.yaml, trust/,
adapters/, summary.json) and server_state.pt after every round; prints a line per round. Rerun on an
interrupted folder, it goes on from the last saved round.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import launch


def main(argv: Sequence[str] | None = None) -> int:
    return launch.main("python -m collab.flower.simulate", __doc__, simulation=True, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
