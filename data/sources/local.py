"""Bring your own clients: a folder with one sub-folder or file per category, or a CSV/JSONL
table with `text` and `label` columns."""
from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

TEXT_SUFFIXES = {".txt", ".md", ".java", ".py", ".text"}


def _folder_docs(folder: Path) -> list[str]:
    return [p.read_text(encoding="utf-8", errors="replace") for p in sorted(folder.rglob("*"))
            if p.is_file() and (p.suffix in TEXT_SUFFIXES or not p.suffix)]


def _file_docs(path: Path) -> list[str]:
    # a single file per category: blank-line-separated paragraphs are its documents
    return [p.strip() for p in path.read_text(encoding="utf-8", errors="replace").split("\n\n") if p.strip()]


def _table_rows(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_local(path: Path) -> dict[str, list[str]]:
    """Documents by category from a folder, a CSV or a JSONL file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset path {path} does not exist; give a folder with one sub-folder or file "
                                "per category, or a .csv/.jsonl with text and label columns.")
    if path.is_dir():
        docs = {}
        for child in sorted(path.iterdir()):
            if child.name.startswith("."):
                continue
            docs[child.stem] = _folder_docs(child) if child.is_dir() else _file_docs(child)
    elif path.suffix in (".csv", ".jsonl", ".json"):
        rows = _table_rows(path)
        if rows and not {"text", "label"} <= set(rows[0]):
            raise ValueError(f"{path} needs columns 'text' and 'label'; it has {sorted(rows[0])}.")
        grouped: dict[str, list[str]] = defaultdict(list)
        for row in rows:
            grouped[str(row["label"])].append(str(row["text"]))
        docs = dict(sorted(grouped.items()))
    else:
        raise ValueError(f"{path}: use a folder, a .csv or a .jsonl file.")
    docs = {k: v for k, v in docs.items() if v}
    if len(docs) < 1:
        raise ValueError(f"{path} holds no documents.")
    return docs
