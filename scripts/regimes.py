"""Which trust strategy wins depends on the clients: every strategy on several regimes of clients,
three seeds each, and a table of mean perplexities, ranks and paired differences.

Each regime is a set of clients built from the offline corpora (`data.recipes`), run with the main
job's settings (`collab.fit --profile demo`) cut by `CUT` so that the grid fits a CPU; the stronger
base is the offline base pretrained `--strong_steps` steps instead of 400. Every (regime, strategy,
seed) run has its folder `OUT/REGIME/STRATEGY/seedSEED`; finished runs (a `summary.json`) are
skipped, so an interrupted grid resumes. The table goes to `--table` (Markdown).

    python scripts/regimes.py                       # the reported grid: seeds 0-2
    python scripts/regimes.py --seeds 100 --strategies learned learned-4 --out runs/regimes-tuning   # tuning
    python scripts/regimes.py --table_only          # the table from the finished runs
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from collab.cli import fit_command
from collab.fit import run
from collab.run_folder import RunFolder
from collab.run_ledger import Figures, RunLedger, base_tag
from lora_gpt.cli import Command, fail
from lora_gpt.errors import ConfigError, FixableError
from lora_gpt.options import flag_name, option, require

PROFILE = "demo"
# The cut from the main job's settings (100 steps of 2 x 128 tokens, 4,000 val and 2,100 trust tokens
# per client, evaluations every 20 steps), so that the grid runs in about an hour and a half on one
# CPU core: 60 steps of 2 x 64 tokens (aggregations after steps 20, 30, ..., 60), 2,000 val and 1,000
# trust tokens, evaluation at the start and the end only.
CUT = (
    "--iterations", "60",
    "--eval_freq", "60",
    "--sequence_length", "64",
    "--val_tokens", "2000",
    "--trust_tokens", "1000",
    "--ref_tokens", "2000",
    "--eval_batches", "8",
)  # fmt: skip
STRATEGIES = ("none", "naive", "static", "dynamic", "dynamic-ref", "dynamic-token", "fedfomo", "apfl", "learned")
FIXED = ("none", "naive")  # the two ends: train alone, average with everyone
NEW = "learned"
# Rows of `NEW` with other options, run where asked (--strategies), never counted among the others:
# on the whole trust split, on a quarter of it, and the first version (every third aggregation, whole split)
VARIANTS = {
    "learned-whole": ("learned", "--trust_parts", "1"),
    "learned-4": ("learned", "--trust_parts", "4"),
    "learned-every3": ("learned", "--trust_learn_every", "3", "--trust_parts", "1"),
}
COSTED = (NEW,)  # timed against `none` at the main job's own settings (--cost)
LEDGER = Path("benchmarks/results/regimes_runs.json")  # each finished run's figures, by base and folder


@dataclass(frozen=True)
class Regime:
    name: str
    recipe: str
    clients: int
    what: str
    strong_base: bool = False


REGIMES = (
    Regime("languages", "offline_multi_specific", 6, "the main job's clients: two each of French, German, Italian"),
    Regime("one-text", "offline_manual_specific", 4, "one text (the Debian Reference) in four languages, one each"),
    Regime("topics", "offline_topics_specific", 4, "English fortunes, one topic per client"),
    Regime("code-prose", "offline_code_prose_specific", 4, "two Java clients, two English prose clients"),
    Regime("outlier", "offline_outlier_specific", 6, "five sources of English prose and one Java client"),
    Regime("strong-base", "offline_multi_specific", 6, "the main job's clients on a longer-pretrained base", True),
)


@dataclass(frozen=True)
class RegimesConfig:
    """The grid of regimes, strategies and seeds, where its runs and table go."""

    GROUP: ClassVar[str] = "regimes"

    regimes: tuple[str, ...] = option(tuple(r.name for r in REGIMES), "regimes: " + ", ".join(r.name for r in REGIMES))
    strategies: tuple[str, ...] = option(
        STRATEGIES,
        "trust strategies to run (collab.fit's --trust), or "
        + ", ".join(f"{k} ({' '.join(v)})" for k, v in VARIANTS.items())
        + " (the table shows every strategy the ledger holds)",
    )
    seeds: tuple[int, ...] = option((0, 1, 2), "seeds (tune on others: 100 and up)")
    strong_steps: int = option(800, "pretraining steps of the stronger base (the default base: 400)")
    out: Path = option(Path("runs/regimes"), "OUT/REGIME/STRATEGY/seedSEED")
    table: Path = option(Path("benchmarks/results/regimes_cpu.md"), "where the table goes")
    table_only: bool = option(False, "run nothing: the table from the finished runs")
    cost: bool = option(True, f"also time `none` and {', '.join(COSTED)} at the main job's own settings (OUT/cost)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "table", Path(self.table))
        unknown = sorted(set(self.regimes) - {r.name for r in REGIMES})
        if unknown:
            raise ConfigError(f"{flag_name(self, 'regimes')}: unknown regime {', '.join(unknown)}.")
        require(self, "seeds", len(self.seeds) > 0 and all(s >= 0 for s in self.seeds), "at least one, >= 0")
        require(self, "strong_steps", self.strong_steps >= 1, ">= 1")


def command() -> Command[RegimesConfig]:
    return Command("python scripts/regimes.py", __doc__, [RegimesConfig], lambda groups: groups["regimes"])


def strong_base(steps: int) -> Path:
    """The offline base pretrained `steps` steps (built once, cached like the default one)."""
    from data.offline_base import offline_base
    from lora_gpt.pretrain import PretrainConfig

    return offline_base(PretrainConfig(steps=steps))


def fit_options(regime: Regime, strategy: str, seed: int, folder: Path, steps: int) -> list[str]:
    return [
        "--profile", PROFILE, *CUT,
        "--dataset", regime.recipe,
        "--num_clients", str(regime.clients),
        "--trust", *VARIANTS.get(strategy, (strategy,)),
        "--seed", str(seed),
        "--out", str(folder),
        "--no-progress",
        *(["--init", str(strong_base(steps))] if regime.strong_base else []),
    ]  # fmt: skip


def cost_options(strategy: str, folder: Path) -> list[str]:
    """The main job's run (its profile, uncut, seed 0) with `strategy`: what the cost target is set on."""
    trust = VARIANTS.get(strategy, (strategy,))
    return ["--profile", PROFILE, "--trust", *trust, "--out", str(folder), "--no-progress"]


