"""Turn a folder of finished runs into a markdown table and plots.

Example:

    python scripts/report.py runs/reproduce        # writes runs/reproduce/report.md and PNGs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from collab.report import load_summaries, paired_table, plot_seed_curves, seed_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, help="folder holding run folders (searched recursively)")
    p.add_argument("--strategies", nargs="+", default=None, help="row order (default: alphabetical)")
    args = p.parse_args(argv)
    runs = load_summaries(args.root)
    if not runs:
        p.exit(2, f"error: no finished run (summary.json) under {args.root}.\n")
    table = seed_table(runs, args.strategies)
    paired = paired_table(runs, args.strategies)
    plots = plot_seed_curves(runs, args.root)
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
    (args.root / "report.md").write_text(text)
    print(table + "\n\n" + paired)
    print(f"\nwrote {args.root / 'report.md'} and {len(plots)} plot(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
