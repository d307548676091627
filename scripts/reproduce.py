"""Seed-repeat reproduction: run every (strategy, recipe, seed) of a grid with `collab.fit`.

The default grid is the paper's: six strategies, the six recipes with 4, 8, 9, 9, 8 and 8
clients, ten seeds, each run with the paper's settings (`collab.fit --profile paper`: GPT-2, 500
steps, ...; a GPU's work). Each run has its folder `OUT/RECIPE[-nCLIENTS]/STRATEGY/seedSEED`.
Finished runs (a `summary.json` in their folder) are skipped, so an interrupted grid resumes; an
interrupted run resumes from its last checkpoint. Options after `--` go to every `collab.fit`
call and override the profile's.

    python scripts/reproduce.py                                   # the paper's grid and settings
    python scripts/reproduce.py --profile cpu --recipes offline_multi_specific:6 --seeds 0 1 2 \\
        --strategies none naive static dynamic dynamic-ref dynamic-token -- --iterations 100 --lr 1e-2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from collab.config import PROFILES
from collab.run_folder import RunFolder, run_dir
from collab.trust import Strategy

PAPER_STRATEGIES = ["none", "naive", "static", "dynamic", "dynamic-ref", "dynamic-token"]
PAPER_RECIPES = [
    "agnews_mixed:4",
    "agnews_specific:8",
    "three_multi_mixed:9",
    "three_multi_specific:9",
    "github_wiki_mixed:8",
    "github_wiki_specific:8",
]


def parse_recipe(spec: str, known: list[str]) -> tuple[str, int | None]:
    name, _, clients = spec.partition(":")
    if name not in known and not Path(name).exists():
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(known)} (or a path to your own data).")
    if clients and (not clients.isdigit() or int(clients) < 1):
        raise ValueError(f"bad client count in {spec!r}; write RECIPE or RECIPE:CLIENTS.")
    return name, int(clients) if clients else None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    fit_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", nargs="+", default=PAPER_STRATEGIES)
    p.add_argument("--recipes", nargs="+", default=PAPER_RECIPES, help="RECIPE or RECIPE:CLIENTS")
    p.add_argument("--seeds", nargs="+", type=int, default=list(range(10)))
    p.add_argument(
        "--profile",
        choices=tuple(PROFILES),
        default="paper",
        help="collab.fit's set of defaults for every run: paper (the paper's settings) or cpu",
    )
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
    folders = {g: run_dir(args.out, g[1], g[0], g[3], g[2]) for g in grid}
    todo = [g for g in grid if not RunFolder(folders[g]).finished()]
    print(f"{len(grid)} runs in the grid, {len(grid) - len(todo)} already finished, {len(todo)} to run.")
    for i, (strategy, recipe, clients, seed) in enumerate(todo, 1):
        out = folders[(strategy, recipe, clients, seed)]
        cmd = [
            sys.executable,
            "-m",
            "collab.fit",
            "--profile",
            args.profile,
            "--trust",
            strategy,
            "--dataset",
            recipe,
            "--seed",
            str(seed),
            "--out",
            str(out),
            "--no-progress",
            *(["--num_clients", str(clients)] if clients else []),
            *fit_args,
        ]
        print(f"[{i}/{len(todo)}] {' '.join(cmd[2:])}", flush=True)
        if not args.dry_run:
            subprocess.run(cmd, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
