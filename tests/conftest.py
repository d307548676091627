"""Fixtures shared by the tests."""

import pytest
from tiny_run import TINY_DATA, tiny_inputs

from data.sources import debian
from lora_gpt.tokenizer import get_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return get_tokenizer()  # loaded once from the real cache, before any test swaps the cache


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """An empty, private `LORA_GPT_CACHE` (and .deb folder) for one test."""
    monkeypatch.setenv("LORA_GPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(debian.DEBS_ENV, raising=False)
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """`(run folder, base folder)` of a finished tiny `python -m collab.fit` run: 2 clients of two
    categories, dynamic trust aggregating at steps 2 and 4, evaluated at steps 0, 2 and 4."""
    from collab import fit

    tmp = tmp_path_factory.mktemp("finished_run")
    corpus, base = tiny_inputs(tmp)
    argv = [
        *("--dataset", str(corpus), "--num_clients", "2", "--init", str(base)),
        *("--trust", "dynamic", "--pretraining_rounds", "2", "--trust_freq", "2"),
        *("--iterations", "4", "--eval_freq", "2", "--lr", "0.05", "--out", str(tmp / "run")),
        *TINY_DATA,
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORA_GPT_CACHE", str(tmp / "cache"))
        assert fit.main(argv) == 0
    return tmp / "run", base
