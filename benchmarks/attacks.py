"""Trust under attack: the main job's six honest clients plus k bad ones, every trust strategy and
Flower's robust rules, each paired with the same run without the bad clients.

Every run is `python -m collab.fit --profile demo` (six data-poor clients, two per language, on the
offline base) shortened to the benchmark's `PROFILE` (fewer steps and evaluation windows, so that
the grid fits a CPU), with `--attack.kind KIND --attack.bad K`. Per strategy and attack the table
gives the honest clients' mean final validation perplexity against the paired clean run (in %,
mean over seeds, and the worst seed) and the mean share of honest clients' trust on bad clients
over the aggregations. Runs already finished are read, not rerun, so a stopped grid resumes.

    python benchmarks/attacks.py --bad 1                  # the k=1 table, seeds 0 1 2
    python benchmarks/attacks.py --bad 2                  # the k=2 table
    python benchmarks/attacks.py --main-job               # the defence on the clean main job
    python benchmarks/attacks.py --report                 # only rewrite the tables and the plot

Cells that equal another by construction are not run: `mimicry` differs from `noise` only in the
reference predictions a bad client reports, which only `dynamic-token` reads, and
`--trust.token_source sent` changes nothing but those predictions; `none` never takes from peers
(one run per k shows its honest clients end as in the clean run).
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from collab.cli import fit_command
from collab.fit import run
from collab.run_ledger import Figures, RunLedger, base_tag

ROOT = Path("runs/attacks")
RESULTS = Path("benchmarks/results/attacks_cpu.md")
PLOT = Path("benchmarks/results/attacks_cpu.png")
LEDGER = Path("benchmarks/results/attacks_runs.json")  # each finished run's figures, by base and folder
# The main job's clients (--profile demo), shortened: 30 steps, aggregations at steps 10, 20 and 30,
# evaluation at the start and the end only, on 4 validation batches per client.
PROFILE = (
    "--profile", "demo",
    "--optim.iterations", "30",
    "--trust.pretraining_rounds", "10",
    "--trust.trust_freq", "10",
    "--run.eval_freq", "30",
    "--data.eval_batches", "4",
    "--run.accelerator", "cpu",
    "--no-progress",
)  # fmt: skip
TRUST = ("naive", "static", "dynamic", "dynamic-ref", "dynamic-token")
ROBUST = ("fedmedian", "fedtrimmedavg", "krum")  # one global model: their trust share says little (Krum: its pick)
ATTACKS = ("noise", "scaled", "sign-flip", "free-rider", "shuffled", "mislabel", "mimicry")
SENT = ("--trust.token_source", "sent")  # dynamic-token scores the predictions of the adapter sent
DEFENCE = (*SENT, "--trust.norm_bound", "2")  # and every adapter tensor is bounded to twice the round's median norm
DEFENDED_ATTACKS = ("noise", "scaled", "sign-flip", "mimicry")  # the defence's cells (time: not the other three)
MAIN_JOB = ("--profile", "demo", "--run.accelerator", "cpu", "--no-progress")  # scripts/demo.py's runs, unshortened


@dataclass(frozen=True)
class Row:
    """A table row: a strategy, with options beyond the strategy's name."""

    label: str
    strategy: str
    options: tuple[str, ...] = ()

    @property
    def folder(self) -> str:
        return self.label.replace(" ", "_").replace(",", "").replace("=", "-")


ROWS = [
    Row("none", "none"),
    *(Row(s, s) for s in TRUST),
    Row("dynamic-token, token_source=sent", "dynamic-token", SENT),
    Row("dynamic-token, defended", "dynamic-token", DEFENCE),
    Row("dynamic-token-thresh, defended", "dynamic-token-thresh", DEFENCE),  # and a floor on a peer's score
    Row("learned", "learned"),  # trust that learns how much, from each client's own held-out loss
    *(Row(s, s) for s in ROBUST),
]


def cells(row: Row, seeds: Sequence[int]) -> list[tuple[str, int]]:
    """The (attack, seed) runs a row needs beside its clean ones."""
    if row.label == "none":
        return [("noise", seeds[0])]
    if row.options == SENT:
        return [("mimicry", s) for s in seeds]
    if row.options == DEFENCE:
        return [(a, s) for a in DEFENDED_ATTACKS for s in seeds]
    attacks = ATTACKS if row.strategy == "dynamic-token" else ATTACKS[:-1]
    return [(a, s) for a in attacks for s in seeds]


def folder(row: Row, attack: str, bad: int, seed: int) -> Path:
    clean = attack == "clean"
    return (
        ROOT
        / (row.folder if not (clean and row.options == SENT) else "dynamic-token")
        / ("clean" if clean else f"{attack}-k{bad}")
        / f"seed{seed}"
    )


