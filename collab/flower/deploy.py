"""`python -m collab.flower.deploy`: the federated run in Flower's deployment runtime, as separate
processes on this machine: one SuperLink, one SuperNode per client, and `flwr run`.

Takes `collab.fit`'s options (and the Flower ones). Everything listens on 127.0.0.1 only, on free ports.
With `--secure` the SuperLink serves TLS and lets in only the SuperNodes whose keys it registered: a CA,
its certificate and a key per SuperNode are made in the run folder's `credentials/` (owner-only) and reused
by a rerun. Without it, everything runs insecure (no TLS, any SuperNode may join), as it says when it
starts. Each SuperNode gets `--node-config "partition-id=N"` (its client id; its training state is
mirrored to the run folder's `clients/client_NN`). The command prints
a line per round and waits for the run's `summary.json`, or `--time_limit` seconds, then stops every
process it started; the processes' logs are in the run folder's `logs/`. A client's error, or a
process that dies before the first round ends, stops the run at once with the reason. Rerun on an
interrupted folder, the server goes on from its last saved round and the clients from their saved
states.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import launch


def main(argv: Sequence[str] | None = None) -> int:
    return launch.main("python -m collab.flower.deploy", __doc__, simulation=False, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
