"""`python -m collab.report PATH`: what finished runs did, as tables and plots.

PATH is a run folder (it holds summary.json) or a folder of runs, searched recursively (a seed
grid of scripts/reproduce.py, the demo's runs/demo, or runs/). Every run gets RUN/report/: its
per-client validation curves, its trust matrices over the aggregation rounds, the share of trust on
same-category clients against step, and report.md with each client's perplexity before -> after.
A folder of runs also gets PATH/report.md: mean +/- std over seeds, each strategy against `none`
and `naive` on the same seeds, and the mean curves per dataset.

    python -m collab.report runs/offline_multi_specific-n8/dynamic/seed0
    python -m collab.report runs/reproduce --strategies none naive static dynamic dynamic-ref dynamic-token
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from lora_gpt.cli import Command, fail
from lora_gpt.errors import ConfigError, FixableError
from lora_gpt.options import option

from .run_folder import SUMMARY_FILE, readable_name

REPORT_DIR = "report"
MAX_ROUNDS_SHOWN = 8  # trust matrices drawn per run: evenly spaced over its aggregations, the last included
ANNOTATE_UP_TO = 12  # clients up to which a heatmap prints its numbers


def load_summaries(root: Path) -> list[dict[str, Any]]:
    """Every finished run under `root`, each with its folder as `summary['folder']`."""
    runs = []
    for path in sorted(Path(root).rglob(SUMMARY_FILE)):
        summary = json.loads(path.read_text())
        summary["folder"] = str(path.parent)
        runs.append(summary)
    return runs


def has_curves(summary: dict[str, Any]) -> bool:
    """Whether a run's summary holds per-client validation curves (a Flower run written before the
    two runtimes shared one summary schema does not)."""
    return bool(summary.get("curves"))


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


def trust_files(run: dict[str, Any]) -> list[Path]:
    """The run's aggregation records (`trust/step_*.json`), in step order."""
    return sorted((Path(run["folder"]) / "trust").glob("step_*.json"))


def last_trust(run: dict[str, Any]) -> dict[str, Any] | None:
    """The run's last aggregation record (`trust/step_*.json`), or None if it never aggregated."""
    files = trust_files(run)
    return json.loads(files[-1].read_text()) if files else None


def client_names(run: dict[str, Any]) -> list[str]:
    """`c0 french`, `c1 german`, ...: each client with the category most of its data is from."""
    categories, owner = run["dataset"]["categories"], run["dataset"]["client_categories"]
    return [f"c{n} {categories[c]}" for n, c in enumerate(owner)]


def client_table(runs: Iterable[dict[str, Any]], labels: list[str] | None = None) -> str:
    """Markdown: validation perplexity of every client and their mean before fine-tuning (the
    base, step 0) and at the end of each run, one row per run (`labels`, default its strategy)."""
    runs = list(runs)
    labels = labels or [run_strategy(r) for r in runs]
    n = max(len(r["final"]["clients"]) for r in runs)
    head = " | ".join(client_names(runs[0])[:n])
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


def before_after(run: dict[str, Any]) -> str:
    """Each client's validation perplexity at the first evaluation (step 0: the base, before
    fine-tuning) and at the end, and the change in %; a last row for the mean over clients."""
    first, final = run["curves"][0], run["final"]
    rows = [("client", f"ppl at step {first['step']}", f"ppl at step {final['step']}", "change")]
    pairs = [*zip(client_names(run), first["clients"], final["clients"], strict=True)]
    pairs.append(("mean", first["mean"], final["mean"]))
    for name, before, after in pairs:
        rows.append((name, f"{before['ppl']:.2f}", f"{after['ppl']:.2f}", f"{after['ppl'] / before['ppl'] - 1:+.1%}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join([r[0].ljust(widths[0]), *(r[i].rjust(widths[i]) for i in range(1, 4))]).rstrip() for r in rows
    )


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


def _draw_trust(ax, run: dict[str, Any], record: dict[str, Any], title: str) -> None:
    """One trust matrix on `ax`, clients ordered and labelled by category."""
    import numpy as np

    owner = run["dataset"]["client_categories"]
    order = sorted(range(len(owner)), key=lambda i: (owner[i], i))
    names = [client_names(run)[i] for i in order]
    trust = np.array(record["trust"])[np.ix_(order, order)]
    ax.imshow(trust, cmap="viridis", vmin=0, vmax=1)
    if len(order) <= ANNOTATE_UP_TO:
        ax.set_xticks(range(len(order)), names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(order)), names, fontsize=7)
        for i in range(len(order)):
            for j in range(len(order)):
                color = "white" if trust[i, j] < 0.5 else "black"
                ax.text(j, i, f"{trust[i, j]:.2f}", ha="center", va="center", fontsize=5.5, color=color)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("clients by category", fontsize=7)
    share = record.get("quality", {}).get("same_category")
    ax.set_title(title + (f"\nsame-category share {share:.2f}" if share is not None else ""), fontsize=8)


