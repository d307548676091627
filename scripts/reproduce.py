"""Seed-repeat reproduction: run every (strategy, recipe, seed) of a grid with `collab.fit`.

The default grid is the paper's: six strategies, the six recipes with 4, 8, 9, 9, 8 and 8
clients, ten seeds. Each run has its folder `OUT/RECIPE[-nCLIENTS]/STRATEGY/seedSEED`. Finished
runs (a `summary.json` in their folder) are skipped, so an interrupted grid resumes; an
interrupted run resumes from its last checkpoint. Options after
`--` go to every `collab.fit` call.

    python scripts/reproduce.py                                   # the paper's grid
    python scripts/reproduce.py --recipes offline_multi_specific:6 --seeds 0 1 2 \\
        --strategies none naive static dynamic -- --iterations 60
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from collab.report import SUMMARY_FILE
from collab.trust import Strategy

PAPER_STRATEGIES = ["none", "naive", "static", "dynamic", "dynamic-ref", "dynamic-token"]
PAPER_RECIPES = ["agnews_mixed:4", "agnews_specific:8", "three_multi_mixed:9", "three_multi_specific:9",
                 "github_wiki_mixed:8", "github_wiki_specific:8"]


def parse_recipe(spec: str, known: list[str]) -> tuple[str, int | None]:
    name, _, clients = spec.partition(":")
    if name not in known and not Path(name).exists():
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(known)} (or a path to your own data).")
    if clients and (not clients.isdigit() or int(clients) < 1):
        raise ValueError(f"bad client count in {spec!r}; write RECIPE or RECIPE:CLIENTS.")
    return name, int(clients) if clients else None


def run_folder(root: Path, strategy: str, recipe: str, clients: int | None, seed: int) -> Path:
    """Where one run of the grid lives: both the finished-run check and the run use it, and the
    client count is part of it, so `R:4` and `R:8` never share a folder."""
    name = recipe.replace("/", "_") + (f"-n{clients}" if clients else "")
    return root / name / strategy / f"seed{seed}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    fit_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", nargs="+", default=PAPER_STRATEGIES)
    p.add_argument("--recipes", nargs="+", default=PAPER_RECIPES, help="RECIPE or RECIPE:CLIENTS")
    p.add_argument("--seeds", nargs="+", type=int, default=list(range(10)))
    p.add_argument("--out", type=Path, default=Path("runs/reproduce"))
    p.add_argument("--dry_run", action="store_true", help="list the runs, run nothing")
    args = p.parse_args(argv)

    from data import list_recipes

    try:  # the whole grid is checked before anything runs or is written
        strategies = [Strategy.parse(s).name for s in args.strategies]
        recipes = [parse_recipe(r, list_recipes()) for r in args.recipes]
    except ValueError as err:
        p.exit(2, f"error: {err}\n")
    grid = [(s, r, n, seed) for r, n in recipes for s in strategies for seed in args.seeds]
    todo = [g for g in grid if not (run_folder(args.out, *g) / SUMMARY_FILE).exists()]
    print(f"{len(grid)} runs in the grid, {len(grid) - len(todo)} already finished, {len(todo)} to run.")
    for i, (strategy, recipe, clients, seed) in enumerate(todo, 1):
        out = run_folder(args.out, strategy, recipe, clients, seed)
        cmd = [sys.executable, "-m", "collab.fit", "--trust", strategy, "--dataset", recipe, "--seed", str(seed),
               "--out", str(out), "--no-progress", *(["--num_clients", str(clients)] if clients else []), *fit_args]
        print(f"[{i}/{len(todo)}] {' '.join(cmd[2:])}", flush=True)
        if not args.dry_run:
            subprocess.run(cmd, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
