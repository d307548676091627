"""Offline base pretraining: it beats the unigram model, saves a loadable base, and is cached."""

import json

import numpy as np
import pytest

from lora_gpt import GPT
from lora_gpt.pretrain import REPORT_NAME, PretrainConfig, ensure_base, pretrain, unigram_loss


@pytest.fixture()
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    # sentences of a tiny grammar: a predictable token stream with a known unigram entropy
    words = rng.choice(50000, size=12, replace=False).astype(np.uint16)
    stream = np.concatenate([words[(np.arange(6) + rng.integers(0, 2) * 6)] for _ in range(3000)])
    folder = tmp_path / "corpus"
    folder.mkdir()
    stream[:15000].tofile(folder / "train.bin")
    stream[15000:].tofile(folder / "val.bin")
    return folder


def test_unigram_loss_closed_form(tmp_path):
    np.array([0, 0, 1, 1], dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.array([0, 1], dtype=np.uint16).tofile(tmp_path / "val.bin")
    # add-one counts over a 4-token vocabulary: [3, 3, 1, 1] / 8
    assert unigram_loss(tmp_path / "train.bin", tmp_path / "val.bin", 4, alpha=1.0) == pytest.approx(-np.log(3 / 8))


def test_pretraining_beats_unigram_and_is_reused(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_GPT_CACHE", str(tmp_path / "cache"))
    config = PretrainConfig(preset="gpt2-tiny", steps=40, batch_size=8, sequence_length=32, lr=1e-2, eval_batches=4)
    folder = ensure_base(config, corpus, progress=False)
    report = json.loads((folder / REPORT_NAME).read_text())
    assert report["unigram_val_loss"] == pytest.approx(np.log(12), abs=0.05)
    assert report["val_loss"] < report["unigram_val_loss"] - 1.0
    model = GPT.from_pretrained(folder)
    assert model.config.n_layer == 2
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert ensure_base(config, corpus, progress=False) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime  # cached, not retrained


def test_sequence_longer_than_model_is_refused(corpus, tmp_path):
    with pytest.raises(ValueError, match="block_size"):
        pretrain(PretrainConfig(preset="gpt2-tiny", sequence_length=128), corpus, tmp_path / "out", progress=False)