def ensure(row: Row, attack: str, bad: int, seed: int) -> None:
    """Run it unless the ledger or its folder holds it finished (a partial folder restarts)."""
    out = folder(row, attack, bad, seed)
    if finished(out) is not None:
        return
    if out.exists():
        shutil.rmtree(out)
    argv = [*PROFILE, "--trust.strategy", row.strategy, *row.options, "--run.seed", str(seed), "--run.out", str(out)]
    if attack != "clean":
        argv += ["--attack.kind", attack, "--attack.bad", str(bad)]
    print("run:", out, flush=True)
    run(fit_command().parse(argv))
    finished(out)


def run_figures(out: Path) -> Figures | None:
    """What the tables read of a finished run: the honest clients' mean final validation perplexity
    (a clean run: every client's), each client's, and the share of trust on bad clients."""
    file = out / "summary.json"
    if not file.exists():
        return None
    summary = json.loads(file.read_text())
    figures: Figures = {"honest_ppl": honest_ppl(summary), "ppl": [c["ppl"] for c in summary["final"]["clients"]]}
    if "attack" in summary:
        figures["trust_on_bad"] = trust_on_bad(summary)
    return figures


@functools.cache
def ledger() -> RunLedger:
    from data.offline_base import offline_base

    return RunLedger(LEDGER, base_tag(offline_base(progress=False)))


def finished(out: Path, base: str | None = None) -> Figures | None:
    """The figures of the run in `out` measured with `base` (None: this machine's, read from its
    folder where the ledger does not hold them yet)."""
    key = out.relative_to(ROOT).as_posix()
    if base is None or base == ledger().base:
        return ledger().figures(key, out, run_figures)
    return ledger().get(key, base)


def honest_ppl(summary: dict[str, Any]) -> float:
    """The honest clients' mean final validation perplexity (a clean run: every client's)."""
    if "attack" in summary:
        return float(summary["attack"]["honest_final"]["ppl"])
    return float(summary["final"]["mean"]["ppl"])


def trust_on_bad(summary: dict[str, Any]) -> float:
    rounds = summary["attack"]["rounds"]
    return sum(r["honest_trust_on_bad"] for r in rounds) / len(rounds)


def cell(row: Row, attack: str, bad: int, seeds: Sequence[int]) -> Figures | None:
    """The honest ppl change vs clean (%) and the trust on bad clients, each as [mean, worst], the seed
    count and the base, over the seeds with both runs finished on one base (or as reported before the
    ledger kept runs): from the base with the most seeds, the ledger's main base first among equals."""
    found: list[Figures] = []
    for base in ledger().bases():
        change, share = [], []
        for s in seeds:
            attacked, clean = finished(folder(row, attack, bad, s), base), finished(folder(row, "clean", bad, s), base)
            if attacked is None or clean is None:
                continue
            change.append(100 * (attacked["honest_ppl"] / clean["honest_ppl"] - 1))
            share.append(attacked["trust_on_bad"])
        if change:
            found.append(
                {
                    "change": [statistics.mean(change), max(change)],
                    "share": [statistics.mean(share), max(share)],
                    "seeds": len(change),
                    "base": base,
                }
            )
        earlier = ledger().get(f"{row.folder}/{attack}-k{bad}/reported", base)
        if earlier is not None:
            found.append({**earlier, "base": base})
    return max(found, key=lambda f: int(f["seeds"]), default=None)  # max keeps the first of equals


def clean_ppl(row: Row, bad: int, seeds: Sequence[int]) -> list[tuple[float, str]]:
    """The paired clean runs' mean perplexity on each base that has them (or as reported), and the base."""
    found = []
    for base in ledger().bases():
        runs = [f["honest_ppl"] for s in seeds if (f := finished(folder(row, "clean", bad, s), base)) is not None]
        earlier = ledger().get(f"{row.folder}/clean/reported", base)
        if runs:
            found.append((statistics.mean(runs), base))
        elif earlier is not None:
            found.append((float(earlier["ppl"]), base))
    return found


def marked(text: str, base: str) -> str:
    """A cell's text, marked where a base other than the ledger's main one measured it."""
    return text if base == ledger().bases()[0] else f"{text} ‡"