def run_figures(folder: Path) -> Figures | None:
    """A finished run's mean validation perplexity over its clients at the end, and its training time."""
    summary = RunFolder(folder).summary
    if not summary.exists():
        return None
    read = json.loads(summary.read_text())
    return {"ppl": float(read["final"]["mean"]["ppl"]), "seconds": read.get("seconds")}


@functools.cache
def ledger() -> RunLedger:
    from data.offline_base import offline_base

    return RunLedger(LEDGER, base_tag(offline_base(progress=False)))


def finished(config: RegimesConfig, key: str, base: str | None = None) -> Figures | None:
    """The figures of run `key` (`REGIME/STRATEGY/seedSEED`, or `cost/STRATEGY`) measured with `base`
    (None: this machine's, read from its folder under `--out` where the ledger does not hold them)."""
    if base is None or base == ledger().base:
        return ledger().figures(key, config.out / key, run_figures)
    return ledger().get(key, base)


def regime_rows(ppl: dict[str, dict[int, float]], seeds: tuple[int, ...], reported: dict[str, float]) -> dict[str, Any]:
    """Per strategy its mean perplexity over the seeds (where it finished all of them; else as reported
    before the ledger kept runs), its rank, and the new strategy's paired difference against the best
    of the others."""
    means = {s: statistics.fmean(v[k] for k in seeds) for s, v in ppl.items() if all(k in v for k in seeds)}
    means |= {s: m for s, m in reported.items() if s not in means}
    ranked = sorted(means, key=lambda s: means[s])
    ranks = {s: 1 + sum(means[o] < means[s] for o in means if o not in VARIANTS) for s in ranked}  # ties share
    out: dict[str, Any] = {"means": means, "ranks": ranks}
    others = [s for s in ranked if s != NEW and s not in VARIANTS]
    if NEW in means and others:
        best = others[0]
        paired = all(k in ppl.get(s, {}) for s in (NEW, best) for k in seeds)
        out["best"] = best
        out["diffs"] = [100 * (ppl[NEW][k] / ppl[best][k] - 1) for k in seeds] if paired else None
        out["within_1pct"] = means[NEW] <= 1.01 * means[best]
        beats_fixed = [means[NEW] < means[f] for f in FIXED if f in means]
        out["beats_none_naive"] = all(beats_fixed) if best not in FIXED else None
    return out


