"""Bring your own clients: documents by category from local files.

- a folder with one sub-folder per category (all text files inside, at any depth), or one file
  per category (`es.txt`: category `es`), or both;
- a `.csv` or `.jsonl` table with `text` and `label` columns (one row per document).

Every text file becomes documents by one rule, wherever it sits: its paragraphs (separated by
blank lines; a paragraph longer than a document is cut at its line ends, a line longer than that
at its sentence ends, then at spaces) are grouped, in order, into documents of about 2,000
characters. So a folder of many small files gives one document per file (files are never
merged), and one big file (`es/manual.txt` or `es.txt` alike, even one long line) gives many
documents that can be dealt out to many clients. A table row is one document, cut by the same
rule where it is longer than that. Clients get whole documents, never a piece of one that another
client or split also holds.

A category that yields no text (its files hold only whitespace, or none is read as text) is an
error naming the category and its files, not a category that silently disappears.

Files are read as UTF-8 (a byte-order mark is fine); a byte that is not UTF-8, a table row
without its text or label, or a line that is not JSON is an error naming the file and the line.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from ..errors import DataFileError, DataNotFoundError
from .text import DOCUMENT_CHARS, cut, group

TABLE_SUFFIXES = (".csv", ".jsonl")
BINARY_SUFFIXES = {".gz", ".zip", ".bin", ".npy", ".pt", ".png", ".jpg", ".pdf"}


def _hidden(path: Path, folder: Path) -> bool:
    """Whether `path` or a folder it sits in below `folder` is hidden (`.git/...`, `.DS_Store`)."""
    return any(part.startswith(".") for part in path.relative_to(folder).parts)


def _is_text(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() not in BINARY_SUFFIXES


def _text_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.rglob("*")) if _is_text(p) and not _hidden(p, folder)]


def _read(path: Path) -> str:
    """A file's text, decoded strictly as UTF-8 (a byte-order mark dropped, line ends made `\\n`):
    text decoded wrongly would train clients on mojibake without a word."""
    raw = path.read_bytes()
    body = raw[len(codecs.BOM_UTF8) :] if raw.startswith(codecs.BOM_UTF8) else raw
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        line = body[: err.start].count(b"\n") + 1
        raise DataFileError(
            f"{path}, line {line}: not UTF-8 text (byte {body[err.start : err.start + 1]!r}). Fix: save "
            f"it as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > utf8-{path.name}` (latin1 for "
            "older Windows or Excel exports), or remove it if it is not text."
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def file_documents(text: str) -> list[str]:
    """A file's documents: blank-line paragraphs (`cut` where longer than a document), grouped in
    order into documents of about `DOCUMENT_CHARS` characters."""
    pieces: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        block = block.rstrip().lstrip("\n")
        if block.strip():
            pieces += cut(block)
    return group(pieces)


def row_documents(text: str) -> list[str]:
    """A table row's documents: the row whole, or where longer than a document, `file_documents`'."""
    return [text] if len(text) <= DOCUMENT_CHARS else file_documents(text)


ROW_FIX = 'Fix: one JSON object per line, such as {"text": "...", "label": "sports"}.'


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, dict]]:
    """(first line, cells by column) of every row below the header."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    missing = sorted({"text", "label"} - set(header))
    if missing:
        raise DataFileError(
            f"{path}, line 1: needs the columns 'text' and 'label'; it lacks {missing} (it has "
            f"{header}). Fix: rename its columns."
        )
    end = reader.line_num
    for cells in reader:
        start, end = end + 1, reader.line_num
        if not cells:
            continue  # a blank line
        if len(cells) != len(header):
            cell_s = f"{len(cells)} cell{'s' * (len(cells) != 1)}"
            raise DataFileError(
                f"{path}, line {start}: {cell_s} where the header has {len(header)} "
                f"({', '.join(header)})."
                " Fix: give every row its text and label, and put text that holds commas, quotes or line "
                'breaks in double quotes ("like, this").'
            )
        yield start, dict(zip(header, cells, strict=True))


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[int, dict]]:
    """(line, object) of every non-blank line."""
    for line, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as err:
            raise DataFileError(
                f"{path}, line {line}: not valid JSON ({err.msg}, column {err.colno}). {ROW_FIX}"
            ) from None
        if not isinstance(row, dict):
            kind = {list: "array", str: "string", bool: "true/false", type(None): "null"}.get(type(row), "number")
            raise DataFileError(
                f"{path}, line {line}: a JSON {kind} where an object with 'text' and 'label' is needed. {ROW_FIX}"
            )
        missing = [key for key in ("text", "label") if key not in row]
        if missing:
            raise DataFileError(
                f"{path}, line {line}: no {' or '.join(map(repr, missing))} key (the row has "
                f"{sorted(row)}). Fix: give every row 'text' and 'label'."
            )
        yield line, row


