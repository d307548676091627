"""`python -m data.prepare RECIPE`: documents -> GPT-2 tokens -> `uint16` token files per client.

Writes `client_NN/{train,val,trust}.bin` for every client, a shared `ref.bin`, and last
`manifest.json` (recipe, options, the budgets used, categories, each client's category mixture,
token counts, sha256 of every file). With no budgets given, your own data, or more clients than a
recipe's default, shrink the per-client budgets until the text suffices. The default folder is keyed by
recipe and options, so the same call reuses it and other options get their own; an `--out`
that holds another configuration is refused, never overwritten.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from lora_gpt.cache import cache_dir
from lora_gpt.errors import ConfigError, FixableError

from .errors import ManifestError
from .manifest import MANIFEST, client_file, read_manifest, verify, write_json, write_tokens
from .recipes import RECIPES, Recipe, get_recipe, list_recipes
from .split import PAIRINGS, SPLITS, Budget, Layout, category_needs, fitted_budget, resolve_pairing, split_clients
from .tokenize import TokenizedDocuments

FORMAT_VERSION = 2


def default_folder(options: dict) -> Path:
    key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:10]
    clients = options["num_clients"] or "auto"  # auto: one per category of your own data
    return cache_dir() / "datasets" / f"{options['recipe']}-n{clients}-s{options['seed']}-{key}"


def _clear_partial(folder: Path) -> None:
    """Remove what an interrupted preparation left (token files without a manifest); refuse to
    touch a folder holding anything else."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ManifestError(f"{folder} is a file, not a folder. Fix: pass a new --out folder.")
    ours = [p for p in folder.iterdir() if p.name.startswith("client_") or p.name.endswith((".bin", ".tmp"))]
    if len(ours) != len(list(folder.iterdir())):
        raise ManifestError(
            f"{folder} exists and holds files that are not a prepared dataset. Fix: pass an empty or new --out folder."
        )
    for p in ours:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def prepare_recipe(
    recipe: str,
    num_clients: int | None = None,
    out: Path | None = None,
    seed: int = 0,
    progress: bool = True,
    pairing: str | None = None,
    **budgets: int | None,
) -> Path:
    """Prepare, or reuse, the token files of `recipe` for `num_clients` clients; returns the folder.

    `recipe` is a name from `list_recipes()` or the path of your own data; `budgets` (`train`,
    `val`, `trust`, `ref`, in tokens) replace the recipe's defaults; with none given, for your own
    data or more clients than a recipe's default, the budgets shrink in proportion (down to
    `data.split.FLOOR`) until the text suffices, and the manifest's `budget` records those used;
    `seed` chooses which documents go where; `pairing` (mixed split only) is `ring` (default) or
    the reference code's `pairs`. The default folder is
    `cache_dir()/datasets/<recipe>-n<N>-s<seed>-<key>`.
    """
    spec = get_recipe(recipe, **budgets)
    if num_clients is not None and num_clients < 1:
        raise ConfigError(f"--num_clients must be at least 1, got {num_clients}.")
    options = {
        "recipe": spec.name,
        "source": spec.source_id,
        "kind": spec.kind,
        "pairing": resolve_pairing(spec.kind, pairing),
        "num_clients": num_clients if num_clients is not None else spec.num_clients,
        "seed": seed,
        "budget": asdict(spec.budget),
        "budget_given": any(v is not None for v in budgets.values()),
        "format": FORMAT_VERSION,
    }
    folder = Path(out) if out is not None else default_folder(options)
    with _exclusive(folder):
        if (folder / MANIFEST).exists():
            manifest = read_manifest(folder)
            if manifest.get("options") != options:
                raise ManifestError(
                    f"{folder} already holds another dataset (options {manifest.get('options')}, "
                    f"asked for {options}). Fix: choose another --out, or delete that folder."
                )
            verify(folder, manifest, hashes=False)  # cheap; the DataModule checks the hashes
            return folder
        _clear_partial(folder)
        _build(folder, recipe, spec, options, seed, progress)
    return folder


@contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """One preparation per folder at a time: runs started side by side wait, then reuse it."""
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _build(folder: Path, recipe: str, spec: Recipe, options: dict, seed: int, progress: bool) -> None:
    started = time.perf_counter()
    documents = spec.load(seed)
    categories = list(documents)
    layout = Layout(spec.kind, options["num_clients"] or len(categories), len(categories), options["pairing"])
    shares = layout.shares()  # checks the client count before any text is tokenized
    docs = [TokenizedDocuments(documents[c]) for c in categories]
    budget = spec.budget
    if not options["budget_given"] and (spec.num_clients is None or layout.num_clients > spec.num_clients):
        # your own data (the defaults know nothing of its size), or more clients than a recipe's: fit the text
        budget = fitted_budget(docs, categories, layout, budget)
    with tqdm(
        total=int(category_needs(shares, budget).sum()),
        desc=f"tokenizing {spec.name}",
        unit="tok",
        unit_scale=True,
        disable=not progress,
    ) as bar:
        split = split_clients(docs, categories, layout, budget, bar.update)
    files = {"ref.bin": write_tokens(folder / "ref.bin", split.ref)}
    for i, client in enumerate(split.clients):
        for name in SPLITS:
            files[client_file(i, name)] = write_tokens(folder / client_file(i, name), client[name])
    mixture = split.mixture
    manifest = {
        "recipe": recipe,
        "description": spec.description,
        "options": options,
        "num_clients": layout.num_clients,
        "budget": asdict(budget),
        "categories": categories,
        "client_categories": [int(row.argmax()) for row in mixture],
        "mixture": mixture.tolist(),
        "client_category_tokens": split.counts.tolist(),
        "documents_used": dict(zip(categories, split.documents_used, strict=True)),
        "seconds": round(time.perf_counter() - started, 2),
        "files": files,
    }
    write_json(folder / MANIFEST, manifest)  # last: its presence means the folder is complete


def fitted_note(manifest: dict) -> str | None:
    """What a run prints where the budgets were fitted to the text (None where they are as asked)."""
    asked = manifest["options"]["budget"]
    used = manifest.get("budget", asked)  # folders prepared before budgets were fitted hold none
    if used == asked:
        return None
    return (
        f"budgets fitted to the text of {manifest['recipe']} for {manifest['num_clients']} clients: "
        f"{Budget(**used)} (the defaults ask for {Budget(**asked)}); --train_tokens, --val_tokens, "
        "--trust_tokens, --ref_tokens choose others."
    )


def summary(folder: Path) -> str:
    """A few lines describing a prepared dataset: clients, their mixtures, token counts."""
    m = read_manifest(folder)
    pairing, used, asked = m["options"]["pairing"], m["budget"], m["options"]["budget"]
    lines = [
        f"{folder}",
        f"{m['recipe']}: {m['num_clients']} clients over {', '.join(m['categories'])}"
        + (f" (mixed, pairing {pairing})" if pairing else ""),
        f"  budget: {Budget(**used)}"
        + (
            ""
            if used == asked
            else f" (shrunk from train {asked['train']:,}, so the text serves {m['num_clients']} clients)"
        ),
    ]
    for i, row in enumerate(m["mixture"]):
        mix = " + ".join(
            f"{w:.2f} {c}" for w, c in sorted(zip(row, m["categories"], strict=True), reverse=True) if w > 0
        )
        sizes = ", ".join(f"{s} {m['files'][client_file(i, s)]['tokens']:,}" for s in SPLITS)
        lines.append(f"  client {i:2d}: {mix:<28} {sizes}")
    lines.append(f"  ref: {m['files']['ref.bin']['tokens']:,} tokens shared by all clients")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m data.prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "recipe",
        nargs="?",
        help="a recipe name (see --list), or a folder / .csv / .jsonl of your own (append :mixed for the mixed split)",
    )
    p.add_argument("--list", action="store_true", help="list the recipes and exit")
    p.add_argument(
        "--num_clients",
        type=int,
        default=None,
        help="clients (default: the recipe's own count, one per category of your own data); with no "
        "--*_tokens, your own data, or more clients than a recipe's count, shrink the per-client budgets until "
        "the text suffices",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default: under the cache, keyed by options)")
    p.add_argument("--seed", type=int, default=0, help="which documents go to which client and split")
    p.add_argument(
        "--pairing",
        choices=PAIRINGS,
        default=None,
        help="mixed split: whose main category a client takes as its minor 1/4: ring (default: client "
        "n+1's) or pairs (the reference code's AG News: clients 2k and 2k+1 swap)",
    )
    for name in ("train", "val", "trust", "ref"):
        p.add_argument(
            f"--{name}_tokens",
            type=int,
            default=None,
            help=f"{name} tokens {'per category' if name == 'ref' else 'per client'} (default: the recipe's)",
        )
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    args = p.parse_args(argv)
    if args.list:
        for name in list_recipes():
            r = RECIPES[name]
            print(f"{name:28s} {r.num_clients:2d} clients, train {r.budget.train:>7,} tokens/client: {r.description}")
        return 0
    if args.recipe is None:
        p.error("give a RECIPE (see --list)")
    try:
        folder = prepare_recipe(
            args.recipe,
            args.num_clients,
            args.out,
            args.seed,
            args.progress,
            args.pairing,
            train=args.train_tokens,
            val=args.val_tokens,
            trust=args.trust_tokens,
            ref=args.ref_tokens,
        )
    except FixableError as err:
        p.exit(2, f"error: {err}\n")
    print(summary(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
