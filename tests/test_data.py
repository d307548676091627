"""Data preparation and the DataModule on small generated corpora: split sizes, disjointness,
mixtures, determinism, resume, atomic writes, manifest checks and error messages."""

import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import lightning as L
import numpy as np
import pytest
import torch

from data import ClientDataModule, DataConfig, DataError, ManifestError, get_recipe, list_recipes, prepare_recipe
from data.manifest import sha256
from data.prepare import fitted_note
from data.prepare import main as prepare_main
from data.prepare import summary as prepare_summary
from data.recipes import RECIPES
from data.sources.local import load_local
from data.split import Budget, design_shares, scaled
from lora_gpt.tokenizer import EOT_TOKEN, get_tokenizer

CATEGORIES = ("alpha", "beta", "gamma")
SMALL = dict(train=400, val=150, trust=60, ref=100)
SMALL_CLI = [*(arg for split, tokens in SMALL.items() for arg in (f"--{split}_tokens", str(tokens))), "--no-progress"]
DOC_ID = re.compile(r"(alpha|beta|gamma)(\d{3})w")


def datamodule(folder, seed=0, accumulate=1, **batches):
    """The data module as `collab.fit` builds it: batch shapes from a `DataConfig`."""
    return ClientDataModule(folder=folder, config=DataConfig(**batches), seed=seed, accumulate=accumulate)


pytestmark = pytest.mark.usefixtures("tokenizer", "cache")


@pytest.fixture()
def corpus(tmp_path):
    """One sub-folder per category, 40 documents each; every word names its document
    ("beta017w5"), so each piece of text tells which documents it came from."""
    root = tmp_path / "corpus"
    for cat in CATEGORIES:
        (root / cat).mkdir(parents=True)
        for d in range(40):
            (root / cat / f"doc{d}.txt").write_text(" ".join(f"{cat}{d:03d}w{i}" for i in range(30)))
    return root


def read(folder, rel):
    return np.fromfile(folder / rel, dtype=np.uint16)


def doc_ids(tokens):
    return set(DOC_ID.findall(get_tokenizer().decode(np.asarray(tokens).tolist())))


def manifest_of(folder):
    return json.loads((folder / "manifest.json").read_text())


def pieces(folder, num_clients):
    out = {"ref": read(folder, "ref.bin")}
    for n in range(num_clients):
        for split in ("train", "val", "trust"):
            out[(n, split)] = read(folder, f"client_{n:02d}/{split}.bin")
    return out


def test_specific_split_sizes_disjoint_documents_and_mixture(corpus):
    folder = prepare_recipe(str(corpus), num_clients=5, progress=False, **SMALL)
    m = manifest_of(folder)
    assert m["categories"] == list(CATEGORIES) and m["num_clients"] == 5
    assert m["client_categories"] == [0, 1, 2, 0, 1]
    np.testing.assert_array_equal(m["mixture"], np.eye(3)[[0, 1, 2, 0, 1]])
    parts = pieces(folder, 5)
    assert len(parts["ref"]) == 3 * SMALL["ref"]
    owner = {}
    for key, tokens in parts.items():
        if key != "ref":
            assert len(tokens) == SMALL[key[1]], key
            cats = {cat for cat, _ in doc_ids(tokens)}
            assert cats == {CATEGORIES[m["client_categories"][key[0]]]}, key  # its own category only
        for doc in doc_ids(tokens):
            assert doc not in owner, f"document {doc} is in both {owner[doc]} and {key}"
            owner[doc] = key
    # clients 0 and 3 share category alpha, yet no document
    assert {d for d, k in owner.items() if k[0] == 0} and {d for d, k in owner.items() if k[0] == 3}
    # the ref stream holds every category, budget.ref tokens each, in turn
    ref_chunks = [parts["ref"][i * 100 : (i + 1) * 100] for i in range(3)]
    assert [{cat for cat, _ in doc_ids(chunk)} for chunk in ref_chunks] == [{c} for c in CATEGORIES]
    # documents are separated by EOT, and the manifest's hashes are those of the files
    assert (parts[(0, "train")] == EOT_TOKEN).sum() >= 2
    assert all(m["files"][rel]["sha256"] == sha256(folder / rel) for rel in m["files"])