def table(bad: int, seeds: Sequence[int]) -> tuple[list[str], dict[tuple[str, str], tuple[float, float]]]:
    """The markdown tables for k=`bad` (perplexity change, then trust on bad clients), and the mean
    cells for the plot."""
    head = [f"| strategy | clean ppl | {' | '.join(ATTACKS)} |", "|---" * (len(ATTACKS) + 2) + "|"]
    ppl_lines, share_lines = list(head), list(head)
    means: dict[tuple[str, str], tuple[float, float]] = {}
    for row in ROWS:
        clean = clean_ppl(row, bad, seeds)
        ppl_texts, share_texts = [], []
        for attack in ATTACKS:
            runs = cells(row, seeds)
            if all(a != attack for a, _ in runs):
                if row.options == DEFENCE:
                    said = "not run"
                elif row.label == "none" or attack == "mimicry":
                    said = "as noise"
                else:
                    said = "as dynamic-token"
                ppl_texts.append(said)
                share_texts.append(said)
                continue
            got = cell(row, attack, bad, seeds)
            if got is None:
                ppl_texts.append("not run")
                share_texts.append("not run")
                continue
            (change, worst), share = got["change"], got["share"]
            means[(row.label, attack)] = (change, float("nan") if share is None else share[0])
            count = "" if got["seeds"] == len(seeds) else f" (n={got['seeds']})"
            ppl_texts.append(marked(f"{change:+.1f} [{worst:+.1f}]{count}", got["base"]))
            no_share = share is None or row.strategy in ROBUST[:2]
            share_texts.append(marked("-" if no_share else f"{share[0]:.1%} [{share[1]:.1%}]", got["base"]))
        ppl = " / ".join(marked(f"{value:.1f}", base) for value, base in clean) or "-"
        ppl_lines.append(f"| {row.label} | {ppl} | {' | '.join(ppl_texts)} |")
        share_lines.append(f"| {row.label} | {ppl} | {' | '.join(share_texts)} |")
    lines = [
        "Honest clients' mean final validation perplexity against the paired clean run, % (mean over seeds "
        "[worst seed]):",
        "",
        *ppl_lines,
        "",
        "Share of honest clients' trust on bad clients, mean over aggregations (mean over seeds [worst seed]):",
        "",
        *share_lines,
    ]
    return lines, means


