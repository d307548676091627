"""Turn a folder of finished runs into a markdown table and plots.

Example:

    python scripts/report.py runs/reproduce        # writes runs/reproduce/report.md and PNGs
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from collab.report import load_summaries, paired_table, plot_seed_curves, seed_table
from lora_gpt.cli import Command, fail
from lora_gpt.errors import ConfigError, FixableError
from lora_gpt.options import option


@dataclass(frozen=True)
class ReportConfig:
    """Which runs the report covers, and its rows' order."""

    GROUP: ClassVar[str] = "report"

    root: Path | None = option(None, "folder holding run folders (searched recursively)")
    strategies: tuple[str, ...] | None = option(None, "row order (default: alphabetical)")

    def __post_init__(self) -> None:
        if self.root is not None:
            object.__setattr__(self, "root", Path(self.root))


def _request(groups: dict) -> tuple[Path, list[str] | None]:
    """`(root, strategies)`, refusing a request without the folder."""
    config: ReportConfig = groups["report"]
    if config.root is None:
        raise ConfigError("give the folder of runs: ROOT (or --report.root ROOT).")
    return config.root, list(config.strategies) if config.strategies else None


def command() -> Command[tuple[Path, list[str] | None]]:
    return Command("python scripts/report.py", __doc__, [ReportConfig], _request, positional=("report.root", "ROOT"))


def main(argv: list[str] | None = None) -> int:
    try:
        root, strategies = command().parse(argv)
        runs = load_summaries(root)
        if not runs:
            raise ConfigError(f"no finished run (summary.json) under {root}.")
    except FixableError as err:
        fail(err)
    table = seed_table(runs, strategies)
    paired = paired_table(runs, strategies)
    plots = plot_seed_curves(runs, root)
    text = (
        "Final mean validation perplexity over clients, mean ± std over seeds (best per column in bold).\n\n"
        + table
        + "\n\nPer seed, each strategy against `none` and `naive` on the same seed (relative "
        "difference of the final mean perplexity, and on how many seeds it is lower), and the share of "
        "its trust rows on same-category clients at the last aggregation.\n\n"
        + paired
        + "\n\n"
        + "\n".join(f"![{p.stem}]({p.name})" for p in plots)
        + "\n"
    )
    (root / "report.md").write_text(text)
    print(table + "\n\n" + paired)
    print(f"\nwrote {root / 'report.md'} and {len(plots)} plot(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
