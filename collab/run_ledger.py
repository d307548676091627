"""A benchmark's finished runs, kept as the few figures its tables read, in one committed JSON file.

Run folders (`runs/`) are not committed and do not survive a move to a new machine; a table
rebuilt from them alone would lose every cell measured elsewhere. A grid records each run's
figures here as it finishes, rebuilds its tables from this file, and reruns nothing it holds.

Figures are kept per base: the offline base is pretrained on first use, deterministically on one
machine but not across machines, and every perplexity moves with it. Entries are grouped by the
base's tag (its validation perplexity, `base_tag`); a table pairs runs of one base only and says
which base each cell was measured with. Cells measured before the ledger kept per-seed figures are
kept as they were reported, under keys ending in `/reported`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.manifest import write_json
from lora_gpt.errors import FixableError

Figures = dict[str, Any]
REPORT_FILE = "pretrain_report.json"


class LedgerError(FixableError):
    """A ledger file that cannot be read."""


def base_tag(base: Path) -> str:
    """A base's tag: its validation perplexity after pretraining (`pretrain_report.json`), e.g. '539.9'."""
    report = Path(base) / REPORT_FILE
    if not report.exists():
        raise LedgerError(f"{base} has no {REPORT_FILE}: not a base this project pretrained. Fix: delete it and rerun.")
    return f"{math.exp(json.loads(report.read_text())['val_loss']):.1f}"


@dataclass
class RunLedger:
    """The figures of each finished run by key (a run folder's path below the grid's root), per base."""

    path: Path
    base: str  # the tag of the base this machine's runs start from (`base_tag`)
    entries: dict[str, dict[str, Figures]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.path.exists():
            try:
                self.entries = json.loads(self.path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise LedgerError(
                    f"{self.path} is not valid JSON ({err}). Fix: restore it with `git checkout -- {self.path}`."
                ) from err

    def get(self, key: str, base: str | None = None) -> Figures | None:
        """The figures under `key` measured with `base` (None: this machine's)."""
        return self.entries.get(base or self.base, {}).get(key)

    def bases(self) -> list[str]:
        """Every base with entries, the one with the most first (then this machine's): a table takes
        each cell from the first base that measured it."""
        return sorted(self.entries, key=lambda b: (-len(self.entries[b]), b != self.base))

    def put(self, key: str, figures: Figures) -> None:
        """Record a run of this machine's base and write the file (atomically, keys sorted)."""
        self.entries.setdefault(self.base, {})[key] = figures
        write_json(self.path, {b: dict(sorted(e.items())) for b, e in sorted(self.entries.items())})

    def figures(self, key: str, folder: Path, read: Callable[[Path], Figures | None]) -> Figures | None:
        """The run's figures: from the ledger, else `read` from its finished folder (then recorded)."""
        held = self.get(key)
        if held is not None:
            return held
        found = read(folder)
        if found is not None:
            self.put(key, found)
        return found
