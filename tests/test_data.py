"""Data preparation on small generated corpora, and one offline recipe from Debian's archive."""
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

from data import ClientDataModule, ManifestError, get_recipe, list_recipes, prepare_recipe
from data.sources import hf
from data.sources.local import load_local
from lora_gpt.tokenizer import get_tokenizer

WORDS = {"alpha": "apple anchor arrow", "beta": "banana bridge bottle", "gamma": "cherry castle candle"}
SMALL = dict(train=400, val=150, trust=60, ref=100)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_GPT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture()
def corpus(tmp_path):
    """A folder with one sub-folder per category; every document numbered, so n-grams are unique."""
    root = tmp_path / "corpus"
    for cat, words in WORDS.items():
        (root / cat).mkdir(parents=True)
        for d in range(40):
            text = " ".join(f"{cat} {w} {d}x{i}" for i in range(30) for w in words.split()[:1])
            (root / cat / f"doc{d}.txt").write_text(text)
    return root


def ngrams(tokens, n=12):
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def read(folder, rel):
    return np.fromfile(folder / rel, dtype=np.uint16)


def category_words(tokens):
    text = get_tokenizer().decode(tokens.tolist())
    return {cat: text.count(cat) for cat in WORDS}


def test_specific_split_sizes_disjointness_and_mixture(corpus):
    folder = prepare_recipe(str(corpus), num_clients=5, progress=False, **SMALL)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["categories"] == ["alpha", "beta", "gamma"]
    assert manifest["client_categories"] == [0, 1, 2, 0, 1]
    np.testing.assert_allclose(manifest["mixture"], np.eye(3)[[0, 1, 2, 0, 1]])
    seen = []
    for n in range(5):
        for split, size in (("train", 400), ("val", 150), ("trust", 60)):
            tokens = read(folder, f"client_{n:02d}/{split}.bin")
            assert len(tokens) == size
            words = category_words(tokens)
            assert words[manifest["categories"][manifest["client_categories"][n]]] > 0
            assert sum(v > 0 for v in words.values()) == 1  # one category only
            seen.append(ngrams(tokens))
    seen.append(ngrams(read(folder, "ref.bin")))
    assert len(read(folder, "ref.bin")) == 300
    for i in range(len(seen)):
        for j in range(i + 1, len(seen)):
            assert not seen[i] & seen[j], (i, j)  # no text shared between any two pieces


def test_mixed_split_is_really_mixed(corpus):
    folder = prepare_recipe(str(corpus) + ":mixed", num_clients=3, progress=False, **SMALL)
    manifest = json.loads((folder / "manifest.json").read_text())
    np.testing.assert_allclose(manifest["mixture"], [[0.75, 0.25, 0], [0, 0.75, 0.25], [0.25, 0, 0.75]], atol=1e-3)
    for n, (major, minor) in enumerate([("alpha", "beta"), ("beta", "gamma"), ("gamma", "alpha")]):
        words = category_words(read(folder, f"client_{n:02d}/train.bin"))
        assert words[major] > 2 * words[minor] > 0  # both categories really present, major first


