"""Which trust strategy wins depends on the clients: every strategy on several regimes of clients,
three seeds each, and a table of mean perplexities, ranks and paired differences.

Each regime is a set of clients built from the offline corpora (`data.recipes`), run with the main
job's settings (`collab.fit --profile demo`) cut by `CUT` so that the grid fits a CPU; the stronger
base is the offline base pretrained `--strong_steps` steps instead of 400. Every (regime, strategy,
seed) run has its folder `OUT/REGIME/STRATEGY/seedSEED`; finished runs (a `summary.json`) are
skipped, so an interrupted grid resumes. The table goes to `--table` (Markdown).

    python scripts/regimes.py                       # the reported grid: seeds 0-2
    python scripts/regimes.py --seeds 100 --out runs/regimes-tuning   # tuning seeds
    python scripts/regimes.py --table_only          # the table from the finished runs
"""

from __future__ import annotations

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
# Rows of `NEW` with other options, run where asked (--strategies), never counted among the others
VARIANTS = {"learned-each": ("learned", "--trust_learn_every", "1")}  # rows chosen at every aggregation


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
        (*STRATEGIES, *VARIANTS),
        "trust strategies (collab.fit's --trust), or " + ", ".join(f"{k} ({' '.join(v)})" for k, v in VARIANTS.items()),
    )
    seeds: tuple[int, ...] = option((0, 1, 2), "seeds (tune on others: 100 and up)")
    strong_steps: int = option(800, "pretraining steps of the stronger base (the default base: 400)")
    out: Path = option(Path("runs/regimes"), "OUT/REGIME/STRATEGY/seedSEED")
    table: Path = option(Path("benchmarks/results/regimes_cpu.md"), "where the table goes")
    table_only: bool = option(False, "run nothing: the table from the finished runs")
    cost: bool = option(True, f"also time `none` and `{NEW}` at the main job's own settings (OUT/cost)")

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
    return ["--profile", PROFILE, "--trust", strategy, "--out", str(folder), "--no-progress"]


def final_ppl(folder: Path) -> float | None:
    """The run's mean validation perplexity over its clients at the end (None: not finished)."""
    summary = RunFolder(folder).summary
    if not summary.exists():
        return None
    return float(json.loads(summary.read_text())["final"]["mean"]["ppl"])


def run_seconds(folder: Path) -> float | None:
    summary = RunFolder(folder).summary
    return json.loads(summary.read_text()).get("seconds") if summary.exists() else None


def regime_rows(ppl: dict[str, dict[int, float]], seeds: tuple[int, ...]) -> dict[str, Any]:
    """Per strategy its mean perplexity over the seeds it finished all of, its rank, and the new
    strategy's paired difference against the best of the others."""
    means = {s: statistics.fmean(v[k] for k in seeds) for s, v in ppl.items() if all(k in v for k in seeds)}
    ranked = sorted(means, key=lambda s: means[s])
    ranks = {s: 1 + sum(means[o] < means[s] for o in means if o not in VARIANTS) for s in ranked}  # ties share
    out: dict[str, Any] = {"means": means, "ranks": ranks}
    others = [s for s in ranked if s != NEW and s not in VARIANTS]
    if NEW in means and others:
        best = others[0]
        diffs = [100 * (ppl[NEW][k] / ppl[best][k] - 1) for k in seeds]
        out["best"], out["diffs"] = best, diffs
        out["within_1pct"] = means[NEW] <= 1.01 * means[best]
        beats_fixed = [means[NEW] < means[f] for f in FIXED if f in means]
        out["beats_none_naive"] = all(beats_fixed) if best not in FIXED else None
    return out


def table(config: RegimesConfig) -> str:
    """The Markdown table: mean perplexity (rank) per strategy and regime, then the targets."""
    chosen = [r for r in REGIMES if r.name in config.regimes]
    results = {
        r.name: {
            s: {k: p for k in config.seeds if (p := final_ppl(config.out / r.name / s / f"seed{k}")) is not None}
            for s in config.strategies
        }
        for r in chosen
    }
    rows = {name: regime_rows(ppl, config.seeds) for name, ppl in results.items()}
    lines = [
        "# Regimes: every trust strategy on six sets of clients (CPU)",
        "",
        "`python scripts/regimes.py` (docs: [Which strategy for which data](../choosing.md)): the main "
        f"job's settings (`--profile {PROFILE}`) cut to `{' '.join(CUT)}`, one CPU core shared with other jobs.",
        "",
        f"Mean validation perplexity over seeds {', '.join(map(str, config.seeds))} (rank in the regime; "
        "lower is better). `-`: not every seed finished.",
        "",
        "| strategy | " + " | ".join(r.name for r in chosen) + " | mean rank |",
        "|---|" + "---|" * (len(chosen) + 1),
    ]
    for s in config.strategies:
        cells, ranks = [], []
        for r in chosen:
            row = rows[r.name]
            if s in row["means"]:
                cells.append(f"{row['means'][s]:.1f} ({row['ranks'][s]})")
                ranks.append(row["ranks"][s])
            else:
                cells.append("-")
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
        beats = {None: "n/a (best is none or naive)", True: "yes", False: "no"}[row["beats_none_naive"]]
        lines.append(
            f"| {r.name} | {row['best']} | {', '.join(f'{d:+.1f}%' for d in diffs)} | "
            f"{statistics.fmean(diffs):+.1f}% | {'yes' if row['within_1pct'] else 'no'} | {beats} |"
        )
    seconds = {
        s: [t for r in chosen for k in config.seeds if (t := run_seconds(config.out / r.name / s / f"seed{k}"))]
        for s in config.strategies
    }
    lines += [
        "",
        "Training time over `none`'s, medians over the runs above (one CPU core, shared with other jobs):",
        "",
    ]
    lines += [
        f"- `{s}`: {statistics.median(seconds[s]) / statistics.median(seconds['none']):.2f}x"
        for s in config.strategies
        if seconds.get(s) and seconds.get("none")
    ]
    alone, new = (run_seconds(config.out / "cost" / s) for s in ("none", NEW))
    if alone and new:
        lines += [
            "",
            f"At the main job's own settings (`--profile demo`, seed 0), run back to back: `none` "
            f"{alone:.0f} s, `{NEW}` {new:.0f} s, {new / alone:.2f}x.",
        ]
    lines += ["", "Regimes:", ""] + [f"- `{r.name}`: {r.what} (`{r.recipe}`, {r.clients} clients)." for r in chosen]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    try:
        config = command().parse(argv)
        chosen = [r for r in REGIMES if r.name in config.regimes]
        grid = [(r, s, k) for r in chosen for k in config.seeds for s in config.strategies]
        for strategy in ("none", NEW) if config.cost and not config.table_only else ():
            if final_ppl(config.out / "cost" / strategy) is None:
                run(fit_command().parse(cost_options(strategy, config.out / "cost" / strategy)))
        todo = [g for g in grid if final_ppl(config.out / g[0].name / g[1] / f"seed{g[2]}") is None]
        print(f"{len(grid)} runs in the grid, {len(grid) - len(todo)} finished, {len(todo)} to run.", flush=True)
        for i, (regime, strategy, seed) in enumerate([] if config.table_only else todo, 1):
            folder = config.out / regime.name / strategy / f"seed{seed}"
            start = time.time()
            run(fit_command().parse(fit_options(regime, strategy, seed, folder, config.strong_steps)))
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