def _heatmap_grid(panels: list[tuple[dict[str, Any], dict[str, Any], str]], path: Path, heading: str) -> Path:
    plt = _pyplot()
    clients = max(len(run["dataset"]["client_categories"]) for run, _, _ in panels)
    size = min(0.45 * clients + 1.4, 6.0)
    width = max(size * len(panels), 4.5)  # room for the heading
    fig, axes = plt.subplots(1, len(panels), figsize=(width, size + 0.4), squeeze=False)
    for ax, (run, record, title) in zip(axes[0], panels, strict=True):
        _draw_trust(ax, run, record, title)
    fig.suptitle(heading, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_trust_heatmaps(runs: list[dict[str, Any]], path: Path, labels: list[str] | None = None) -> Path | None:
    """Each run's last trust matrix side by side, clients ordered and labelled by category
    (runs that never aggregated are left out)."""
    labels = labels or [run_strategy(r) for r in runs]
    panels = [
        (run, record, f"{label}, step {record['step']}")
        for run, label in zip(runs, labels, strict=True)
        if (record := last_trust(run)) is not None
    ]
    if not panels:
        return None
    return _heatmap_grid(panels, path, "last trust matrix: row i's weight on column j's adapter")


def plot_trust_rounds(run: dict[str, Any], path: Path, shown: int = MAX_ROUNDS_SHOWN) -> Path | None:
    """One run's trust matrices over its aggregation rounds (up to `shown`, evenly spaced, the
    first and last included); None when the run never aggregated."""
    files = trust_files(run)
    if not files:
        return None
    count = min(shown, len(files))
    picks = sorted({round(i * (len(files) - 1) / max(count - 1, 1)) for i in range(count)})
    records = [json.loads(files[i].read_text()) for i in picks]
    panels = [(run, record, f"step {record['step']}") for record in records]
    heading = f"{run_strategy(run)}: {len(picks)} of {len(files)} trust matrices (row i's weight on j)"
    return _heatmap_grid(panels, path, heading)


def uniform_same_category(run: dict[str, Any]) -> float:
    """The same-category share a uniform trust matrix (plain averaging) would have."""
    owner = run["dataset"]["client_categories"]
    return statistics.mean(owner.count(c) / len(owner) for c in owner)


def plot_same_category(runs: list[dict[str, Any]], path: Path, labels: list[str] | None = None) -> Path | None:
    """The share of each trust row's weight on clients of its own category (mean over rows)
    against step, one line per run; dashed, what uniform averaging gives. None when no run aggregated."""
    labels = labels or [run_strategy(r) for r in runs]
    lines = [
        (label, [(t["step"], t["quality"]["same_category"]) for t in run.get("trust", []) if t.get("quality")])
        for run, label in zip(runs, labels, strict=True)
    ]
    lines = [(label, points) for label, points in lines if points]
    if not lines:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for label, points in lines:
        ax.plot(*zip(*points, strict=True), marker="o", ms=3, label=label)
    ax.axhline(uniform_same_category(runs[0]), color="grey", ls="--", lw=1, label="uniform (naive)")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("step")
    ax.set_ylabel("same-category share of trust")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
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
        path = folder / f"curves_{readable_name(dataset)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def images(paths: Iterable[Path | None], folder: Path) -> str:
    """Markdown image links to the written plots, relative to the report in `folder`."""
    return "\n".join(f"![{p.stem}]({p.relative_to(folder).as_posix()})" for p in paths if p is not None)


def write_run_report(run: dict[str, Any]) -> tuple[Path, str]:
    """RUN/report/: `client_curves.png`, `trust_rounds.png` and `same_category.png` (where the run
    aggregated) and `report.md`; returns the report's path and the before -> after table."""
    folder = Path(run["folder"]) / REPORT_DIR
    folder.mkdir(exist_ok=True)
    label = run_strategy(run)
    plots = [
        plot_client_curves([run], folder / "client_curves.png", [label]),
        plot_trust_rounds(run, folder / "trust_rounds.png"),
        plot_same_category([run], folder / "same_category.png", [label]),
    ]
    table = before_after(run)
    text = (
        f"# {label} on {run_dataset(run)} ({len(run['final']['clients'])} clients, seed {run_seed(run)})\n\n"
        f"Validation perplexity per client (the category most of its data is from), before -> after:\n\n"
        f"```\n{table}\n```\n\n" + images(plots, folder) + "\n"
    )
    if run.get("warnings"):
        text += "\nWarnings of the run:\n\n" + "\n".join(f"- {w}" for w in run["warnings"]) + "\n"
    report = folder / "report.md"
    report.write_text(text)
    return report, table


def write_grid_report(runs: list[dict[str, Any]], root: Path, strategies: list[str] | None = None) -> tuple[Path, str]:
    """ROOT/report.md: the seed table, the paired table and the mean curves per dataset; returns its
    path and the two tables."""
    tables = seed_table(runs, strategies) + "\n\n" + paired_table(runs, strategies)
    plots = plot_seed_curves(runs, root)
    text = (
        "Final mean validation perplexity over clients, mean ± std over seeds (best per column in bold), then "
        "per seed each strategy against `none` and `naive` on the same seed (relative difference of the final "
        "mean perplexity, and on how many seeds it is lower), and the share of its trust rows on same-category "
        "clients at the last aggregation.\n\n" + tables + "\n\n" + images(plots, root) + "\n"
    )
    report = root / "report.md"
    report.write_text(text)
    return report, tables


@dataclass(frozen=True)
class ReportConfig:
    """Which runs the report covers, and the order of its tables' rows."""

    GROUP: ClassVar[str] = "report"

    path: Path | None = option(None, "a run folder, or a folder of runs (searched recursively)")
    strategies: tuple[str, ...] | None = option(None, "row order of the grid's tables (default: alphabetical)")

    def __post_init__(self) -> None:
        if self.path is not None:
            object.__setattr__(self, "path", Path(self.path))


def _request(groups: dict) -> ReportConfig:
    config: ReportConfig = groups["report"]
    if config.path is None:
        raise ConfigError("give a run folder or a folder of runs: PATH (or --report.path PATH).")
    return config


def command() -> Command[ReportConfig]:
    """`python -m collab.report`'s command."""
    return Command("python -m collab.report", __doc__, [ReportConfig], _request, positional=("report.path", "PATH"))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        asked = command().parse(argv)
        assert asked.path is not None  # _request checks
        path, strategies = asked.path, list(asked.strategies) if asked.strategies else None
        found = load_summaries(path)
        runs = [r for r in found if has_curves(r)]
        for r in found:
            if not has_curves(r):
                print(f"note: {r['folder']} skipped: its summary.json has no per-client curves (an older Flower run)")
        if not runs:
            raise ConfigError(f"no finished run with per-client curves (summary.json) under {path}.")
    except FixableError as err:
        fail(err)
    single = (path / SUMMARY_FILE).is_file()
    for r in runs:
        report, table = write_run_report(r)
        if single:
            print(f"{run_strategy(r)} on {run_dataset(r)}, validation perplexity per client:\n{table}")
            print(f"\nwrote {report} and its plots")
        else:
            first, final = r["curves"][0]["mean"]["ppl"], final_mean_ppl(r)
            print(f"{r['folder']}: mean ppl {first:.2f} -> {final:.2f} ({final / first - 1:+.1%})")
    if not single:
        report, tables = write_grid_report(runs, path, strategies)
        print(f"\n{tables}\n\nwrote {report}, and each run's report/ folder")
    return 0


if __name__ == "__main__":
    sys.exit(main())