def base_table(config: RegimesConfig, base: str) -> list[str]:
    """The tables of the runs measured with `base`: mean perplexity (rank) per strategy and regime,
    the targets, the time ratios."""
    chosen = [r for r in REGIMES if r.name in config.regimes]
    shown = list(dict.fromkeys((*STRATEGIES, *VARIANTS, *config.strategies)))

    def figures(regime: str, strategy: str, seed: int) -> Figures | None:
        return finished(config, f"{regime}/{strategy}/seed{seed}", base)

    results = {
        r.name: {s: {k: f["ppl"] for k in config.seeds if (f := figures(r.name, s, k)) is not None} for s in shown}
        for r in chosen
    }
    reported = {
        r.name: {s: float(f["ppl"]) for s in shown if (f := ledger().get(f"{r.name}/{s}/reported", base))}
        for r in chosen
    }
    rows = {name: regime_rows(ppl, config.seeds, reported[name]) for name, ppl in results.items()}
    lines = [
        f"Mean validation perplexity over seeds {', '.join(map(str, config.seeds))} (rank in the regime; "
        "lower is better). `-`: not every seed finished.",
        "",
        "| strategy | " + " | ".join(r.name for r in chosen) + " | mean rank |",
        "|---|" + "---|" * (len(chosen) + 1),
    ]
    for s in shown:
        cells, ranks = [], []
        for r in chosen:
            row = rows[r.name]
            if s in row["means"]:
                cells.append(f"{row['means'][s]:.1f} ({row['ranks'][s]})")
                ranks.append(row["ranks"][s])
            else:
                cells.append("-")
        if not ranks:
            continue
        mean_rank = f"{statistics.fmean(ranks):.1f}" if len(ranks) == len(chosen) else "-"
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {mean_rank} |")
    lines += [
        "",
        f"`{NEW}` against the best other strategy of each regime: its paired difference per seed (% of that "
        "strategy's perplexity; negative: better) and the targets (within 1% of the best; better than "
        "`none` and `naive` where the best is neither).",
        "",
        "| regime | best other | per seed | mean | within 1% | beats none and naive |",
        "|---|---|---|---|---|---|",
    ]
    for r in chosen:
        row = rows[r.name]
        if "best" not in row:
            lines.append(f"| {r.name} | - | - | - | - | - |")
            continue
        diffs = row["diffs"]
        per_seed = ", ".join(f"{d:+.1f}%" for d in diffs) if diffs else "-"
        mean = 100 * (row["means"][NEW] / row["means"][row["best"]] - 1)
        beats = {None: "n/a (best is none or naive)", True: "yes", False: "no"}[row["beats_none_naive"]]
        within = "yes" if row["within_1pct"] else "no"
        lines.append(f"| {r.name} | {row['best']} | {per_seed} | {mean:+.1f}% | {within} | {beats} |")
    seconds = {
        s: [f["seconds"] for r in chosen for k in config.seeds if (f := figures(r.name, s, k)) and f.get("seconds")]
        for s in shown
    }
    ratios = {
        s: statistics.median(t) / statistics.median(seconds["none"])
        for s, t in seconds.items()
        if t and seconds.get("none")
    }
    ratios |= {
        s: float(f["ratio"]) for s in shown if s not in ratios and (f := ledger().get(f"time/{s}/reported", base))
    }
    if ratios:
        lines += ["", "Training time over `none`'s, medians over the runs above (one CPU core, shared with others):"]
        lines += ["", *(f"- `{s}`: {r:.2f}x" for s, r in ratios.items())]
    costs = {s: f["seconds"] for s in ("none", NEW, *VARIANTS) if (f := finished(config, f"cost/{s}", base))}
    if "none" in costs and len(costs) > 1:
        lines += [
            "",
            f"At the main job's own settings (`--profile {PROFILE}`, seed 0), run back to back: "
            + ", ".join(f"`{s}` {t:.0f} s" for s, t in costs.items())
            + "; over `none`: "
            + ", ".join(f"`{s}` {t / costs['none']:.2f}x" for s, t in costs.items() if s != "none")
            + ".",
        ]
    return lines