def test_mixed_split_is_really_mixed(corpus):
    folder = prepare_recipe(f"{corpus}:mixed", num_clients=3, progress=False, **SMALL)
    m = manifest_of(folder)
    expected = [[0.75, 0.25, 0], [0, 0.75, 0.25], [0.25, 0, 0.75]]
    np.testing.assert_allclose(m["mixture"], expected, atol=0.01)
    np.testing.assert_allclose(np.sum(m["mixture"], axis=1), 1.0)
    assert m["client_categories"] == [0, 1, 2]
    # real token counts behind the mixture: 3/4 and 1/4 of 610 tokens, split by split
    assert m["client_category_tokens"][0] == [300 + 112 + 45, 100 + 38 + 15, 0]
    for n, (major, minor) in enumerate([("alpha", "beta"), ("beta", "gamma"), ("gamma", "alpha")]):
        text = get_tokenizer().decode(read(folder, f"client_{n:02d}/train.bin").tolist())
        words = {cat: len(re.findall(rf"{cat}\d{{3}}w", text)) for cat in CATEGORIES}
        assert 2 < words[major] / words[minor] < 4.5, words  # both present, about 3:1
        assert sum(v > 0 for v in words.values()) == 2


def test_mixed_pairing_ring_or_the_reference_pairs():
    ring = design_shares("mixed", 6, 3)  # ours: client n's minor category is client n+1's major
    np.testing.assert_array_equal(
        ring, [[0.75, 0.25, 0], [0, 0.75, 0.25], [0.25, 0, 0.75], [0.75, 0.25, 0], [0, 0.75, 0.25], [0.25, 0, 0.75]]
    )
    # the reference's AG News: clients 2k and 2k+1 each take the other's major as their minor
    np.testing.assert_array_equal(
        design_shares("mixed", 4, 4, pairing="pairs"),
        [[0.75, 0.25, 0, 0], [0.25, 0.75, 0, 0], [0, 0, 0.75, 0.25], [0, 0, 0.25, 0.75]],
    )
    np.testing.assert_array_equal(
        design_shares("mixed", 6, 3, pairing="pairs"),
        [[0.75, 0.25, 0], [0.25, 0.75, 0], [0.25, 0, 0.75], [0.75, 0, 0.25], [0, 0.75, 0.25], [0, 0.25, 0.75]],
    )
    with pytest.raises(
        ValueError,
        match="pairs of clients 2k and 2k.1, so it needs an even num_clients, got 5. "
        "Fix: --num_clients 4 or 6, or --pairing ring",
    ):
        design_shares("mixed", 5, 3, pairing="pairs")
    with pytest.raises(ValueError, match="unknown pairing .star.; use one of ring, pairs, reference"):
        design_shares("mixed", 4, 3, pairing="star")


def test_pairing_is_part_of_a_prepared_folder(corpus, capsys):
    ring = prepare_recipe(f"{corpus}:mixed", num_clients=4, progress=False, **SMALL)
    pairs = prepare_recipe(f"{corpus}:mixed", num_clients=4, pairing="pairs", progress=False, **SMALL)
    assert pairs != ring and manifest_of(ring)["options"]["pairing"] == "ring"
    m = manifest_of(pairs)
    assert m["options"]["pairing"] == "pairs"
    np.testing.assert_allclose(
        m["mixture"], [[0.75, 0.25, 0], [0.25, 0.75, 0], [0.25, 0, 0.75], [0.75, 0, 0.25]], atol=0.01
    )
    assert m["client_category_tokens"][1] == [100 + 38 + 15, 300 + 112 + 45, 0]  # 1/4 and 3/4 of each split
    assert (
        prepare_main(
            [
                f"{corpus}:mixed",
                "--num_clients",
                "4",
                "--pairing",
                "pairs",
                *SMALL_CLI,
            ]
        )
        == 0
    )
    assert str(pairs) in capsys.readouterr().out  # the CLI reuses the same folder
    specific = prepare_recipe(str(corpus), num_clients=3, progress=False, **SMALL)
    assert manifest_of(specific)["options"]["pairing"] is None
    with pytest.raises(ValueError, match="pairing applies to the mixed split.*Fix: the mixed recipe"):
        prepare_recipe(str(corpus), num_clients=3, pairing="pairs", progress=False, **SMALL)


def test_num_clients_beyond_categories_and_seed_changes_documents(corpus):
    a = prepare_recipe(str(corpus), num_clients=7, progress=False, **SMALL)
    b = prepare_recipe(str(corpus), num_clients=7, seed=1, progress=False, **SMALL)
    assert manifest_of(a)["client_categories"] == [0, 1, 2, 0, 1, 2, 0]
    assert doc_ids(read(a, "client_06/train.bin")) != doc_ids(read(b, "client_06/train.bin"))
    assert {c for c, _ in doc_ids(read(b, "client_06/train.bin"))} == {"alpha"}


@pytest.fixture()
def even_corpus(tmp_path):
    """Two categories of 120 documents of exactly 100 tokens ("the" x 99 and EOT): a piece of s
    tokens takes ceil(s / 100) documents, so what fits is a hand computation."""
    root = tmp_path / "even"
    for cat in ("a", "b"):
        (root / cat).mkdir(parents=True)
        for d in range(120):
            (root / cat / f"{d:03d}.txt").write_text(" ".join(["the"] * 99))
    return root


