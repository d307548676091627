"""Token files on disk: atomic writes, sha256 hashes, and the manifest that vouches for them.

A file appears under its final name only once complete (written to `NAME.<pid>.tmp`, then renamed),
and the manifest is written last, so a folder with a manifest is a complete dataset and an
interrupted preparation never leaves anything that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .errors import ManifestError

MANIFEST = "manifest.json"


def client_file(client: int, split: str) -> str:
    """A client's token file, relative to the dataset folder."""
    return f"client_{client:02d}/{split}.bin"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # a file on the way, no permission, a full disk
        raise ManifestError(
            f"{path} cannot be written ({err.strerror}). Fix: free space, or prepare the dataset in a folder you can "
            "write to (python -m data.prepare --out, or another cache: LORA_GPT_CACHE)."
        ) from None


def write_tokens(path: Path, tokens: np.ndarray) -> dict:
    """Write `uint16` tokens atomically; returns the file's manifest entry."""
    data = np.ascontiguousarray(tokens, dtype=np.uint16).tobytes()
    _atomic_write(path, data)
    return {"tokens": len(data) // 2, "sha256": hashlib.sha256(data).hexdigest()}


def write_json(path: Path, obj: dict) -> None:
    _atomic_write(path, json.dumps(obj, indent=1, ensure_ascii=False).encode("utf-8"))


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise ManifestError(
            f"{folder} has no {MANIFEST}: it is not a prepared dataset, or its preparation was "
            "interrupted. Fix: run `python -m data.prepare RECIPE` (or `data.prepare_recipe`) and "
            "pass the folder it prints."
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path} is not valid JSON ({err}). Fix: delete {folder} and prepare it again.") from err


def data_digest(manifest: dict) -> str:
    """What a prepared dataset holds, as one hash of its token files' sha256: the same tokens give the
    same digest wherever and whenever they were prepared (a manifest's timings and paths differ)."""
    files = sorted((rel, entry["sha256"]) for rel, entry in manifest["files"].items())
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()


def verify(folder: Path, manifest: dict, hashes: bool = True) -> None:
    """Check every file the manifest lists: present, of the right size, and (if `hashes`) with
    the right sha256."""
    for rel, entry in manifest["files"].items():
        path = Path(folder) / rel
        problem = None
        if not path.exists():
            problem = "is missing"
        elif path.stat().st_size != 2 * entry["tokens"]:
            problem = f"holds {path.stat().st_size // 2:,} tokens where the manifest says {entry['tokens']:,}"
        elif hashes and sha256(path) != entry["sha256"]:
            problem = "does not match its sha256 in the manifest (the file was changed or is corrupt)"
        if problem:
            raise ManifestError(
                f"{path} {problem}. Fix: delete the folder {folder} and prepare the dataset again "
                f"(`python -m data.prepare {manifest.get('recipe', 'RECIPE')} ...`)."
            )
