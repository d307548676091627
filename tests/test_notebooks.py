"""The notebooks in examples/ run as they are (their small settings), and are committed without outputs."""

from pathlib import Path

import pytest

from lora_gpt.cache import cache_dir
from lora_gpt.tokenizer import RANKS_FILENAME

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
nbformat = pytest.importorskip("nbformat")


def test_there_are_notebooks():
    assert {p.stem for p in NOTEBOOKS} >= {"lora_gpt", "collaborative_run", "your_own_data"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_hold_no_outputs(path):
    book = nbformat.read(path, as_version=4)
    held = [i for i, c in enumerate(book.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not held, f"{path.name}: cells {held} hold outputs; clear them (Jupyter: Edit > Clear All Outputs)"
    assert "widgets" not in book.metadata


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tokenizer, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    ranks = cache_dir() / RANKS_FILENAME  # the tokenizer the session holds, for a kernel with a private cache
    monkeypatch.setenv("LORA_GPT_TOKENIZER", str(ranks))
    monkeypatch.setenv("LORA_GPT_CACHE", str(tmp_path / "cache"))
    book = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(book, timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in book.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