def test_more_clients_than_the_default_shrink_the_budgets_to_fit(even_corpus):
    # the recipe: 2 clients (one per category) at train 30,000, val 8,000, trust 4,000, ref 10,000;
    # 8 clients: at train t, val and trust are max(516, 8t/30, 4t/30), ref max(1032, t/3), so
    # a category's 4 clients and its ref take 11 + 4 (ceil(t/100) + 6 + 6) documents: at most
    # 120 for t <= 1,500
    recipe = Budget(train=30_000, val=8_000, trust=4_000, ref=10_000)
    assert scaled(recipe, 6_000) == Budget(6_000, 1_600, 800, 2_000)  # in proportion, above the floor
    assert scaled(recipe, 1_500) == Budget(1_500, 516, 516, 1_032)  # 400, 200, 500: held at the floor
    folder = prepare_recipe(str(even_corpus), num_clients=8, progress=False)
    m = manifest_of(folder)
    assert m["budget"] == {"train": 1500, "val": 516, "trust": 516, "ref": 1032}
    assert m["options"]["budget"]["train"] == 30_000 and m["options"]["budget_given"] is False
    assert m["documents_used"] == {"a": 11 + 4 * (15 + 6 + 6), "b": 119}
    assert [m["files"][f"client_07/{s}.bin"]["tokens"] for s in ("train", "val", "trust")] == [1500, 516, 516]
    assert m["files"]["ref.bin"]["tokens"] == 2 * 1032
    assert "train 1,500, val 516, trust 516 per client" in prepare_summary(folder)
    datamodule(folder, batch_size=4, sequence_length=128).setup()  # the floor holds windows of 129
    # at the floor (1,032 / 516 / 516 / 1,032: 11 + 6 + 6 documents a client, 11 for ref), a
    # category serves 4 clients in 120 documents: 8 clients, not 10
    with pytest.raises(
        ValueError,
        match=r"not enough text in category 'a' for 10 clients even at the smallest "
        r"budgets \(train 1,032, val 516, trust 516 per client, ref 1,032 per "
        r"category;.*its 120 documents \(12,000 tokens\) ran out, where these "
        r"clients need at least 11,352 tokens.*Fix: --num_clients 8 or fewer "
        r"\(the most this text serves at the smallest budgets\), or more text in "
        r"that category\.",
    ):
        prepare_recipe(str(even_corpus), num_clients=10, progress=False)


def test_given_budgets_or_a_recipes_own_count_never_shrink(even_corpus, monkeypatch):
    # given budgets stay: 30 + 10 + 10 documents a client and 20 for ref serve 2 clients a category
    given = dict(train=3000, val=1000, trust=1000, ref=2000)
    with pytest.raises(
        ValueError,
        match=r"for 8 clients at these budgets \(train 3,000, val 1,000, trust 1,000 per "
        r"client, ref 2,000 per category\).*Fix: --num_clients 4 or fewer \(the most "
        r"this text serves at these budgets\), or smaller budgets",
    ):
        prepare_recipe(str(even_corpus), num_clients=8, progress=False, **given)
    folder = prepare_recipe(str(even_corpus), num_clients=4, progress=False, **given)
    assert manifest_of(folder)["budget"] == given and manifest_of(folder)["options"]["budget_given"] is True
    # a built-in recipe at its own count keeps its budgets: 300 documents for one client's train alone
    monkeypatch.setitem(
        RECIPES, "even_builtin", replace(get_recipe(str(even_corpus)), name="even_builtin", num_clients=2)
    )
    with pytest.raises(ValueError, match=r"for 2 clients at these budgets \(train 30,000.*Fix: smaller budgets"):
        prepare_recipe("even_builtin", progress=False)


def test_your_own_data_gets_budgets_fitted_to_it_at_any_client_count(even_corpus):
    """Issue 20.4: your own data at its own client count (one per category) kept the default budgets
    and failed ("smaller budgets"), while more clients than categories shrank them and worked."""
    # one client a category at train t: val max(516, 8t/30), trust max(516, 4t/30), ref max(1,032, t/3);
    # a category's 120 documents of 100 tokens hold ref + train + val + trust, each rounded up to whole
    # documents, up to t = 6,800: 23 + 68 + 19 + 10 documents; t = 6,801 needs a 69th for train
    folder = prepare_recipe(str(even_corpus), progress=False)
    m = manifest_of(folder)
    assert m["num_clients"] == 2 and m["budget"] == {"train": 6800, "val": 1813, "trust": 906, "ref": 2266}
    assert "shrunk from train 30,000" in prepare_summary(folder)
    assert fitted_note(m) == (  # what collab.fit prints
        f"budgets fitted to the text of {even_corpus} for 2 clients: train 6,800, val 1,813, trust 906 per client, "
        "ref 2,266 per category (the defaults ask for train 30,000, val 8,000, trust 4,000 per client, ref 10,000 "
        "per category); --train_tokens, --val_tokens, --trust_tokens, --ref_tokens choose others."
    )
    assert fitted_note(manifest_of(prepare_recipe(str(even_corpus), progress=False, **SMALL))) is None