def test_prepare_is_idempotent_and_never_overwrites_another_configuration(corpus, tmp_path):
    first = prepare_recipe(str(corpus), num_clients=3, progress=False, **SMALL)
    stamp = (first / "manifest.json").stat().st_mtime_ns
    assert prepare_recipe(str(corpus), num_clients=3, progress=False, **SMALL) == first
    assert (first / "manifest.json").stat().st_mtime_ns == stamp
    other = prepare_recipe(str(corpus), num_clients=4, progress=False, **SMALL)
    assert other != first and (first / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(ManifestError, match="another dataset"):
        prepare_recipe(str(corpus), num_clients=4, out=first, progress=False, **SMALL)


def test_interrupted_write_leaves_no_complete_looking_file(corpus, tmp_path, monkeypatch):
    import data.manifest as manifest_module

    out = tmp_path / "ds"
    real_replace = manifest_module.os.replace
    calls = []

    def interrupted(src, dst):
        calls.append(dst)
        if len(calls) == 4:
            raise KeyboardInterrupt("interrupted while writing")
        real_replace(src, dst)

    monkeypatch.setattr(manifest_module.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_recipe(str(corpus), num_clients=3, out=out, progress=False, **SMALL)
    assert not (out / "manifest.json").exists()
    assert not calls[-1].exists()  # the file being written never appeared under its final name
    assert calls[-1].with_name(calls[-1].name + ".tmp").exists()
    with pytest.raises(ManifestError, match="no manifest.json"):
        ClientDataModule(out, batch_size=2, sequence_length=8)
    monkeypatch.setattr(manifest_module.os, "replace", real_replace)
    prepare_recipe(str(corpus), num_clients=3, out=out, progress=False, **SMALL)  # starts over cleanly
    ClientDataModule(out, batch_size=2, sequence_length=8).setup()


def test_batches_shapes_determinism_and_resume_start(corpus):
    folder = prepare_recipe(str(corpus), num_clients=4, progress=False, **SMALL)
    dm = ClientDataModule(folder, batch_size=3, sequence_length=16, seed=7, eval_batches=2, accumulate=2)
    dm.setup()
    b0 = dm.train_batch(0)
    assert b0.shape == (4, 3, 17) and b0.dtype == torch.int64
    assert torch.equal(b0, ClientDataModule(folder, 3, 16, seed=7).train_batch(0))
    assert not torch.equal(b0, dm.train_batch(1))
    assert not torch.equal(b0, ClientDataModule(folder, 3, 16, seed=8).train_batch(0))
    # client n's windows come from its own train tokens
    train1 = read(folder, "client_01/train.bin").astype(np.int64)
    for window in b0[1].numpy():
        assert any(np.array_equal(train1[s:s + 17], window) for s in range(len(train1) - 16))

    class FakeTrainer:
        global_step = 5

    dm.trainer = FakeTrainer()
    assert torch.equal(next(iter(dm.train_dataloader())), dm.train_batch(10))
    val = list(dm.val_dataloader())
    assert len(val) == 2 and val[0].shape == (4, 3, 17)
    assert all(torch.equal(a, b) for a, b in zip(val, dm.val_dataloader()))
    assert dm.trust_batches()[0].shape[0] == 4
    ref = dm.ref_batches()
    assert ref[0].shape == (3, 17)
    words = category_words(np.concatenate([r.numpy().ravel() for r in ref]))
    assert all(v > 0 for v in words.values())  # reference windows span every category


def test_corrupt_file_fails_hash_check(corpus):
    folder = prepare_recipe(str(corpus), num_clients=3, progress=False, **SMALL)
    path = folder / "client_01" / "val.bin"
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"client_01/val.bin does not match its sha256.*delete"):
        ClientDataModule(folder, batch_size=2, sequence_length=8).setup()


def test_bad_inputs_name_the_problem_and_the_fix(corpus, tmp_path):
    with pytest.raises(ValueError, match="known recipes: .*offline_multi_specific"):
        get_recipe("no_such_recipe")
    with pytest.raises(ValueError, match="at least 3 clients"):
        prepare_recipe(str(corpus), num_clients=2, progress=False, **SMALL)
    with pytest.raises(ValueError, match="not enough text"):
        prepare_recipe(str(corpus), num_clients=3, progress=False, train=10**6)
    folder = prepare_recipe(str(corpus), num_clients=3, progress=False, **SMALL)
    with pytest.raises(ValueError, match=r"trust.bin holds 60 tokens, fewer than one window of 101"):
        ClientDataModule(folder, batch_size=2, sequence_length=100)
    bad = tmp_path / "bad.csv"
    bad.write_text("body,topic\nhello,a\n")
    with pytest.raises(ValueError, match="needs columns 'text' and 'label'"):
        load_local(bad)
    with pytest.raises(ValueError, match="budget must be >= 1"):
        get_recipe("offline_multi_specific", train=0)


def test_csv_and_jsonl_tables(tmp_path):
    rows = [{"text": f"{'sports' if i % 2 else 'science'} story {i} " * 20, "label": i % 2} for i in range(60)]
    jsonl = tmp_path / "news.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    csv_path = tmp_path / "news.csv"
    csv_path.write_text("text,label\n" + "\n".join(f"\"{r['text']}\",{r['label']}" for r in rows))
    for path in (jsonl, csv_path):
        docs = load_local(path)
        assert sorted(docs) == ["0", "1"] and len(docs["0"]) == 30
        folder = prepare_recipe(str(path), num_clients=2, progress=False, **SMALL)
        assert len(read(folder, "client_01/train.bin")) == 400


def test_hub_loader_code_path_on_local_files(tmp_path):
    path = tmp_path / "agnews.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"news {i}", "label": i % 4}) for i in range(20)))
    docs = hf.ag_news(max_docs=3, path="json", data_files=str(path))
    assert list(docs) == hf.AG_NEWS_LABELS
    assert docs["Sports"] == ["news 1", "news 5", "news 9"]
    with pytest.raises(hf.HubUnavailableError, match="offline recipe"):
        hf.load_texts("no-such-user/no-such-dataset-here", "text", 1)


def test_every_paper_and_offline_recipe_is_registered():
    names = list_recipes()
    for split in ("specific", "mixed"):
        for base in ("agnews", "three_multi", "github_wiki", "offline_multi", "offline_code_prose", "offline_topics"):
            assert f"{base}_{split}" in names
    assert get_recipe("three_multi_specific").budget.train == 840_000
    assert get_recipe("agnews_mixed").num_clients == 4 and get_recipe("three_multi_mixed").num_clients == 9


def test_offline_recipe_end_to_end_from_debian():
    if shutil.which("apt-get") is None or subprocess.run(
            ["apt-get", "download", "--print-uris", "debian-reference-fr"], capture_output=True).returncode != 0:
        pytest.skip("the Debian archive is unreachable from this machine (apt-get download failed)")
    folder = prepare_recipe("offline_multi_mixed", num_clients=3, progress=False,
                            train=2000, val=500, trust=200, ref=500)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["categories"] == ["french", "german", "italian"]
    assert min(manifest["tokens_per_category"]) > 100_000  # the real manuals, not a stub
    text = get_tokenizer().decode(read(folder, "client_00/train.bin").tolist())
    assert " le " in text or " la " in text or " les " in text  # French prose
    dm = ClientDataModule(folder, batch_size=2, sequence_length=32)
    dm.setup()
    assert dm.train_batch(0).shape == (3, 2, 33)