def _labelled(path: Path, line: int, row: dict) -> tuple[str, str]:
    """A row's (category, text), or an error naming the row."""
    text, label = row["text"], row["label"]
    if not isinstance(text, str):
        raise DataFileError(f"{path}, line {line}: the text is {text!r}, not a string. Fix: give every row its text.")
    if isinstance(label, (dict, list)):
        raise DataFileError(
            f"{path}, line {line}: the label is {label!r}, not a name. Fix: give every row a label "
            "naming its category (a string or a number)."
        )
    if label is None or not str(label).strip():
        raise DataFileError(
            f"{path}, line {line}: the label is empty. Fix: give every row a label (the name of its "
            "category), or remove the row."
        )
    return str(label).strip(), text  # "a, sports" and "a,sports" are both in category "sports"


def _table(path: Path) -> dict[str, list[str]]:
    text = _read(path)
    rows = _csv_rows(path, text) if path.suffix == ".csv" else _jsonl_rows(path, text)
    grouped: dict[str, list[str]] = defaultdict(list)
    blank: dict[str, list[int]] = defaultdict(list)  # category -> its rows without text
    for line, row in rows:
        label, doc = _labelled(path, line, row)
        if doc.strip():
            grouped[label] += row_documents(doc)
        else:
            blank[label].append(line)
    for label in sorted(set(blank) - set(grouped)):
        lines = blank[label]
        raise DataFileError(
            f"{path}: category {label!r} holds no text (its rows: line{'s' * (len(lines) > 1)} "
            f"{', '.join(map(str, lines[:10]))}{', ...' * (len(lines) > 10)}). Fix: give those rows their text, "
            "or remove them."
        )
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
            raise DataFileError(
                f"{where[category]} and {child} both hold the category {category!r}. Fix: keep each "
                "category in one place (a sub-folder holding all its files, or one file)."
            )
        where[category] = child
        files = _text_files(child) if child.is_dir() else [child]
        docs[category] = [d for f in files for d in file_documents(_read(f))]
        if not docs[category]:
            raise _no_text(category, child)
    return docs


def _no_text(category: str, where: Path) -> DataFileError:
    """The error for a category whose files (a folder's, or one file) yield no text: each file and why."""
    files = sorted(p for p in where.rglob("*") if p.is_file()) if where.is_dir() else [where]

    def why(p: Path) -> str:
        if _hidden(p, where):
            return "is hidden"
        if p.suffix.lower() in BINARY_SUFFIXES:
            return f"is not read as text ({p.suffix})"
        return "holds only whitespace"

    said = [f"{p.relative_to(where) if where.is_dir() else p.name} {why(p)}" for p in files[:10]]
    said += [f"and {len(files) - 10} more"] if len(files) > 10 else []
    return DataFileError(
        f"category {category!r} ({where}) holds no text: {', '.join(said) or 'it holds no files'}. Fix: put text "
        f"in it, or remove it from {where.parent}."
    )


def load_local(path: Path) -> dict[str, list[str]]:
    """Documents by category (categories in sorted order) from a folder, `.csv` or `.jsonl`."""
    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(
            f"{path} does not exist. Fix: give a folder with one sub-folder or file per "
            "category, or a .csv/.jsonl with 'text' and 'label' columns."
        )
    if path.is_dir():
        docs = _folder(path)
    elif path.suffix in TABLE_SUFFIXES:
        docs = _table(path)
    else:
        raise DataFileError(f"{path}: a dataset of your own is a folder, a .csv or a .jsonl file.")
    docs = {category: d for category, d in docs.items() if d}
    if not docs:
        raise DataFileError(f"{path} holds no documents. Fix: one sub-folder or file per category, with text in it.")
    return docs


def fingerprint(path: Path) -> str:
    """Identifies the current contents of a local dataset (names, sizes, modification times), so
    a prepared copy is rebuilt when the files change."""
    path = Path(path)
    files = _text_files(path) if path.is_dir() else [path]
    listing = [
        (str(p.relative_to(path) if path.is_dir() else p.name), p.stat().st_size, p.stat().st_mtime_ns) for p in files
    ]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
