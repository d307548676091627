"""Results of finished runs (their `summary.json`) as tables and plots."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .run_folder import SUMMARY_FILE


def load_summaries(root: Path) -> list[dict[str, Any]]:
    """Every finished run under `root`, each with its folder as `summary['folder']`."""
    runs = []
    for path in sorted(Path(root).rglob(SUMMARY_FILE)):
        summary = json.loads(path.read_text())
        summary["folder"] = str(path.parent)
        runs.append(summary)
    return runs


def final_mean_ppl(summary: dict[str, Any]) -> float:
    return summary["final"]["mean"]["ppl"]


def run_strategy(summary: dict[str, Any]) -> str:
    """The run's trust strategy (`--trust`)."""
    return summary["config"]["trust"]["strategy"]


def run_dataset(summary: dict[str, Any]) -> str:
    """The recipe or data the run trained on (`--dataset`, or the recipe its `--data_dir` holds)."""
    return summary["config"]["data"]["dataset"]


def seed_table(runs: Iterable[dict[str, Any]], strategies: list[str] | None = None) -> str:
    """Markdown: mean +/- std over seeds of the final mean validation perplexity, strategy x
    (dataset, client count); the best (lowest) mean of each column in bold."""
    cells: dict[tuple[str, str], list[float]] = defaultdict(list)
    for run in runs:  # one column per dataset and client count: 4 and 8 clients are different experiments
        cells[(run_strategy(run), run_column(run))].append(final_mean_ppl(run))
    datasets = sorted({d for _, d in cells})
    strategies = strategies or sorted({s for s, _ in cells})
    best = {d: min((statistics.mean(v) for (s, dd), v in cells.items() if dd == d), default=math.nan) for d in datasets}
    lines = ["| strategy | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    for s in strategies:
        row = []
        for d in datasets:
            values = cells.get((s, d))
            if not values:
                row.append("")
                continue
            mean = statistics.mean(values)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            text = f"{mean:.2f} ± {std:.2f} (n={len(values)})"
            row.append(f"**{text}**" if mean == best[d] else text)
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def run_seed(summary: dict[str, Any]) -> int:
    return summary["config"]["run"]["seed"]


def run_column(summary: dict[str, Any]) -> str:
    """A result column: one dataset at one client count (4 and 8 clients are different experiments)."""
    return f"{run_dataset(summary)}, {len(summary['final']['clients'])} clients"


def paired_table(runs: Iterable[dict[str, Any]], strategies: list[str] | None = None) -> str:
    """Markdown, one section per dataset column: each strategy's final mean validation perplexity
    (mean +/- std over seeds), its paired per-seed relative difference against `none` and against
    `naive` (mean, and on how many seeds it is lower), and the share of its trust rows on
    same-category clients at the last aggregation (mean over seeds)."""
    by_column: dict[str, dict[str, dict[int, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        by_column[run_column(run)][run_strategy(run)][run_seed(run)] = run
    sections = []
    for column in sorted(by_column):
        cells = by_column[column]
        order = strategies or sorted(cells)
        lines = [
            f"**{column}**",
            "",
            "| strategy | mean ppl ± std | vs none (lower on) | vs naive (lower on) | same-category trust |",
            "|---|---|---|---|---|",
        ]
        for strategy in (s for s in order if s in cells):
            seeds = cells[strategy]
            values = [final_mean_ppl(r) for r in seeds.values()]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            row = [f"{statistics.mean(values):.1f} ± {std:.1f} (n={len(values)})"]
            for other in ("none", "naive"):
                pairs = [
                    (final_mean_ppl(r), final_mean_ppl(cells[other][seed]))
                    for seed, r in seeds.items()
                    if other in cells and seed in cells[other]
                ]
                if strategy == other or not pairs:
                    row.append("")
                    continue
                diff = statistics.mean(a / b - 1 for a, b in pairs)
                row.append(f"{diff:+.1%} ({sum(a < b for a, b in pairs)}/{len(pairs)})")
            shares = [
                rec["quality"]["same_category"]
                for r in seeds.values()
                if (rec := last_trust(r)) is not None and rec.get("quality")
            ]
            row.append(f"{statistics.mean(shares):.2f}" if shares else "")
            lines.append(f"| {strategy} | " + " | ".join(row) + " |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def last_trust(run: dict[str, Any]) -> dict[str, Any] | None:
    """The run's last aggregation record (`trust/step_*.json`), or None if it never aggregated."""
    files = sorted((Path(run["folder"]) / "trust").glob("step_*.json"))
    return json.loads(files[-1].read_text()) if files else None


def client_table(runs: Iterable[dict[str, Any]], labels: list[str] | None = None) -> str:
    """Markdown: validation perplexity of every client and their mean before fine-tuning (the
    base, step 0) and at the end of each run, one row per run (`labels`, default its strategy)."""
    runs = list(runs)
    labels = labels or [run_strategy(r) for r in runs]
    n = max(len(r["final"]["clients"]) for r in runs)
    categories = runs[0]["dataset"]["categories"]
    owner = runs[0]["dataset"]["client_categories"]
    head = " | ".join(f"c{i} {categories[owner[i]]}" for i in range(n))
    lines = [f"| run | {head} | mean |", "|---|" + "---|" * (n + 1)]
    start = runs[0]["curves"][0]
    if start["step"] == 0:
        lines.append(
            "| base (step 0) | "
            + " | ".join(f"{c['ppl']:.1f}" for c in start["clients"])
            + f" | {start['mean']['ppl']:.1f} |"
        )
    for label, r in zip(labels, runs, strict=True):
        ppl = [f"{c['ppl']:.1f}" for c in r["final"]["clients"]]
        lines.append(f"| {label} | " + " | ".join(ppl) + f" | **{final_mean_ppl(r):.1f}** |")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_client_curves(runs: list[dict[str, Any]], path: Path, labels: list[str] | None = None) -> Path:
    """Per-client validation perplexity against step (from step 0, the base), one panel per run,
    shared y axis (log scale when the clients' levels differ tenfold)."""
    plt = _pyplot()
    labels = labels or [run_strategy(r) for r in runs]
    cols = min(4, len(runs))
    rows = -(-len(runs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), sharey=True, squeeze=False)
    categories = runs[0]["dataset"]["categories"]
    owner = runs[0]["dataset"]["client_categories"]
    colors = plt.get_cmap("tab10")
    values = [c["ppl"] for r in runs for point in r["curves"] for c in point["clients"]]
    for ax, run, label in zip(axes.flat, runs, labels, strict=False):
        steps = [c["step"] for c in run["curves"]]
        for n in range(len(run["curves"][0]["clients"])):
            ax.plot(
                steps,
                [c["clients"][n]["ppl"] for c in run["curves"]],
                color=colors(owner[n]),
                alpha=0.8,
                lw=1.2,
                label=categories[owner[n]],
            )
        ax.plot(steps, [c["mean"]["ppl"] for c in run["curves"]], color="black", lw=2.2, label="mean")
        ax.set_title(f"{label}: mean {final_mean_ppl(run):.1f}", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if max(values) > 10 * min(values):
            ax.set_yscale("log")
    for ax in axes.flat[len(runs) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("validation perplexity")
    handles, names = axes[0][0].get_legend_handles_labels()
    unique = dict(zip(names, handles, strict=True))
    fig.legend(unique.values(), unique.keys(), loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_trust_heatmaps(runs: list[dict[str, Any]], path: Path, labels: list[str] | None = None) -> Path | None:
    """Each run's last trust matrix side by side, clients ordered and labelled by category
    (runs that never aggregated are left out)."""
    labels = labels or [run_strategy(r) for r in runs]
    shown = [
        (run, label, record) for run, label in zip(runs, labels, strict=True) if (record := last_trust(run)) is not None
    ]
    if not shown:
        return None
    plt = _pyplot()
    import numpy as np

    owner = runs[0]["dataset"]["client_categories"]
    categories = runs[0]["dataset"]["categories"]
    order = sorted(range(len(owner)), key=lambda i: (owner[i], i))
    names = [f"c{i} {categories[owner[i]]}" for i in order]
    size = 0.45 * len(order) + 1.4
    fig, axes = plt.subplots(1, len(shown), figsize=(size * len(shown), size + 0.4), squeeze=False)
    for ax, (_, label, record) in zip(axes[0], shown, strict=True):
        trust = np.array(record["trust"])[np.ix_(order, order)]
        ax.imshow(trust, cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(order)), names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(order)), names, fontsize=7)
        for i in range(len(order)):
            for j in range(len(order)):
                ax.text(
                    j,
                    i,
                    f"{trust[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=5.5,
                    color="white" if trust[i, j] < 0.5 else "black",
                )
        share = record.get("quality", {}).get("same_category")
        ax.set_title(
            f"{label}, step {record['step']}" + (f"\nsame-category share {share:.2f}" if share else ""), fontsize=8
        )
    fig.suptitle("last trust matrix: row i's weight on column j's adapter", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_seed_curves(runs: list[dict[str, Any]], folder: Path) -> list[Path]:
    """Per dataset: the mean validation perplexity against step, mean over seeds per strategy."""
    plt = _pyplot()
    by_dataset: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        by_dataset[run_dataset(run)][run_strategy(run)].append(run["curves"])
    paths = []
    for dataset, strategies in by_dataset.items():
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for strategy, curves in sorted(strategies.items()):
            steps = [c["step"] for c in curves[0]]
            length = min(len(c) for c in curves)
            mean = [statistics.mean(c[i]["mean"]["ppl"] for c in curves) for i in range(length)]
            ax.plot(steps[:length], mean, label=f"{strategy} (n={len(curves)})")
        ax.set_title(dataset)
        ax.set_xlabel("step")
        ax.set_ylabel("mean validation perplexity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / f"curves_{dataset.replace('/', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