def table(config: RegimesConfig) -> str:
    """The Markdown tables, one section per base that measured runs, the one with the most first."""
    lines = [
        "# Regimes: every trust strategy on six sets of clients (CPU)",
        "",
        "`python scripts/regimes.py` (docs: [Which strategy for which data](../choosing.md)): the main "
        f"job's settings (`--profile {PROFILE}`) cut to `{' '.join(CUT)}`, one CPU core shared with other jobs. "
        f"Each run's figures are kept in `{LEDGER}`, by the offline base it started from: pretraining is "
        "deterministic on one machine but not across machines, so each base has its own tables (named by the "
        "base's validation perplexity) and nothing is compared across bases.",
        "",
        "Variants of `learned`: " + "; ".join(f"`{k}`: `{' '.join(v[1:])}`" for k, v in VARIANTS.items()) + ".",
    ]
    for base in ledger().bases():
        lines += ["", f"## Base {base}" + (" (this machine's)" if base == ledger().base else ""), ""]
        lines += base_table(config, base)
    chosen = [r for r in REGIMES if r.name in config.regimes]
    lines += ["", "Regimes:", ""] + [f"- `{r.name}`: {r.what} (`{r.recipe}`, {r.clients} clients)." for r in chosen]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    try:
        config = command().parse(argv)
        chosen = [r for r in REGIMES if r.name in config.regimes]
        grid = [(r, s, k) for r in chosen for k in config.seeds for s in config.strategies]
        for strategy in ("none", *COSTED) if config.cost and not config.table_only else ():
            if finished(config, f"cost/{strategy}") is None:
                run(fit_command().parse(cost_options(strategy, config.out / "cost" / strategy)))
                finished(config, f"cost/{strategy}")
        todo = [g for g in grid if finished(config, f"{g[0].name}/{g[1]}/seed{g[2]}") is None]
        print(f"{len(grid)} runs in the grid, {len(grid) - len(todo)} finished, {len(todo)} to run.", flush=True)
        for i, (regime, strategy, seed) in enumerate([] if config.table_only else todo, 1):
            folder = config.out / regime.name / strategy / f"seed{seed}"
            start = time.time()
            run(fit_command().parse(fit_options(regime, strategy, seed, folder, config.strong_steps)))
            finished(config, f"{regime.name}/{strategy}/seed{seed}")
            print(f"[{i}/{len(todo)}] {regime.name} {strategy} seed {seed}: {time.time() - start:.0f} s", flush=True)
    except FixableError as err:
        fail(err)
    text = table(config)
    config.table.parent.mkdir(parents=True, exist_ok=True)
    config.table.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
