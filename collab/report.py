"""Results of finished runs (their `summary.json`) as tables and plots."""
from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

SUMMARY_FILE = "summary.json"


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
        column = f"{run_dataset(run)}, {len(run['final']['clients'])} clients"
        cells[(run_strategy(run), column)].append(final_mean_ppl(run))
    datasets = sorted({d for _, d in cells})
    strategies = strategies or sorted({s for s, _ in cells})
    best = {d: min((statistics.mean(v) for (s, dd), v in cells.items() if dd == d), default=math.nan)
            for d in datasets}
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


def client_table(runs: Iterable[dict[str, Any]]) -> str:
    """Markdown: final validation perplexity of every client and the mean, one row per strategy."""
    runs = list(runs)
    n = max(len(r["final"]["clients"]) for r in runs)
    categories = runs[0]["dataset"]["categories"]
    owner = runs[0]["dataset"]["client_categories"]
    head = " | ".join(f"c{i} ({categories[owner[i]]})" for i in range(n))
    lines = [f"| strategy | {head} | mean |", "|---|" + "---|" * (n + 1)]
    for r in runs:
        ppl = [f"{c['ppl']:.2f}" for c in r["final"]["clients"]]
        lines.append(f"| {run_strategy(r)} | " + " | ".join(ppl) + f" | **{final_mean_ppl(r):.2f}** |")
    return "\n".join(lines)


def plot_client_curves(runs: list[dict[str, Any]], path: Path) -> Path:
    """Per-client validation perplexity against step, one panel per strategy, shared y axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.4), sharey=True, squeeze=False)
    categories = runs[0]["dataset"]["categories"]
    owner = runs[0]["dataset"]["client_categories"]
    colors = plt.get_cmap("tab10")
    for ax, run in zip(axes[0], runs):
        steps = [c["step"] for c in run["curves"]]
        for n in range(len(run["curves"][0]["clients"])):
            ax.plot(steps, [c["clients"][n]["ppl"] for c in run["curves"]], color=colors(owner[n]),
                    alpha=0.8, lw=1.2, label=categories[owner[n]])
        ax.plot(steps, [c["mean"]["ppl"] for c in run["curves"]], color="black", lw=2.2, label="mean")
        ax.set_title(f"{run_strategy(run)}: mean {final_mean_ppl(run):.1f}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation perplexity")
    handles, labels = axes[0][0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_trust_heatmap(run: dict[str, Any], path: Path) -> Path | None:
    """The run's last trust matrix, clients ordered and labelled by category."""
    files = sorted((Path(run["folder"]) / "trust").glob("step_*.json"))
    if not files:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    record = json.loads(files[-1].read_text())
    trust = np.array(record["trust"])
    owner = run["dataset"]["client_categories"]
    categories = run["dataset"]["categories"]
    order = sorted(range(len(owner)), key=lambda i: (owner[i], i))
    trust = trust[np.ix_(order, order)]
    labels = [f"c{i} {categories[owner[i]]}" for i in order]
    fig, ax = plt.subplots(figsize=(1 + 0.55 * len(order), 0.6 + 0.5 * len(order)))
    im = ax.imshow(trust, cmap="viridis", vmin=0)
    ax.set_xticks(range(len(order)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(order)), labels, fontsize=8)
    for i in range(len(order)):
        for j in range(len(order)):
            ax.text(j, i, f"{trust[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if trust[i, j] < trust.max() / 2 else "black")
    ax.set_title(f"{run_strategy(run)} trust at step {record['step']} (row i trusts column j)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_seed_curves(runs: list[dict[str, Any]], folder: Path) -> list[Path]:
    """Per dataset: the mean validation perplexity against step, mean over seeds per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