def plot(means: dict[int, dict[tuple[str, str], tuple[float, float]]]) -> None:
    """Per strategy and attack, the honest clients' perplexity change (left) and their trust on bad
    clients (right), one row of panels per k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(k for k in means if means[k])
    fig, axes = plt.subplots(len(ks), 2, figsize=(15, 3.8 * len(ks) + 0.6), squeeze=False)
    labels = [r.label.replace(", token_source=sent", "\n(token_source sent)") for r in ROWS if r.label != "none"]
    keys = [r.label for r in ROWS if r.label != "none"]
    width = 0.8 / len(ATTACKS)
    for row, k in zip(axes, ks, strict=True):
        for panel, (ax, what) in enumerate(
            zip(row, ("honest val ppl vs clean (%)", "honest trust on bad"), strict=True)
        ):
            for a, attack in enumerate(ATTACKS):
                values = [means[k].get((key, attack), (float("nan"), float("nan")))[panel] for key in keys]
                if panel == 1:
                    values = [v if key not in ROBUST[:2] else float("nan") for v, key in zip(values, keys, strict=True)]
                ax.bar([i + a * width for i in range(len(keys))], values, width, label=attack)
            ticks = [i + 0.4 - width / 2 for i in range(len(keys))]
            ax.set_xticks(ticks, labels, rotation=30, ha="right", fontsize=7)
            ax.set_ylabel(what)
            if panel == 0:
                ax.axhline(2, color="k", linestyle="--", linewidth=0.8)
                ax.set_yscale("symlog", linthresh=5)
                ax.set_title(f"k = {k}: honest perplexity against the clean run (dashed: +2%)")
            else:
                ax.axhline(0.05, color="k", linestyle="--", linewidth=0.8)
                ax.set_ylim(0, 1)
                ax.set_title(f"k = {k}: share of honest trust on bad clients (dashed: 5%)")
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, ncol=len(ATTACKS), loc="upper center", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    fig.savefig(PLOT, dpi=100)


# The main job's dynamic-token row as it is, defended, and defended with a floor on the score a peer needs
MAIN_JOB_ROWS = (
    ("as it is", "dynamic-token", ()),
    ("defended", "dynamic-token", DEFENCE),
    ("floor, defended", "dynamic-token-thresh", DEFENCE),
)


def main_job_folder(strategy: str, options: Sequence[str]) -> Path:
    return ROOT / "main-job" / (strategy + ("-defended" if options else ""))


def main_job(run_missing: bool) -> list[str]:
    """The clean main job (`scripts/demo.py`'s dynamic-token row, seed 0) with and without the defences
    (`--trust.token_source sent` alone changes nothing without bad clients: the norm bound and the
    floor may), on each base that measured it."""
    lines = [
        "## The defence on the clean main job",
        "",
        f"`python -m collab.fit {' '.join(MAIN_JOB)} --trust.strategy dynamic-token` (seed 0, 100 steps), "
        f"without and with the defence (`{' '.join(DEFENCE)}`), and `dynamic-token-thresh` (its floor) with it:",
        "",
        "| dynamic-token | base | mean val ppl | per client | change |",
        "|---|---|---|---|---|",
    ]
    if run_missing:
        for _, strategy, options in MAIN_JOB_ROWS:
            out = main_job_folder(strategy, options)
            if finished(out) is None:
                shutil.rmtree(out, ignore_errors=True)
                print("run:", out, flush=True)
                run(fit_command().parse([*MAIN_JOB, "--trust.strategy", strategy, *options, "--run.out", str(out)]))
    for base in ledger().bases():
        results = {label: finished(main_job_folder(s, o), base) for label, s, o in MAIN_JOB_ROWS}
        plain = results["as it is"]
        for label, figures in results.items():
            if figures is None:
                continue
            ppl = figures["honest_ppl"]
            per = ", ".join(f"{p:.1f}" for p in figures["ppl"])
            change = f"{100 * (ppl / plain['honest_ppl'] - 1):+.2f}%" if plain is not None else "-"
            lines.append(f"| {label} | {base} | {ppl:.1f} | {per} | {change} |")
    return [*lines, ""]


def report(seeds: Sequence[int]) -> None:
    """Write the tables (and the plot) of every finished run."""
    lines = [
        "# Trust under attack (CPU)",
        "",
        "`python benchmarks/attacks.py --bad K` writes this file from every finished run under `runs/attacks/` "
        f"(seeds {' '.join(map(str, seeds))}). Every run: `python -m collab.fit {' '.join(PROFILE)}` with its "
        "strategy, and `--attack.kind KIND --attack.bad K` (bad clients after the six honest ones, posing as "
        "clients 0 and, for k=2, 3). Clean ppl: the paired clean runs' mean final validation perplexity. The "
        "trust share is not given for fedmedian and fedtrimmedavg, whose coordinate-wise rules weigh no client; "
        "krum's is how often it picked a bad client. `dynamic-token, defended`: `"
        f"{' '.join(DEFENCE)}`, run on the attacks {', '.join(DEFENDED_ATTACKS)} only (time), against clean runs "
        "with the same options; `dynamic-token-thresh, defended` adds the floor of the `-thresh` variant (a peer "
        "scoring under -2.5, where each row's scores sum to -10, gets no trust; each row keeps its best two). "
        f"Cells marked ‡ were measured with another machine's build of the offline base (validation perplexity "
        f"{', '.join(ledger().bases()[1:]) or '-'}; the other cells: {ledger().bases()[0]}): pretraining is "
        "deterministic on one machine, not across machines, "
        "and a cell pairs runs of one base. Cells marked `as noise` or `as dynamic-token` equal that "
        "cell by construction and were not run (the script's docstring says why); `none`'s one run per k shows "
        "its honest clients end exactly as without the bad clients.",
        "",
    ]
    means = {}
    for bad in (1, 2):
        rows, means[bad] = table(bad, seeds)
        lines += [f"## k = {bad}", "", *rows, ""]
    lines += main_job(run_missing=False)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    plot(means)
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bad", type=int, choices=(1, 2), help="run the grid with this many bad clients")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", nargs="+", default=[r.label for r in ROWS], help="only these rows (labels), in this order")
    p.add_argument("--main-job", action="store_true", help="run the clean main job with and without the defence")
    p.add_argument("--report", action="store_true", help="only rewrite the tables and the plot")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.main_job and not args.report:
        main_job(run_missing=True)
    if args.bad is not None and not args.report:
        by_label = {r.label: r for r in ROWS}
        unknown = [label for label in args.rows if label not in by_label]
        if unknown:
            p.error(f"--rows: unknown {unknown}; choose from {list(by_label)}")
        rows = [by_label[label] for label in args.rows]  # in the order given: the first run first
        for seed in args.seeds:  # seed by seed, so that a stopped grid has whole seeds
            for row in rows:
                if row.label == "none" and seed != args.seeds[0]:
                    continue
                if row.options != SENT:  # its clean runs are dynamic-token's: without bad clients it is the same
                    ensure(row, "clean", args.bad, seed)
                for attack, s in cells(row, [seed]):
                    ensure(row, attack, args.bad, s)
            report(args.seeds)
    report(args.seeds)


if __name__ == "__main__":
    main()
