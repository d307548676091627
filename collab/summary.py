"""A finished run's `summary.json`: one schema for every runtime, so that the report, the export
and the demo read any run, batched or federated.

    folder, runtime ("batched" | "flower"), config (every option, by group), precision,
    dataset    the prepared data: folder, budget, categories, mixture, client_categories
    curves     per evaluation step: {step, clients: [metrics per client], mean} (step 0: the base)
    final      the last of the curves
    train_loss per optimizer step: {step, loss: [per client]}
    trust      per aggregation: its record without the matrices (trust/step_NNNNNN.json has them)
    warnings   what the run said was probably not meant
    seconds    training time
and, for a federated run, the bytes its messages carried (traffic, messages).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import FitConfig


def dataset_summary(data_dir: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What a run's summary says of its prepared dataset, from the dataset's manifest."""
    return {
        "folder": str(data_dir),
        "budget": manifest.get("budget", manifest["options"]["budget"]),
        "categories": list(manifest["categories"]),
        "mixture": [list(map(float, row)) for row in manifest["mixture"]],
        "client_categories": list(map(int, manifest["client_categories"])),
    }


def mean_metrics(clients: Sequence[Mapping[str, float] | None]) -> dict[str, float] | None:
    """The mean of each metric over the clients that have metrics (None: none has)."""
    present = [c for c in clients if c is not None]
    return {k: sum(c[k] for c in present) / len(present) for k in present[0]} if present else None


def run_summary(
    *,
    folder: Path,
    config: FitConfig,
    runtime: str,
    precision: str,
    dataset: dict[str, Any],
    curves: list[dict[str, Any]],
    train_loss: list[dict[str, Any]],
    rounds: Sequence[Mapping[str, Any]],
    warnings: Sequence[str],
    seconds: float,
    **extra: Any,
) -> dict[str, Any]:
    """The summary of a run that evaluated at the steps of `curves` and aggregated in `rounds`."""
    final = curves[-1]
    return {
        "folder": str(folder),
        "runtime": runtime,
        "config": config.to_dict(),
        "precision": precision,
        "dataset": dataset,
        "final": {"step": final["step"], "clients": final["clients"], "mean": final["mean"]},
        "curves": curves,
        "train_loss": train_loss,
        "trust": [dict(r) for r in rounds],
        "warnings": list(warnings),
        "seconds": seconds,
        **extra,
    }


def format_final(summary: Mapping[str, Any]) -> str:
    """The final validation metrics per client and their mean, as a table (`-`: no metrics)."""
    rows = [f"{'client':>8} {'val loss':>9} {'val ppl':>9} {'val acc':>8}"]
    for n, c in enumerate(summary["final"]["clients"]):
        rows.append(f"{n:>8} {c['loss']:>9.4f} {c['ppl']:>9.2f} {c['acc']:>8.4f}" if c else f"{n:>8} {'-':>9}")
    m = summary["final"]["mean"]
    if m:
        rows.append(f"{'mean':>8} {m['loss']:>9.4f} {m['ppl']:>9.2f} {m['acc']:>8.4f}")
    return "\n".join(rows)


def format_outcome(summary: Mapping[str, Any]) -> str:
    """What a finished run prints: the strategy, data and step, the final table, its warnings and folder."""
    data = summary["config"]["data"]
    lines = [
        f"\n{summary['config']['trust']['strategy']} on {data['dataset']} ({data['num_clients']} clients"
        + (", Flower" if summary.get("runtime") == "flower" else "")
        + f"), step {summary['final']['step']}:",
        format_final(summary),
    ]
    lines += [f"warning: {w}" for w in summary["warnings"]]
    lines.append(f"outputs in {summary['folder']}")
    lines.append(f"per-client curves and trust over rounds: python -m collab.report {shlex.quote(summary['folder'])}")
    return "\n".join(lines)
