"""Bring your own clients: documents by category from local files.

- a folder with one sub-folder per category (all text files inside, at any depth), or one file
  per category (`es.txt`: category `es`), or both;
- a `.csv` or `.jsonl` table with `text` and `label` columns (one row per document).

Every text file becomes documents by one rule, wherever it sits: its paragraphs (separated by
blank lines; a paragraph longer than a document is cut at its line ends) are grouped, in order,
into documents of about 2,000 characters. So a folder of many small files gives one document per
file (files are never merged), and one big file (`es/manual.txt` or `es.txt` alike) gives many
documents that can be dealt out to many clients. Clients get whole documents, never a piece of
one that another client or split also holds.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path

from .text import DOCUMENT_CHARS, group

TABLE_SUFFIXES = (".csv", ".jsonl")
BINARY_SUFFIXES = {".gz", ".zip", ".bin", ".npy", ".pt", ".png", ".jpg", ".pdf"}


def _is_text(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() not in BINARY_SUFFIXES


def _text_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.rglob("*")) if _is_text(p)]


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def file_documents(text: str) -> list[str]:
    """A file's documents: blank-line paragraphs (cut at line ends when longer than a document),
    grouped in order into documents of about `DOCUMENT_CHARS` characters."""
    pieces = []
    for block in re.split(r"\n\s*\n", text):
        block = block.rstrip().lstrip("\n")
        if not block.strip():
            continue
        pieces += group(block.split("\n"), sep="\n") if len(block) > DOCUMENT_CHARS else [block]
    return group(pieces)


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


def _folder(path: Path) -> dict[str, list[str]]:
    """Documents by category from a folder: each sub-folder or top-level file is one category."""
    docs: dict[str, list[str]] = {}
    where: dict[str, Path] = {}
    for child in sorted(path.iterdir()):
        if child.name.startswith(".") or not (child.is_dir() or _is_text(child)):
            continue
        category = child.name if child.is_dir() else child.stem
        if category in where:
            raise ValueError(f"{where[category]} and {child} both hold the category {category!r}. Fix: keep each "
                             "category in one place (a sub-folder holding all its files, or one file).")
        where[category] = child
        files = _text_files(child) if child.is_dir() else [child]
        docs[category] = [d for f in files for d in file_documents(_read(f))]
    return docs


def load_local(path: Path) -> dict[str, list[str]]:
    """Documents by category (categories in sorted order) from a folder, `.csv` or `.jsonl`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist. Fix: give a folder with one sub-folder or file per "
                                "category, or a .csv/.jsonl with 'text' and 'label' columns.")
    if path.is_dir():
        docs = _folder(path)
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
