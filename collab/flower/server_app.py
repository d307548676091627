"""The Flower `ServerApp`: runs the personalised trust strategy (`strategy.PersonalizedTrust`) on the
run folder a launcher prepared, then saves every client's final adapter and writes `summary.json`,
the same files `collab.fit` writes (`collab.run_folder`, `collab.summary`).

Whatever stops the run (a client whose app raised, clients that never joined, a bug) is written to
the run folder's `failed.txt` before the app exits, so the launcher that started it can say why.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from data.manifest import read_manifest
from lora_gpt import inject_lora, lora_parameters, save_adapters
from lora_gpt.errors import FixableError
from lora_gpt.precision import resolve_precision

from ..attacks import attack_summary
from ..cli import load_config
from ..fit import device_type, load_base
from ..run_folder import RunFolder
from ..summary import dataset_summary, run_summary
from .client_app import run_dir
from .strategy import ClientFailed, PersonalizedTrust


def save_final_adapters(strategy: PersonalizedTrust) -> None:
    """Each client's final adapter, in this project's format (`adapters/client_NN/`, as `collab.fit`)."""
    c = strategy.config
    model = inject_lora(load_base(c.run, c.data.sequence_length), c.lora, num_adapters=strategy.num_clients)
    with torch.no_grad():
        for n, adapter in strategy.adapters.items():
            for name, p in lora_parameters(model).items():
                p[n] = adapter[name]
    for n in strategy.adapters:
        save_adapters(model, strategy.folder.adapters(n), adapters=n)


def traffic_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Bytes per client and round (`down`: server to client, `up`: back), summed over a round's messages,
    and their mean over the rounds and clients that exchanged any."""
    per: dict[tuple[int, int], dict[str, int]] = {}
    for row in rows:
        cell = per.setdefault((row["round"], row["client"]), {"down": 0, "up": 0})
        cell["down"] += row["down"]
        cell["up"] += row["up"]
    table = [{"round": r, "client": n, **v} for (r, n), v in sorted(per.items())]
    mean = {k: round(sum(t[k] for t in table) / len(table)) for k in ("down", "up")} if table else {"down": 0, "up": 0}
    return {"per_client_round": table, "mean_per_client_round": mean}


def write_summary(strategy: PersonalizedTrust) -> dict[str, Any]:
    c, folder = strategy.config, strategy.folder
    data_dir = c.data.data_dir
    assert data_dir is not None  # check_federated refuses a config without it
    summary = run_summary(
        folder=folder.path,
        config=c,
        runtime="flower",
        precision=resolve_precision(c.run.precision, device_type(c.run.accelerator)),
        dataset=dataset_summary(data_dir, read_manifest(data_dir), c),
        curves=strategy.curves,
        train_loss=[{"step": s, "loss": loss} for s, loss in sorted(strategy.losses.items())],
        rounds=strategy.rounds.history,
        warnings=c.warnings() + strategy.rounds.warnings(),
        seconds=strategy.seconds,
        traffic=traffic_summary(strategy.traffic),
        messages=strategy.traffic,
        **(
            {"attack": attack_summary(c.attack, c.data.prepared_clients, strategy.curves[-1]["clients"], folder.trust)}
            if c.attack.active
            else {}
        ),
    )
    folder.write_summary(summary)
    return summary


def serve(grid: Grid, run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The whole federated run on the run folder `run_config` names; returns its summary."""
    folder = RunFolder(run_dir(run_config))
    try:
        strategy = PersonalizedTrust(
            load_config(folder.config),
            folder,
            round_timeout=float(run_config.get("round-timeout", 600)),
            join_timeout=float(run_config.get("join-timeout", 300)),
            nodes={int(n) for n in str(run_config.get("nodes", "")).split()} or None,
        )
        strategy.load()
        strategy.run(grid)
        save_final_adapters(strategy)
        return write_summary(strategy)
    except Exception as err:
        said = str(err) if isinstance(err, (FixableError, ClientFailed)) else f"{type(err).__name__}: {err}"
        folder.write_failure(said)
        raise


def make_server_app(defaults: Mapping[str, Any] | None = None) -> ServerApp:
    """The ServerApp; `defaults` serve for run config keys the run does not set."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, {**(defaults or {}), **context.run_config})

    return app


app = make_server_app()  # `flwr run`'s component (collab/flower/app/pyproject.toml)
