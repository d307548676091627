"""Token files on disk: atomic writes, sha256 hashes, and the manifest that vouches for them."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"


class ManifestError(RuntimeError):
    """A prepared dataset folder is incomplete, corrupt, or holds another configuration."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_tokens(path: Path, tokens: np.ndarray) -> dict:
    """Write `uint16` tokens via a temporary file and a rename: a file under its final name is
    always complete. Returns its manifest entry."""
    if tokens.size and int(tokens.max()) >= 2**16:
        raise ValueError(f"token id {int(tokens.max())} does not fit uint16.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tokens.astype(np.uint16).tofile(tmp)
    os.replace(tmp, path)
    return {"tokens": int(tokens.size), "sha256": sha256(path)}


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise ManifestError(f"{folder} has no {MANIFEST}: it is not a prepared dataset (or its preparation "
                            "was interrupted); run `python -m data.prepare RECIPE` (or pass --dataset).")
    return json.loads(path.read_text())


def verify(folder: Path, manifest: dict, full: bool = True) -> None:
    """Check every file the manifest lists: present, right size, and (if `full`) right sha256."""
    for rel, entry in manifest["files"].items():
        path = Path(folder) / rel
        problem = None
        if not path.exists():
            problem = "is missing"
        elif path.stat().st_size != 2 * entry["tokens"]:
            problem = f"holds {path.stat().st_size // 2:,} tokens, the manifest says {entry['tokens']:,}"
        elif full and sha256(path) != entry["sha256"]:
            problem = "does not match its sha256 in the manifest (corrupt or edited)"
        if problem:
            raise ManifestError(f"{path} {problem}. Fix: delete {folder} and prepare the dataset again "
                                "(`python -m data.prepare ...`).")
