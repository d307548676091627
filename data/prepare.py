"""`python -m data.prepare RECIPE`: documents -> GPT-2 tokens -> per-client `uint16` files.

Writes `client_NN/{train,val,trust}.bin` for every client, a shared `ref.bin`, and last a
`manifest.json` (recipe, options, categories, mixture matrix, token counts, sha256 of every
file). The folder is keyed by recipe and options: the same call reuses it, other options get
their own folder, and an explicit `--out` holding another configuration is refused.
"""
from __future__ import annotations

import argparse
import math
import hashlib
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lora_gpt.tokenizer import EOT_TOKEN, cache_dir, get_tokenizer

from .manifest import MANIFEST, ManifestError, read_manifest, verify, write_json, write_tokens
from .recipes import get_recipe, list_recipes
from .split import SPLITS, mixture_matrix, split_clients

FORMAT_VERSION = 1


def tokenize_documents(docs: list[str], seed: int, category: int) -> np.ndarray:
    """One token stream per category: documents shuffled by (seed, category), EOT between them."""
    order = np.random.default_rng([seed, category]).permutation(len(docs))
    enc = get_tokenizer()
    ids = enc.encode_ordinary_batch([docs[i] for i in order], num_threads=2)
    return np.fromiter((t for doc in ids for t in (*doc, EOT_TOKEN)), dtype=np.uint16)


def default_folder(options: dict) -> Path:
    key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:10]
    name = Path(options["recipe"]).name.replace(":", "_")
    return cache_dir() / "datasets" / f"{name}-n{options['num_clients']}-s{options['seed']}-{key}"


def prepare_recipe(recipe: str, num_clients: int | None = None, out: Path | None = None, seed: int = 0,
                   progress: bool = True, **budgets: int | None) -> Path:
    """Prepare (or reuse) the token files of `recipe` split for `num_clients` clients."""
    spec = get_recipe(recipe, **budgets)
    n = num_clients or spec.num_clients
    if n < 1:
        raise ValueError(f"num_clients must be >= 1, got {n}.")
    options = {"recipe": recipe if spec.name == recipe else str(Path(recipe).resolve()), "num_clients": n,
               "seed": seed, "split": spec.split, "budget": asdict(spec.budget), "format": FORMAT_VERSION}
    folder = Path(out) if out is not None else default_folder(options)
    if (folder / MANIFEST).exists():
        manifest = read_manifest(folder)
        if manifest["options"] != options:
            raise ManifestError(f"{folder} already holds another dataset ({manifest['options']}); choose another "
                                "--out or delete that folder.")
        verify(folder, manifest, full=False)
        return folder
    if folder.exists():
        if any(not (p.name.startswith("client_") or p.name.endswith((".bin", ".tmp"))) for p in folder.iterdir()):
            raise ManifestError(f"{folder} exists and is not a dataset folder; choose another --out.")
        shutil.rmtree(folder)  # an earlier preparation was interrupted before its manifest: start over

    steps = tqdm(total=3 + n, desc=f"preparing {Path(recipe).name}", disable=not progress, unit="step")
    b = spec.budget
    # an upper bound on one category's share, so hub sources stream only about what is used
    docs = spec.load(math.ceil(n / 2) * (b.train + b.val + b.trust) + b.ref)
    categories = list(docs)
    steps.update()
    streams = [tokenize_documents(docs[c], seed, i) for i, c in enumerate(categories)]
    steps.update()
    clients, ref = split_clients(streams, categories, spec.split, n, spec.budget)
    mixture = mixture_matrix(clients)
    steps.update()
    files = {"ref.bin": write_tokens(folder / "ref.bin", ref)}
    for i, client in enumerate(clients):
        for split in SPLITS:
            rel = f"client_{i:02d}/{split}.bin"
            files[rel] = write_tokens(folder / rel, client.splits[split])
        steps.update()
    steps.close()
    manifest = {"options": options, "categories": categories,
                "client_categories": [int(row.argmax()) for row in mixture],
                "mixture": mixture.round(6).tolist(), "num_clients": n,
                "tokens_per_category": [int(len(s)) for s in streams], "files": files}
    write_json(folder / MANIFEST, manifest)  # last: its presence means the folder is complete
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help=f"one of {', '.join(list_recipes())}, or a folder / .csv / .jsonl of your own")
    p.add_argument("--num_clients", type=int, default=None)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    for split in ("train", "val", "trust", "ref"):
        p.add_argument(f"--{split}_tokens", type=int, default=None, help=f"{split} tokens per client"
                       + (" (per category for ref)" if split == "ref" else ""))
    args = p.parse_args(argv)
    try:
        folder = prepare_recipe(args.recipe, args.num_clients, args.out, args.seed, train=args.train_tokens,
                                val=args.val_tokens, trust=args.trust_tokens, ref=args.ref_tokens)
    except (ValueError, ManifestError, FileNotFoundError, RuntimeError) as err:
        p.exit(2, f"error: {err}\n")
    manifest = read_manifest(folder)
    print(f"{folder}\n{manifest['num_clients']} clients over {', '.join(manifest['categories'])}")
    for i, row in enumerate(manifest["mixture"]):
        tokens = {s: manifest["files"][f"client_{i:02d}/{s}.bin"]["tokens"] for s in SPLITS}
        print(f"  client {i}: " + ", ".join(f"{c} {w:.2f}" for c, w in zip(manifest["categories"], row) if w)
              + "  |  " + ", ".join(f"{s} {t:,}" for s, t in tokens.items()))
    print(f"  ref: {manifest['files']['ref.bin']['tokens']:,} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
