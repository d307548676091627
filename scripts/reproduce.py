"""Seed-repeat reproduction: run every (strategy, recipe, seed) of a grid with `collab.fit`.

The default grid is the paper's: six strategies, the six recipes with 4, 8, 9, 9, 8 and 8
clients, ten seeds, each run with the paper's settings (`collab.fit --profile paper`: GPT-2, 500
steps, ...; a GPU's work), or as the reference code runs them (`--profile reference`: those settings
and each of the reference code's own behaviours). Each run has its folder
`OUT/RECIPE[-nCLIENTS]/STRATEGY/seedSEED`.
Finished runs (a `summary.json` in their folder) are skipped, so an interrupted grid resumes; an
interrupted run resumes from its last checkpoint. Options after `--` go to every `collab.fit`
call and override the profile's.

    python scripts/reproduce.py                                   # the paper's grid and settings
    python scripts/reproduce.py --profile reference --out runs/reference  # as the reference code runs it
    python scripts/reproduce.py --profile cpu --recipes offline_multi_specific:6 --seeds 0 1 2 \\
        --strategies none naive static dynamic dynamic-ref dynamic-token -- --iterations 100 --lr 1e-2
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from collab.cli import fit_command, profile_names
from collab.run_folder import RunFolder, run_dir
from collab.trust import Strategy
from lora_gpt.cli import Command, fail
from lora_gpt.errors import ConfigError, FixableError
from lora_gpt.options import flag_name, option, require, require_choice

PAPER_STRATEGIES = ("none", "naive", "static", "dynamic", "dynamic-ref", "dynamic-token")
PAPER_RECIPES = (
    "agnews_mixed:4",
    "agnews_specific:8",
    "three_multi_mixed:9",
    "three_multi_specific:9",
    "github_wiki_mixed:8",
    "github_wiki_specific:8",
)


def parse_recipe(spec: str, known: list[str]) -> tuple[str, int | None]:
    name, _, clients = spec.partition(":")
    if name not in known and not Path(name).exists():
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(known)} (or a path to your own data).")
    if clients and (not clients.isdigit() or int(clients) < 1):
        raise ValueError(f"bad client count in {spec!r}; write RECIPE or RECIPE:CLIENTS.")
    return name, int(clients) if clients else None


@dataclass(frozen=True)
class GridConfig:
    """The grid: every (strategy, recipe, seed), each a run of collab.fit with one profile."""

    GROUP: ClassVar[str] = "grid"

    strategies: tuple[str, ...] = option(PAPER_STRATEGIES, "trust strategies (collab.fit's --trust)")
    recipes: tuple[str, ...] = option(PAPER_RECIPES, "RECIPE or RECIPE:CLIENTS")
    seeds: tuple[int, ...] = option(tuple(range(10)), "seeds")
    profile: str = option(
        "paper", "collab.fit's profile for every run (collab/configs/NAME.yaml)", choices=profile_names()
    )
    out: Path = option(Path("runs/reproduce"), "where the runs' folders go: OUT/RECIPE[-nCLIENTS]/STRATEGY/seedSEED")
    dry_run: bool = option(False, "list the runs, run nothing")

    def __post_init__(self) -> None:
        from data import list_recipes

        object.__setattr__(self, "out", Path(self.out))
        try:
            object.__setattr__(self, "strategies", tuple(Strategy.parse(s).name for s in self.strategies))
        except ValueError as err:
            raise ConfigError(f"{flag_name(self, 'strategies')}: {err}") from None
        try:
            [parse_recipe(r, list_recipes()) for r in self.recipes]
        except ValueError as err:
            raise ConfigError(f"{flag_name(self, 'recipes')}: {err}") from None
        for name in ("strategies", "recipes", "seeds"):
            require(self, name, len(getattr(self, name)) > 0, "at least one")
        require(self, "seeds", all(s >= 0 for s in self.seeds), "seeds >= 0")
        require_choice(self, "profile")

    def runs(self) -> list[tuple[str, str, int | None, int]]:
        """(strategy, recipe, clients, seed) of every run, recipe by recipe."""
        from data import list_recipes

        recipes = [parse_recipe(r, list_recipes()) for r in self.recipes]
        return [(s, r, n, seed) for r, n in recipes for s in self.strategies for seed in self.seeds]


def command() -> Command[GridConfig]:
    return Command("python scripts/reproduce.py", __doc__, [GridConfig], lambda groups: groups["grid"])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    fit_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    try:  # the grid and the options of every run are checked before anything runs or is written
        grid = command().parse(argv)
        fit_command().parse(["--profile", grid.profile, *fit_args])
    except FixableError as err:
        fail(err)
    runs = grid.runs()
    folders = {g: run_dir(grid.out, g[1], g[0], g[3], g[2]) for g in runs}
    todo = [g for g in runs if not RunFolder(folders[g]).finished()]
    print(f"{len(runs)} runs in the grid, {len(runs) - len(todo)} already finished, {len(todo)} to run.")
    for i, (strategy, recipe, clients, seed) in enumerate(todo, 1):
        out = folders[(strategy, recipe, clients, seed)]
        cmd = [
            sys.executable,
            "-m",
            "collab.fit",
            "--profile",
            grid.profile,
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
        if not grid.dry_run:
            subprocess.run(cmd, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
