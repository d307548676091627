"""`python -m data.prepare RECIPE`: documents -> GPT-2 tokens -> `uint16` token files per client.

Writes `client_NN/{train,val,trust}.bin` for every client, a shared `ref.bin`, and last
`manifest.json` (recipe, options, the budgets used, categories, each client's category mixture,
token counts, sha256 of every file). With no budgets given, your own data, or more clients than a
recipe's default, shrink the per-client budgets until the text suffices. The default folder is keyed by
recipe and options, so the same call reuses it and other options get their own; an `--out`
that holds another configuration is refused, never overwritten.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

from tqdm.auto import tqdm

from lora_gpt.cache import cache_dir
from lora_gpt.cli import Command, fail
from lora_gpt.console import plain_warnings
from lora_gpt.errors import ConfigError, FixableError
from lora_gpt.options import option, require

from .config import BUDGETS, DataConfig
from .errors import ManifestError
from .manifest import MANIFEST, client_file, read_manifest, verify, write_json, write_tokens
from .recipes import RECIPES, Recipe, get_recipe, list_recipes
from .split import (
    SPLITS,
    Budget,
    Layout,
    NotEnoughText,
    category_needs,
    fitted_budget,
    resolve_pairing,
    split_clients,
    whole_shares,
)
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
    volumes: str | None = None,
    separator: str | None = None,
    **budgets: int | None,
) -> Path:
    """Prepare, or reuse, the token files of `recipe` for `num_clients` clients; returns the folder.

    `recipe` is a name from `list_recipes()` or the path of your own data; `budgets` (`train`,
    `val`, `trust`, `ref`, in tokens) replace the recipe's defaults; with none given, for your own
    data or more clients than a recipe's default, the budgets shrink in proportion (down to
    `data.split.FLOOR`) until the text suffices, and the manifest's `budget` records those used;
    `seed` chooses which documents go where; `pairing` (mixed split only) is `ring` (default),
    the reference code's AG News `pairs`, or `reference` (the reference code's for the recipe);
    `volumes` `reference` gives AG News clients their whole shares and validation on the test
    split (`data.split.whole_shares`); `separator` `space` puts a space before every document
    instead of an end-of-text token after it. The default folder is
    `cache_dir()/datasets/<recipe>-n<N>-s<seed>-<key>`.
    """
    spec = get_recipe(recipe, **budgets)
    if num_clients is not None and num_clients < 1:
        raise ConfigError(f"--num_clients must be at least 1, got {num_clients}.")
    whole = volumes == "reference" and spec.held_out is not None
    given = [b for b in ("train", "val") if budgets.get(b) is not None]
    if whole and given:
        raise ConfigError(
            f"--data.volumes reference gives every {spec.name} client its whole share of the train split "
            f"and of the test split, so {' and '.join(f'--{b}_tokens' for b in given)} cannot apply. Fix: "
            "drop them, or --data.volumes budgets."
        )
    options = {
        "recipe": spec.name,
        "source": spec.source_id,
        "kind": spec.kind,
        "pairing": resolve_pairing(spec.kind, pairing, spec.name),
        "num_clients": num_clients if num_clients is not None else spec.num_clients,
        "seed": seed,
        "budget": asdict(spec.budget),
        "budget_given": any(v is not None for v in budgets.values()),
        "format": FORMAT_VERSION,
        # only where they change the text, so folders prepared before these options keep their keys
        **({"volumes": "reference"} if whole else {}),
        **({"separator": separator} if separator not in (None, "eot") else {}),
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
    separator = options.get("separator", "eot")
    docs = [TokenizedDocuments(documents[c], separator=separator) for c in categories]
    budget = spec.budget
    whole = options.get("volumes") == "reference"
    more_clients = spec.num_clients is None or layout.num_clients > spec.num_clients
    if not whole and not options["budget_given"] and more_clients:
        # your own data (the defaults know nothing of its size), or more clients than a recipe's: fit the text
        budget = fitted_budget(docs, categories, layout, budget)
    with tqdm(
        total=None if whole else int(category_needs(shares, budget).sum()),
        desc=f"tokenizing {spec.name}",
        unit="tok",
        unit_scale=True,
        disable=not progress,
    ) as bar:
        if whole:
            assert spec.held_out is not None  # prepare_recipe asks for whole shares only where there is a test split
            held_out = spec.held_out(seed)
            test = [TokenizedDocuments(held_out[c], separator=separator) for c in categories]
            try:
                split = whole_shares(docs, test, shares, budget, bar.update)
            except NotEnoughText as short:
                raise ConfigError(
                    f"not enough text in category {categories[short.category]!r} for the reference stream "
                    f"({budget.ref:,} tokens) and {layout.num_clients} clients' trust splits ({budget.trust:,} "
                    "tokens each). Fix: smaller --ref_tokens or --trust_tokens, or fewer clients."
                ) from None
        else:
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
    if m["options"].get("volumes") == "reference":
        budget = (
            f"each client's whole share of the train split and of the test split (val); trust {used['trust']:,} "
            f"per client and ref {used['ref']:,} per category taken from the train split first"
        )
    else:
        budget = f"{Budget(**used)}" + (
            ""
            if used == asked
            else f" (shrunk from train {asked['train']:,}, so the text serves {m['num_clients']} clients)"
        )
    lines = [
        f"{folder}",
        f"{m['recipe']}: {m['num_clients']} clients over {', '.join(m['categories'])}"
        + (f" (mixed, pairing {pairing})" if pairing else ""),
        f"  budget: {budget}",
    ]
    for i, row in enumerate(m["mixture"]):
        mix = " + ".join(
            f"{w:.2f} {c}" for w, c in sorted(zip(row, m["categories"], strict=True), reverse=True) if w > 0
        )
        sizes = ", ".join(f"{s} {m['files'][client_file(i, s)]['tokens']:,}" for s in SPLITS)
        lines.append(f"  client {i:2d}: {mix:<28} {sizes}")
    lines.append(f"  ref: {m['files']['ref.bin']['tokens']:,} tokens shared by all clients")
    return "\n".join(lines)


@dataclass(frozen=True)
class PrepareConfig:
    """Where the token files go, and which documents go where."""

    GROUP: ClassVar[str] = "prepare"

    seed: int = option(0, "which documents go to which client and split")
    out: Path | None = option(None, "output folder (default: under the cache, keyed by the options)")
    progress: bool = option(True, "progress bar")

    def __post_init__(self) -> None:
        if self.out is not None:
            object.__setattr__(self, "out", Path(self.out))
        require(self, "seed", self.seed >= 0, ">= 0")


# The data options that decide what is prepared (the others say how a run batches it).
PREPARED = ("dataset", "num_clients", "pairing", "volumes", "separator", *(f"{b}_tokens" for b in BUDGETS))


def command() -> Command[tuple[DataConfig, PrepareConfig]]:
    """`python -m data.prepare`'s command: the data options that decide what is prepared, and where."""
    return Command(
        "python -m data.prepare",
        __doc__,
        [DataConfig, PrepareConfig],
        lambda groups: (groups["data"], groups["prepare"]),
        only={"data": PREPARED},
        positional=("data.dataset", "RECIPE"),
    )


def main(argv: list[str] | None = None) -> int:
    plain_warnings()
    cli = command()
    parser = cli.parser()
    parser.add_argument("--list", action="store_true", default=False, help="list the recipes and exit")
    try:
        args = parser.parse_args(argv)
        if args.list:
            for name in list_recipes():
                r = RECIPES[name]
                print(
                    f"{name:28s} {r.num_clients:2d} clients, train {r.budget.train:>7,} tokens/client: {r.description}"
                )
            return 0
        data, prepare = cli.resolve(args)
        folder = prepare_recipe(
            data.recipe,
            data.num_clients,
            prepare.out,
            prepare.seed,
            prepare.progress,
            data.pairing,
            data.volumes,
            data.separator,
            **data.budgets(),
        )
    except FixableError as err:
        fail(err)
    print(summary(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
