"""GPT-2's BPE through tiktoken, with and without the network."""

import pytest
import tiktoken

from lora_gpt import tokenizer as tok


def test_known_ids():
    enc = tok.get_tokenizer()
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert enc.eot_token == 50256 and enc.n_vocab == 50257
    assert enc.decode(enc.encode(" naïve café ünïcode")) == " naïve café ünïcode"


def test_cached_file_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_GPT_CACHE", str(tmp_path))
    tok._save_ranks(tok.get_tokenizer(), tmp_path / tok.RANKS_FILENAME)
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: pytest.fail("network path used"))
    enc = tok.get_tokenizer.__wrapped__()
    assert enc.encode("Hello world") == [15496, 995]


def test_no_source_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_GPT_CACHE", str(tmp_path))
    monkeypatch.delenv("LORA_GPT_TOKENIZER", raising=False)
    monkeypatch.setattr(tok, "_ranks_from_installed_whisper", lambda: None)
    monkeypatch.setattr(tok, "_ranks_from_pypi", lambda dest: None)

    def offline(name):
        raise ConnectionError("offline")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(tok.TokenizerUnavailableError, match="pip install openai-whisper"):
        tok.get_tokenizer.__wrapped__()


def test_bad_override_path_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("LORA_GPT_TOKENIZER", str(tmp_path / "missing.tiktoken"))
    with pytest.raises(tok.TokenizerUnavailableError, match="missing.tiktoken"):
        tok.get_tokenizer.__wrapped__()
