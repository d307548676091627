"""The main job on the embedded default: what trust buys clients whose data differ.

Builds (or reuses) the offline three-language dataset and the offline base model, then
fine-tunes the same data-poor clients once per trust strategy (same seed: every strategy sees
identical batches and dropout masks), and prints every client's validation perplexity before
fine-tuning (the base, step 0) and after, per strategy, with each dynamic strategy's share of
trust on same-language peers. Writes `client_curves.png` (per-client validation perplexity
against step, one panel per run) and `trust_heatmaps.png` (each dynamic run's last trust matrix).

    python scripts/demo.py                                  # the six strategies and one extra row
    python scripts/demo.py --runs none static dynamic-ref   # a subset (names from the table below)
    python scripts/demo.py --seed 1 --out runs/demo-seed1   # another draw of documents and batches
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from collab.cli import fit_command
from collab.fit import run
from collab.report import client_table, last_trust, load_summaries, plot_client_curves, plot_trust_heatmaps
from collab.run_folder import RunFolder
from lora_gpt.cli import Command, fail
from lora_gpt.errors import ConfigError, FixableError
from lora_gpt.options import flag_name, option, require

# The clients and the training (collab/configs/demo.yaml: six data-poor clients, two per language)
# come from collab.fit's demo profile; each row adds its own options.
PROFILE = "demo"


@dataclass(frozen=True)
class Run:
    name: str  # the row's label and its folder
    options: tuple[str, ...]  # collab.fit options beyond the profile


RUNS = [
    Run(s, ("--trust.strategy", s)) for s in ("none", "naive", "static", "dynamic", "dynamic-ref", "dynamic-token")
] + [
    # An extra row, not the paper's setting: its softmax of cosine similarities (temperature 1) is
    # nearly uniform here; a lower temperature lets the same similarities discriminate.
    Run("dynamic, temperature 0.05", ("--trust.strategy", "dynamic", "--trust.temperature", "0.05")),
]


@dataclass(frozen=True)
class DemoConfig:
    """Which rows run, on which draw of documents and batches, and where they go; any other option
    goes to every row's collab.fit."""

    GROUP: ClassVar[str] = "demo"

    runs: tuple[str, ...] = option(tuple(r.name for r in RUNS), "which rows to run: " + "; ".join(r.name for r in RUNS))
    seed: int = option(0, "collab.fit's --run.seed for every row")
    out: Path = option(Path("runs/demo"), "the rows' folders go here, with the table and plots")

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        unknown = sorted(set(self.runs) - {r.name for r in RUNS})
        if unknown:
            raise ConfigError(
                f"{flag_name(self, 'runs')}: unknown row {', '.join(unknown)}; choose from: "
                f"{'; '.join(r.name for r in RUNS)}"
            )
        require(self, "seed", self.seed >= 0, ">= 0")


def command() -> Command[DemoConfig]:
    return Command("python scripts/demo.py", __doc__, [DemoConfig], lambda groups: groups["demo"])


def folder_name(name: str) -> str:
    return name.replace(", ", "_").replace(" ", "-")


def train_epochs(summary: dict) -> float:
    """How many times over local training reads a client's train split."""
    config, budget = summary["config"], summary["dataset"]["budget"]
    tokens = (
        config["optim"]["iterations"]
        * config["optim"]["acc_steps"]
        * config["data"]["batch_size"]
        * (config["data"]["sequence_length"] + 1)
    )
    return tokens / budget["train"]


def describe(summary: dict, minutes: float, reused: int) -> str:
    budget, categories = summary["dataset"]["budget"], summary["dataset"]["categories"]
    config = summary["config"]
    owner = summary["dataset"]["client_categories"]
    return (
        f"{len(owner)} clients ({', '.join(f'{owner.count(c)} {name}' for c, name in enumerate(categories))}), "
        f"each with {budget['train']:,} train tokens, read {train_epochs(summary):.1f} times over in "
        f"{config['optim']['iterations']} steps of {config['data']['batch_size']} x "
        f"{config['data']['sequence_length']} tokens; validation on {budget['val']:,} held-out tokens per client; "
        f"{summary['precision']}; {minutes:.1f} min for this command"
        + (f" ({reused} finished runs reused, their time not counted)" if reused else "")
    )


def improvement(base: list[dict], final: list[dict]) -> str:
    return ", ".join(f"{1 - f['ppl'] / b['ppl']:.0%}" for b, f in zip(base, final, strict=True))


def main(argv: list[str] | None = None) -> int:
    start = time.time()
    reused = 0
    try:  # every row's options are checked before the first row runs
        args, fit_extra = command().parse_known(argv)
        chosen = [r for r in RUNS if r.name in args.runs]
        folders = [RunFolder(args.out / folder_name(r.name)) for r in chosen]
        configs = [
            fit_command().parse(
                ["--profile", PROFILE, "--run.seed", str(args.seed), "--run.out", str(f.path), *r.options, *fit_extra]
            )
            for r, f in zip(chosen, folders, strict=True)
        ]
        for r, folder, config in zip(chosen, folders, configs, strict=True):
            if folder.finished():
                print(f"{r.name}: finished earlier, reusing {folder.path}")
                reused += 1
                continue
            print(f"\n=== {r.name} ===", flush=True)
            run(config)
    except FixableError as err:
        fail(err)
    runs = [load_summaries(folder.path)[0] for folder in folders]
    labels = [r.name for r in chosen]
    print(f"\n{describe(runs[0], (time.time() - start) / 60, reused)}.\n")
    print("Validation perplexity per client, before fine-tuning (the base) and after; lower is better:\n")
    print(client_table(runs, labels))
    base = runs[0]["curves"][0]["clients"]
    print(
        "\nBelow the base's perplexity, per client: "
        + "; ".join(
            f"{label} {improvement(base, r['final']['clients'])}" for label, r in zip(labels, runs, strict=True)
        )
    )
    shares = [(label, last_trust(r)) for label, r in zip(labels, runs, strict=True)]
    print(
        "Share of each row's trust on same-language clients at the last aggregation: "
        + ", ".join(
            f"{label} {record['quality']['same_category']:.2f}"
            for label, record in shares
            if record and record.get("quality")
        )
    )
    curves = plot_client_curves(runs, args.out / "client_curves.png", labels)
    dynamic = [(r, label) for r, label in zip(runs, labels, strict=True) if label.startswith("dynamic")]
    heatmaps = (
        plot_trust_heatmaps([r for r, _ in dynamic], args.out / "trust_heatmaps.png", [label for _, label in dynamic])
        if dynamic
        else None
    )
    (args.out / "table.md").write_text(client_table(runs, labels) + "\n")
    (args.out / "runs.json").write_text(
        json.dumps({label: r["folder"] for label, r in zip(labels, runs, strict=True)}, indent=1)
    )
    print(f"\nwrote {args.out / 'table.md'}, {curves}" + (f", {heatmaps}" if heatmaps else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