def test_prepare_is_idempotent_and_never_overwrites_another_configuration(corpus):
    first = prepare_recipe(str(corpus), num_clients=3, progress=False, **SMALL)
    stamp = (first / "manifest.json").stat().st_mtime_ns
    assert prepare_recipe(str(corpus), num_clients=3, progress=False, **SMALL) == first
    assert (first / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    other = prepare_recipe(str(corpus), num_clients=4, progress=False, **SMALL)
    assert other != first and (first / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(ManifestError, match="already holds another dataset.*Fix"):
        prepare_recipe(str(corpus), num_clients=4, out=first, progress=False, **SMALL)
    (corpus / "alpha" / "doc0.txt").write_text("alpha000w0 changed")  # edited data: a new folder
    assert prepare_recipe(str(corpus), num_clients=3, progress=False, **SMALL) != first


def test_preparations_started_together_build_once(corpus, monkeypatch):
    import data.prepare as prepare_module

    builds = []
    real_build = prepare_module._build
    monkeypatch.setattr(prepare_module, "_build", lambda *a: builds.append(1) or real_build(*a))
    with ThreadPoolExecutor(3) as pool:
        folders = list(
            pool.map(lambda _: prepare_recipe(str(corpus), num_clients=3, progress=False, **SMALL), range(3))
        )
    assert len(set(folders)) == 1 and len(builds) == 1
    datamodule(folders[0], batch_size=2, sequence_length=8).setup()


def test_interrupted_write_leaves_no_complete_looking_file(corpus, tmp_path, monkeypatch):
    import data.manifest as manifest_module

    out = tmp_path / "ds"
    real_replace = manifest_module.os.replace
    renamed = []

    def interrupted(src, dst):
        if len(renamed) == 4:
            raise KeyboardInterrupt("interrupted while writing")
        renamed.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(manifest_module.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_recipe(str(corpus), num_clients=3, out=out, progress=False, **SMALL)
    assert len(renamed) == 4 and all(p.exists() for p in renamed)
    fifth = out / "client_01" / "train.bin"  # ref, client 0's three splits, then this one
    assert not fifth.exists() and len(list(fifth.parent.glob("train.bin.*.tmp"))) == 1
    assert not (out / "manifest.json").exists()
    with pytest.raises(ManifestError, match="no manifest.json.*interrupted"):
        datamodule(out, batch_size=2, sequence_length=8)
    monkeypatch.setattr(manifest_module.os, "replace", real_replace)
    prepare_recipe(str(corpus), num_clients=3, out=out, progress=False, **SMALL)  # starts over cleanly
    assert not list(out.rglob("*.tmp"))
    datamodule(out, batch_size=2, sequence_length=8).setup()


def test_out_folder_with_foreign_files_is_refused(corpus, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ManifestError, match="not a prepared dataset"):
        prepare_recipe(str(corpus), num_clients=3, out=out, progress=False, **SMALL)
    assert (out / "notes.txt").read_text() == "keep me"


def test_an_out_that_cannot_hold_the_dataset_is_refused_naming_it(corpus, tmp_path, monkeypatch):
    """A file as --out, a folder below a file, a full disk: each was a traceback."""
    import data.manifest as manifest_module

    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    with pytest.raises(ManifestError, match=re.escape(f"{a_file} is a file, not a folder. Fix: pass a new --out")):
        prepare_recipe(str(corpus), num_clients=3, out=a_file, progress=False, **SMALL)
    below = a_file / "ds"
    with pytest.raises(ManifestError, match=re.escape(f"{below / 'ref.bin'} cannot be written (Not a directory)")):
        prepare_recipe(str(corpus), num_clients=3, out=below, progress=False, **SMALL)
    assert a_file.read_text() == "keep me"

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(manifest_module.os, "fsync", full)
    with pytest.raises(ManifestError, match=r"ref.bin cannot be written \(No space left on device\)\. Fix: free"):
        prepare_recipe(str(corpus), num_clients=3, out=tmp_path / "ds", progress=False, **SMALL)


def test_train_batches_follow_the_seed_client_step_rule(corpus):
    folder = prepare_recipe(str(corpus), num_clients=4, progress=False, **SMALL)
    dm = datamodule(folder, batch_size=3, sequence_length=16, seed=7)
    dm.setup()
    batch = dm.train_batch(5)
    assert batch.shape == (4, 3, 17) and batch.dtype == torch.int64
    for n in range(4):  # b windows of client n's own train tokens, at starts drawn by rng([seed, n, t])
        tokens = read(folder, f"client_{n:02d}/train.bin").astype(np.int64)
        starts = np.random.default_rng([7, n, 5]).integers(0, len(tokens) - 16, 3)
        np.testing.assert_array_equal(batch[n].numpy(), np.stack([tokens[s : s + 17] for s in starts]))
    assert torch.equal(batch, datamodule(folder, batch_size=3, sequence_length=16, seed=7).train_batch(5))
    assert not torch.equal(batch, dm.train_batch(6))
    assert not torch.equal(batch, datamodule(folder, batch_size=3, sequence_length=16, seed=8).train_batch(5))
    assert isinstance(dm.tokens(0, "train"), np.memmap)


def test_train_dataloader_starts_at_global_step_times_accumulate(corpus):
    folder = prepare_recipe(str(corpus), num_clients=3, progress=False, **SMALL)
    dm = datamodule(folder, batch_size=2, sequence_length=8, seed=3, accumulate=4)
    first = iter(dm.train_dataloader())
    assert all(torch.equal(next(first), dm.train_batch(t)) for t in range(3))

    class Attached:
        global_step = 5

    dm.trainer = Attached()
    resumed = iter(dm.train_dataloader())
    assert all(torch.equal(next(resumed), dm.train_batch(t)) for t in range(20, 23))


class _Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch.clone())
        return self.w * batch.float().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _trainer(max_steps):
    return L.Trainer(
        max_steps=max_steps,
        accumulate_grad_batches=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )


def test_resumed_lightning_run_sees_exactly_the_batches_of_an_uninterrupted_one(corpus, tmp_path):
    folder = prepare_recipe(str(corpus), num_clients=3, progress=False, **SMALL)
    make = lambda: datamodule(folder, batch_size=2, sequence_length=8, seed=1, accumulate=2)  # noqa: E731
    whole = _Recorder()
    _trainer(5).fit(whole, datamodule=make())
    first = _Recorder()
    trainer = _trainer(2)
    trainer.fit(first, datamodule=make())
    trainer.save_checkpoint(tmp_path / "step2.ckpt")
    rest = _Recorder()
    _trainer(5).fit(rest, datamodule=make(), ckpt_path=tmp_path / "step2.ckpt")
    assert len(whole.seen) == 10 and len(first.seen) == 4 and len(rest.seen) == 6
    assert all(torch.equal(a, b) for a, b in zip(first.seen + rest.seen, whole.seen, strict=True))


def test_eval_batches_fixed_non_overlapping_and_from_the_right_split(corpus):
    folder = prepare_recipe(f"{corpus}:mixed", num_clients=3, progress=False, **SMALL)
    dm = datamodule(folder, batch_size=2, sequence_length=16, eval_batches=2)
    val = list(dm.val_dataloader())
    assert len(val) == 2 and all(b.shape == (3, 2, 17) and b.dtype == torch.int64 for b in val)
    assert all(torch.equal(a, b) for a, b in zip(val, dm.val_dataloader(), strict=True))
    for n in range(3):
        tokens = read(folder, f"client_{n:02d}/val.bin").astype(np.int64)
        windows = torch.cat(val, dim=1)[n].numpy()
        starts = [next(s for s in range(len(tokens) - 16) if np.array_equal(tokens[s : s + 17], w)) for w in windows]
        assert np.all(np.diff(starts) >= 17)  # non-overlapping, in order
        assert {c for c, _ in doc_ids(windows.ravel())} == {CATEGORIES[n], CATEGORIES[(n + 1) % 3]}
    trust = dm.trust_batches(num_batches=1)
    assert len(trust) == 1 and trust[0].shape == (3, 2, 17)
    assert doc_ids(trust[0][0].numpy().ravel()) <= doc_ids(read(folder, "client_00/trust.bin"))
    assert not doc_ids(trust[0][0].numpy().ravel()) & doc_ids(read(folder, "client_00/val.bin"))
    ref = dm.ref_batches(num_batches=3)
    assert len(ref) == 3 and ref[0].shape == (2, 17)
    assert {c for c, _ in doc_ids(torch.cat(ref).numpy().ravel())} == set(CATEGORIES)  # spans all
    with pytest.warns(UserWarning, match="fewer than the 8 asked for"):
        short = dm.trust_batches(num_batches=4)  # 60 trust tokens: 3 windows of 17
    assert [b.shape[1] for b in short] == [2, 1]


def test_corrupt_file_fails_the_hash_check(corpus):
    folder = prepare_recipe(str(corpus), num_clients=3, progress=False, **SMALL)
    path = folder / "client_01" / "val.bin"
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    dm = datamodule(folder, batch_size=2, sequence_length=8)
    with pytest.raises(ManifestError, match=r"client_01/val.bin does not match its sha256.*Fix: delete the folder"):
        dm.setup()
    path.write_bytes(bytes(data[:-2]))
    with pytest.raises(ManifestError, match="holds 149 tokens where the manifest says 150"):
        prepare_recipe(str(corpus), num_clients=3, progress=False, **SMALL)


def test_bad_inputs_name_the_problem_and_the_fix(corpus, tmp_path):
    with pytest.raises(ValueError, match="unknown recipe 'no_such'. Known recipes: .*offline_multi_specific"):
        prepare_recipe("no_such")
    with pytest.raises(ValueError, match="needs num_clients >= 3, got 2. Fix: --num_clients 3"):
        prepare_recipe(str(corpus), num_clients=2, progress=False, **SMALL)
    with pytest.raises(
        ValueError, match="not enough text in category 'alpha' for 3 clients at these budgets.*Fix: smaller budgets"
    ):
        prepare_recipe(str(corpus), num_clients=3, progress=False, train=100_000)
    with pytest.raises(ValueError, match="train budget must be a positive"):
        get_recipe("offline_multi_specific", train=0)
    folder = prepare_recipe(str(corpus), num_clients=3, progress=False, **SMALL)
    with pytest.raises(
        ValueError,
        match=r"client 0's trust split holds 60 tokens, fewer than one window of 101.*"
        r"Fix: --sequence_length 59 or less, or .* larger --trust_tokens",
    ):
        datamodule(folder, batch_size=2, sequence_length=100)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_recipe(str(tmp_path / "missing.jsonl"))  # not a name either: an unknown recipe
    bad = tmp_path / "bad.csv"
    bad.write_text("body,topic\nhello,a\n")
    with pytest.raises(ValueError, match=r"needs the columns 'text' and 'label'; it lacks \['label', 'text'\]"):
        prepare_recipe(str(bad), progress=False)
    (tmp_path / "single").mkdir()
    (tmp_path / "single" / "only.txt").write_text("one category only")
    with pytest.raises(ValueError, match="mixed split needs at least 2 categories"):
        prepare_recipe(f"{tmp_path / 'single'}:mixed", progress=False)


def test_bring_your_own_tables_and_files_per_category(tmp_path):
    rows = [
        {"text": f"{'sports' if i % 2 else 'science'}{i:03d}w " * 25, "label": ["science", "sports"][i % 2]}
        for i in range(60)
    ]
    jsonl = tmp_path / "news.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    csv_path = tmp_path / "news.csv"
    csv_path.write_text("text,label\n" + "\n".join(f'"{r["text"]}",{r["label"]}' for r in rows))
    files = tmp_path / "files"
    files.mkdir()
    for label in ("science", "sports"):  # one file per category, documents between blank lines
        (files / f"{label}.txt").write_text("\n\n".join(r["text"] for r in rows if r["label"] == label))
    for source in (jsonl, csv_path, files):
        folder = prepare_recipe(str(source), progress=False, **SMALL)  # default: one client per category
        m = manifest_of(folder)
        assert m["categories"] == ["science", "sports"] and m["num_clients"] == 2
        text = get_tokenizer().decode(read(folder, "client_01/train.bin").tolist())
        assert "sports" in text and "science" not in text and len(read(folder, "client_01/train.bin")) == 400


def paragraphs_of(tag, count):
    """`count` paragraphs of exactly 500 characters, each word naming its paragraph ("es007w")."""
    return [(f"{tag}{i:03d}w " * 80)[:499] + "." for i in range(count)]


def test_a_big_file_is_many_documents_at_the_top_or_in_a_category_folder(tmp_path):
    root = tmp_path / "byo"
    (root / "es").mkdir(parents=True)
    (root / "es" / "manual.txt").write_text("\n\n".join(paragraphs_of("es", 12)))
    (root / "en.txt").write_text("\n\n".join(paragraphs_of("en", 12)))
    (root / "de.txt").write_text("\n".join(paragraphs_of("de", 12)))  # one paragraph a line, no blank lines
    (root / "fr").mkdir()
    for i in range(5):
        (root / "fr" / f"note{i}.txt").write_text(f"fr{i:03d}w short note\n\nand its second paragraph\n")
    docs = load_local(root)
    # 500-character paragraphs, grouped up to 2,000 characters: four to a document, in order
    for tag in ("es", "en"):
        paras = paragraphs_of(tag, 12)
        assert docs[tag] == ["\n\n".join(paras[k : k + 4]) for k in (0, 4, 8)], tag
    lines = paragraphs_of("de", 12)  # a 6,000-character paragraph is cut at its line ends
    assert docs["de"] == ["\n".join(lines[k : k + 4]) for k in (0, 4, 8)]
    # many small files: each file one document, never merged with another
    assert docs["fr"] == [f"fr{i:03d}w short note\n\nand its second paragraph" for i in range(5)]
    big = tmp_path / "big"
    (big / "es").mkdir(parents=True)
    (big / "es" / "manual.txt").write_text("\n\n".join(paragraphs_of("es", 60)))
    (big / "en.txt").write_text("\n\n".join(paragraphs_of("en", 60)))
    folder = prepare_recipe(str(big), num_clients=6, progress=False, **SMALL)  # was: "its 1 documents ran out"
    m = manifest_of(folder)
    assert m["categories"] == ["en", "es"] and m["documents_used"] == {"en": 10, "es": 10}  # ref + 3 clients x 3


def test_a_long_text_without_line_breaks_is_cut_into_documents(tmp_path):
    """Issue 21.4: a file, or a table row, without line breaks was one document, which no budget could
    use ("smaller budgets" cannot help): it is cut at sentence ends, else at spaces, else anywhere."""
    sentences = [(f"en{i:03d}w " * 7)[:-1] + "." for i in range(300)]  # 49 characters each
    words = [f"de{i:04d}w" for i in range(1500)]  # no sentence ends: 7 characters each
    root = tmp_path / "own"
    root.mkdir()
    (root / "en.txt").write_text(" ".join(sentences))  # 14,999 characters on one line
    (root / "de.txt").write_text(" ".join(words) + "\n")
    (root / "zh.txt").write_text("字" * 5000)  # no spaces at all
    (root / "fr.txt").write_text("un document court.")  # a document of a sensible size stays whole
    docs = load_local(root)
    # 40 sentences (1,960 characters and 39 spaces) fill a document of at most 2,000
    assert docs["en"] == [" ".join(sentences[k : k + 40]) for k in range(0, 300, 40)]
    assert docs["de"] == [" ".join(words[k : k + 285]) for k in range(0, 1500, 285)]  # 285 x 7 = 1,995
    assert docs["zh"] == ["字" * 2000, "字" * 2000, "字" * 1000]
    assert docs["fr"] == ["un document court."]
    rows = tmp_path / "rows.csv"
    rows.write_text(f'text,label\n"{" ".join(sentences)}",en\n"{" ".join(sentences[:30])}",en\n{words[0]},de\n')
    assert load_local(rows) == {"de": [words[0]], "en": docs["en"] + [" ".join(sentences[:30])]}
    lines = tmp_path / "lines"
    lines.mkdir()
    for tag in ("en", "it"):  # one long line a category
        (lines / f"{tag}.txt").write_text(" ".join((f"{tag}{i:03d}w " * 7)[:-1] + "." for i in range(300)))
    folder = prepare_recipe(str(lines), progress=False)  # was: "its 1 documents ... ran out ... smaller budgets"
    sentences_in = [  # the sentences of category en in the ref stream and in client 0's splits
        set(re.findall(r"en(\d{3})w", get_tokenizer().decode(read(folder, rel).tolist())))
        for rel in ("ref.bin", "client_00/train.bin", "client_00/val.bin", "client_00/trust.bin")
    ]
    assert all(sentences_in) and sum(map(len, sentences_in)) == len(set().union(*sentences_in))  # disjoint
    assert 4 <= manifest_of(folder)["documents_used"]["en"] <= 8


def test_a_category_without_text_is_an_error_naming_it_and_its_files(tmp_path):
    """Issue 21.5: a category whose files held no text (only whitespace, or files not read as text)
    disappeared without a word: "2 clients over b"."""
    root = tmp_path / "own"
    (root / "a").mkdir(parents=True)
    (root / "a" / "blank.txt").write_text("  \n\n \n")
    (root / "a" / "scan.pdf").write_bytes(b"%PDF-1.4")
    (root / "b").mkdir()
    (root / "b" / "story.txt").write_text("a story")
    (root / "c").mkdir()
    with pytest.raises(
        DataError,
        match=re.escape(
            f"category 'a' ({root / 'a'}) holds no text: blank.txt holds only whitespace, scan.pdf is not read "
            "as text (.pdf). Fix: put text in it, or remove it from"
        ),
    ):
        load_local(root)
    shutil.rmtree(root / "a")
    with pytest.raises(DataError, match=re.escape(f"category 'c' ({root / 'c'}) holds no text: it holds no files.")):
        load_local(root)
    table = tmp_path / "rows.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in [{"text": "x", "label": "a"}, {"text": " ", "label": "b"}]))
    with pytest.raises(DataError, match=re.escape(f"{table}: category 'b' holds no text (its rows: line 2).")):
        load_local(table)


def test_bad_input_files_name_the_file_the_line_and_the_fix(tmp_path):
    def refused(path, content, message):
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        with pytest.raises(ValueError, match=re.escape(str(path)) + message):
            load_local(path)

    table = tmp_path / "news.csv"
    refused(
        table,
        "text,label\nfirst story,sports\nsecond story\n",
        r", line 3: 1 cell where the header has 2 "
        r"\(text, label\)\. Fix: give every row its text and label.*double quotes",
    )
    refused(
        table,
        'text,label\n"a story,\nover two lines",sports\nhello, world,sports\n',  # an unquoted comma
        r", line 4: 3 cells where the header has 2",
    )
    refused(
        table,
        "text,label\nfirst story,sports\nsecond story,  \n",
        r", line 3: the label is empty\. Fix: give "
        r"every row a label",
    )
    refused(
        table,
        "text,label\nfirst story,sports\ncaf\xc3\xa9\n".encode() + b"caf\xe9,sports\n",
        r", line 4: not UTF-8 text \(byte b'\\xe9'\)\. Fix: save it as UTF-8, e.g. `iconv -f latin1 -t utf-8",
    )
    rows = tmp_path / "news.jsonl"
    good = json.dumps({"text": "first story", "label": "sports"})
    refused(
        rows,
        f"{good}\n\n{json.dumps({'label': 'sports'})}\n",
        r", line 3: no 'text' key \(the row has \['label'\]\)\. Fix: give every row 'text' and 'label'",
    )
    refused(
        rows,
        f'{good}\n{good}\n\n{{"text": "a", label: 1}}\n',
        r", line 4: not valid JSON \(Expecting "
        r"property name enclosed in double quotes, column 15\)\. Fix: one JSON object per line",
    )
    refused(
        rows,
        f'{good}\n["a", "sports"]\n',
        r", line 2: a JSON array where an object with 'text' and "
        r"'label' is needed",
    )
    refused(
        rows,
        f"{good}\n{json.dumps({'text': None, 'label': 'sports'})}\n",
        r", line 2: the text is None, "
        r"not a string",
    )
    refused(rows, f"{good}\n{json.dumps({'text': 'x', 'label': None})}\n", r", line 2: the label is empty")
    refused(
        rows,
        f"{good}\n{json.dumps({'text': 'x', 'label': ['a']})}\n",
        r", line 2: the label is \['a'\], not a "
        r"name\. Fix: give every row a label naming its category",
    )
    # what is right still loads: a byte-order mark (Excel's UTF-8), Windows line ends, number labels
    table.write_bytes('\ufefftext,label\r\n"caf\u00e9, bar",1\r\nrunning, 2\r\n'.encode())
    assert load_local(table) == {"1": ["caf\u00e9, bar"], "2": ["running"]}  # the label " 2" is 2
    folder = tmp_path / "own"
    (folder / "es").mkdir(parents=True)
    (folder / "es" / "a.txt").write_text("uno")
    (folder / "es.txt").write_text("dos")
    with pytest.raises(ValueError, match=r"es and .*es.txt both hold the category 'es'\. Fix: keep each category"):
        load_local(folder)
    (folder / "es.txt").unlink()
    (folder / "es" / "b.txt").write_bytes(b"ni\xf1o")
    with pytest.raises(ValueError, match=r"es/b.txt, line 1: not UTF-8 text \(byte b'\\xf1'\)"):
        load_local(folder)


def test_cli_lists_recipes_prepares_and_reports_errors(corpus, capsys):
    assert prepare_main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in list_recipes()) and "offline_multi_specific" in listing
    assert (
        prepare_main(
            [
                str(corpus),
                "--num_clients",
                "3",
                *SMALL_CLI,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "3 clients over alpha, beta, gamma" in out and "train 400, val 150, trust 60" in out
    with pytest.raises(SystemExit) as exit_:
        prepare_main(["no_such_recipe"])
    assert exit_.value.code == 2 and "Known recipes" in capsys.readouterr().err


def test_every_paper_and_offline_recipe_is_registered():
    names = list_recipes()
    for kind in ("specific", "mixed"):
        for base in ("agnews", "three_multi", "github_wiki", "offline_multi", "offline_code_prose", "offline_topics"):
            assert f"{base}_{kind}" in names
    assert get_recipe("three_multi_specific").budget.train == 840_000
    assert get_recipe("three_multi_specific").budget.val == 160_000
    assert get_recipe("three_multi_specific").budget.ref == 300_000
    assert [
        get_recipe(n).num_clients
        for n in (
            "agnews_mixed",
            "agnews_specific",
            "three_multi_mixed",
            "github_wiki_specific",
            "offline_multi_specific",
        )
    ] == [4, 8, 9, 8, 8]
    assert issubclass(ManifestError, DataError)
