"""Bring your own clients: documents by category from local files.

- a folder with one sub-folder per category (every text file inside is one document), or one
  file per category (documents separated by blank lines);
- a `.csv` or `.jsonl` table with `text` and `label` columns (one row per document).
"""
from __future__ import annotations

import csv
import hashlib
import json
from collections import defaultdict
from pathlib import Path

TABLE_SUFFIXES = (".csv", ".jsonl")
BINARY_SUFFIXES = {".gz", ".zip", ".bin", ".npy", ".pt", ".png", ".jpg", ".pdf"}


def _text_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")
            and p.suffix.lower() not in BINARY_SUFFIXES]


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _table(path: Path) -> dict[str, list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        if path.suffix == ".csv":
            rows = list(csv.DictReader(f))
        else:
            rows = [json.loads(line) for line in f if line.strip()]
    missing = {"text", "label"} - set(rows[0] if rows else ())
    if missing:
        raise ValueError(f"{path} needs the columns 'text' and 'label'; it lacks {sorted(missing)} (it has "
                         f"{sorted(rows[0]) if rows else 'no rows'}). Fix: rename its columns.")
    grouped: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        if str(row["text"]).strip():
            grouped[str(row["label"])].append(str(row["text"]))
    return dict(sorted(grouped.items()))


def load_local(path: Path) -> dict[str, list[str]]:
    """Documents by category (categories in sorted order) from a folder, `.csv` or `.jsonl`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist. Fix: give a folder with one sub-folder or file per "
                                "category, or a .csv/.jsonl with 'text' and 'label' columns.")
    if path.is_dir():
        docs = {}
        for child in sorted(path.iterdir()):
            if child.name.startswith("."):
                continue
            if child.is_dir():
                docs[child.name] = [t for t in map(_read, _text_files(child)) if t.strip()]
            else:
                docs[child.stem] = [d.strip() for d in _read(child).split("\n\n") if d.strip()]
    elif path.suffix in TABLE_SUFFIXES:
        docs = _table(path)
    else:
        raise ValueError(f"{path}: a dataset of your own is a folder, a .csv or a .jsonl file.")
    docs = {category: d for category, d in docs.items() if d}
    if not docs:
        raise ValueError(f"{path} holds no documents. Fix: one sub-folder or file per category, with text in it.")
    return docs


def fingerprint(path: Path) -> str:
    """Identifies the current contents of a local dataset (names, sizes, modification times), so
    a prepared copy is rebuilt when the files change."""
    path = Path(path)
    files = _text_files(path) if path.is_dir() else [path]
    listing = [(str(p.relative_to(path) if path.is_dir() else p.name), p.stat().st_size, p.stat().st_mtime_ns)
               for p in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
