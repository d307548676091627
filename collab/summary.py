"""A finished run's `summary.json`: one schema for every runtime, so that the report, the export
and the demo read any run, batched or federated.

    folder, runtime ("batched" | "flower"), config (every option, by group), precision,
    dataset    the prepared data: folder, budget, categories, mixture, client_categories, and the
               evaluation windows each client got (windows: {val, trust, ref}: split, asked, used)
    curves     per evaluation step: {step, clients: [metrics per client], mean} (step 0: the base)
    final      the last of the curves
    train_loss per optimizer step: {step, loss: [per client]}
    trust      per aggregation: its record without the matrices (trust/step_NNNNNN.json has them)
    warnings   what the run said was probably not meant
    seconds    training time
and, for a federated run, the bytes its messages carried (traffic, messages); for a run with bad
clients, `attack` (`collab.attacks.attack_summary`: who was bad, the honest clients' final metrics, their
trust on bad clients per aggregation).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from data.datamodule import window_counts

from .config import FitConfig
from .trust import build_family, token_measure

# what each evaluation's windows are for, by the data they come from
WINDOW_USES = {"val": "validation", "trust": "dynamic-ref's peer losses", "ref": "dynamic-token's reference text"}


def evaluation_windows(manifest: Mapping[str, Any], config: FitConfig) -> dict[str, dict[str, Any]]:
    """The windows every client's evaluations read (`val`: validation; `trust`: dynamic-ref's scores,
    from the split `--data.trust_split` names; `ref`: dynamic-token's), as asked and as used, and
    whether the run's strategy reads them (`val` always)."""
    needs = build_family(config.trust).needs
    ref_batches = token_measure(config.trust.token_distance, config.trust.token_top_k).num_batches
    read: dict[str, tuple[str, int | None, bool]] = {  # use -> split, batches (None: --eval_batches), read
        "val": ("val", None, True),
        "trust": (config.data.trust_split, None, "pair_losses" in needs),
        "ref": ("ref", ref_batches, "token_distances" in needs),
    }
    out = {}
    for use, (split, batches, used_by_run) in read.items():
        asked, used = window_counts(dict(manifest), config.data, split, batches)
        out[use] = {"split": split, "asked": asked, "used": used, "read": used_by_run}
    return out


def window_warnings(windows: Mapping[str, Mapping[str, Any]], config: FitConfig) -> list[str]:
    """What the run says where its evaluations read fewer windows than asked for (the splits too short)."""
    data, said = config.data, []
    for use, w in windows.items():
        if w["read"] and w["used"] < w["asked"]:
            budget = "--ref_tokens" if w["split"] == "ref" else f"--{w['split']}_tokens"
            said.append(
                f"{WINDOW_USES[use]} read {w['used']} windows of {data.sequence_length + 1} tokens per client, "
                f"not the {w['asked']} asked for: the {w['split']} split holds no more without overlap. Fix: a "
                f"larger {budget}, or --data.eval_overlap (windows that overlap, as the reference code's random "
                "ones do)."
            )
    return said


def dataset_summary(data_dir: Path, manifest: Mapping[str, Any], config: FitConfig) -> dict[str, Any]:
    """What a run's summary says of its prepared dataset, from the dataset's manifest, and of the
    evaluation windows the run's options give each client."""
    return {
        "folder": str(data_dir),
        "budget": manifest.get("budget", manifest["options"]["budget"]),
        "categories": list(manifest["categories"]),
        "mixture": [list(map(float, row)) for row in manifest["mixture"]],
        "client_categories": list(map(int, manifest["client_categories"])),
        "windows": evaluation_windows(manifest, config),
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
    """The summary of a run that evaluated at the steps of `curves` and aggregated in `rounds`; its
    warnings begin with the evaluations that read fewer windows than asked for (`window_warnings`)."""
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
        "warnings": [*window_warnings(dataset["windows"], config), *warnings],
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
