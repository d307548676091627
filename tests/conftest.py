"""Fixtures shared by the data tests."""

import pytest

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
