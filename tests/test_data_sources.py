"""Where text comes from: cleaning, Debian's archive (errors, and one real end-to-end build),
Hugging Face `datasets` on local files, and the pretraining corpus kept apart from clients."""

import json
import re
import sys

import numpy as np
import pytest

from data import ClientDataModule, DataConfig, SourceUnavailableError, prepare_recipe, pretraining_corpus
from data.recipes import OFFLINE_SHAPES
from data.sources import debian, hf, offline
from data.sources.text import documents, language_of, paragraphs, roff_to_text
from lora_gpt.tokenizer import EOT_TOKEN, get_tokenizer

MAN_PAGE = r""".\" a comment line
.TH LS 1 "2022" "GNU coreutils"
.SH NAME
ls \- list directory contents
.SH DESCRIPTION
.PP
List information about the \fIFILE\fPs (the current directory by default).
Sort entries \(lqalphabetically\(rq if none of
.BR \-cftuv SUX \" a trailing comment
nor \fB\-\-sort\fR is specified.
.TS
tab(;);
l l.
cell;cell
.TE
.de XX
.ft B
..
.if n .ad l
.IP \(bu 2
Mandatory\ arguments \*(lqto\*(rq long options are mandatory for short options too.
"""

PROSE = {
    "en": "The package manager keeps a list of the files that are installed, and it can remove them for you.",
    "fr": "Le gestionnaire de paquets garde la liste des fichiers installés et il peut les supprimer pour vous.",
    "de": "Die Paketverwaltung führt eine Liste der installierten Dateien und kann sie für Sie wieder entfernen.",
    "it": "Il gestore dei pacchetti tiene una lista dei file installati e può anche rimuoverli per te.",
}


pytestmark = pytest.mark.usefixtures("tokenizer", "cache")


def read(folder, rel):
    return np.fromfile(folder / rel, dtype=np.uint16)


# --- cleaning -----------------------------------------------------------------------------------


def test_roff_markup_is_stripped_to_paragraphs():
    text = roff_to_text(MAN_PAGE)
    assert paragraphs(text) == [
        "List information about the FILEs (the current directory by default). Sort entries “alphabetically” if "
        "none of -cftuvSUX nor --sort is specified.",
        "Mandatory arguments “to” long options are mandatory for short options too.",
    ]
    assert "NAME\nls - list directory contents" in text
    for leftover in ("cell", "tab(", ".ft", "comment", "\\f", "2022"):
        assert leftover not in text


def test_language_filter_and_document_grouping():
    assert {lang: language_of(p) for lang, p in PROSE.items()} == {lang: lang for lang in PROSE}
    assert language_of("$ sudo apt-get install -y foo bar && ls -la /etc/apt") is None
    french = [f"{PROSE['fr']} ({i})" for i in range(30)]
    seen = set()
    docs = documents([PROSE["en"], *french, french[0]], "fr", seen, max_chars=1000)
    assert [d.count("\n\n") + 1 for d in docs] == [9, 9, 9, 3]  # ~1000 characters each, all 30 paragraphs once
    assert PROSE["en"] not in "".join(docs)
    assert documents([french[3]], "fr", seen) == []  # boilerplate already seen elsewhere is dropped
    assert offline._strip_licence("/*\n * Copyright (c) Oracle\n */\npackage java.util;\n") == "package java.util;\n"
    assert offline._strip_licence("/* plain note */ class A {}") == "/* plain note */ class A {}"


# --- Debian's archive: errors -------------------------------------------------------------------


def fake_tool(folder, name, stderr, code):
    folder.mkdir(exist_ok=True)
    script = folder / name
    script.write_text(f"#!/bin/sh\necho '{stderr}' >&2\nexit {code}\n")
    script.chmod(0o755)


def test_missing_package_tools_are_named_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SourceUnavailableError, match="`apt-get` was not found.*Debian/Ubuntu.*your own data"):
        debian.fetch("fortunes")
    monkeypatch.setenv(debian.DEBS_ENV, str(tmp_path / "debs"))
    (tmp_path / "debs").mkdir()
    (tmp_path / "debs" / "fortunes_1.0_all.deb").write_bytes(b"!<arch>\n")
    assert debian.fetch("fortunes") == tmp_path / "debs" / "fortunes_1.0_all.deb"  # kept: never downloaded again
    with pytest.raises(SourceUnavailableError, match="`dpkg-deb` was not found"):
        with debian.unpacked(debian.fetch("fortunes")):
            pass


def test_apt_failures_say_whether_lists_or_network_are_missing(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    monkeypatch.setenv("PATH", str(bin_dir))
    fake_tool(bin_dir, "apt-get", "E: Unable to locate package fortunes", 100)
    with pytest.raises(SourceUnavailableError, match="package lists are missing.*sudo apt-get update"):
        debian.fetch("fortunes")
    fake_tool(bin_dir, "apt-get", "W: Failed to fetch http://deb.debian.org/x  Could not resolve host", 100)
    with pytest.raises(SourceUnavailableError, match="could not reach the Debian archive"):
        debian.fetch("fortunes")
    with pytest.raises(SourceUnavailableError, match="none of openjdk-17-source, openjdk-21-source could"):
        debian.fetch_first(("openjdk-17-source", "openjdk-21-source"))
    assert not list(debian.debs_dir().glob("*.deb"))


# --- Hugging Face datasets, on local files -------------------------------------------------------


@pytest.fixture()
def agnews_parquet(tmp_path, monkeypatch):
    import datasets
    import pandas as pd

    # `datasets` waits 5 s whenever a shuffled parquet stream closes (a guard against an Arrow
    # crash at interpreter exit); the test process lives on, so the wait only costs time here
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0, raising=False)
    words = ["world", "sports", "business", "science"]
    rows = [{"text": " ".join(f"{words[i % 4]}{i:03d}w{j}" for j in range(12)), "label": i % 4} for i in range(400)]
    path = tmp_path / "agnews.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


def test_paper_recipe_runs_its_real_loader_on_local_parquet(agnews_parquet, monkeypatch):
    local = {
        label: hf.HubSource("parquet", "text", data_files=str(agnews_parquet), where={"label": i})
        for i, label in enumerate(hf.AG_NEWS_LABELS)
    }
    monkeypatch.setitem(hf.SOURCES, "agnews", local)
    folder = prepare_recipe("agnews_specific", num_clients=4, progress=False, train=300, val=100, trust=40, ref=80)
    m = json.loads((folder / "manifest.json").read_text())
    assert m["categories"] == list(hf.AG_NEWS_LABELS) and m["client_categories"] == [0, 1, 2, 3]
    for n, word in enumerate(["world", "sports", "business", "science"]):
        text = get_tokenizer().decode(read(folder, f"client_{n:02d}/train.bin").tolist())
        assert (
            set(re.findall(r"([a-z]+)\d{3}w", text)) == {word} and len(read(folder, f"client_{n:02d}/train.bin")) == 300
        )
    assert len(read(folder, "ref.bin")) == 4 * 80
    import pandas as pd

    in_file = [t for t, label in pd.read_parquet(agnews_parquet).itertuples(index=False) if label == 1]
    streamed = list(hf.stream_texts(local["Sports"], seed=0))
    assert sorted(streamed) == sorted(in_file) and streamed != in_file  # all of them, shuffled
    assert list(hf.stream_texts(local["Sports"], seed=0)) == streamed  # the same order for a seed
    assert list(hf.stream_texts(local["Sports"], seed=1)) != streamed


def test_hub_errors_name_the_fix(agnews_parquet, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.example.invalid")
    with pytest.raises(SourceUnavailableError, match="hub.example.invalid\\) cannot be reached.*offline recipe"):
        prepare_recipe("three_multi_specific", progress=False)
    monkeypatch.setitem(
        hf.SOURCES, "agnews", {"World": hf.HubSource("parquet", "body", data_files=str(agnews_parquet))}
    )
    with pytest.raises(SourceUnavailableError, match="has no column 'body'"):
        prepare_recipe("agnews_specific", num_clients=1, progress=False)
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(SourceUnavailableError, match="pip install datasets.*offline recipe"):
        prepare_recipe("agnews_specific", progress=False)


# --- the pretraining corpus, on generated corpora ------------------------------------------------


def test_pretraining_corpus_holds_only_documents_no_client_gets(monkeypatch, tmp_path):
    def fake(name):
        return lambda: [" ".join(f"{name}{d:04d}w{i}" for i in range(20)) for d in range(300)]

    for name in offline.CORPORA:
        monkeypatch.setitem(offline.CORPORA, name, fake(name))
    mix = {name: 100_000 for name in offline.CORPORA}
    folder = pretraining_corpus(mix, progress=False)
    ids = lambda tokens: set(re.findall(r"([a-z_]+\d{4})w", get_tokenizer().decode(tokens.tolist())))  # noqa: E731
    train, val = ids(read(folder, "train.bin")), ids(read(folder, "val.bin"))
    reserved = {
        ids(np.array(get_tokenizer().encode(doc))).pop()
        for name in offline.CORPORA
        for doc in offline.CORPORA[name]()
        if offline.for_pretraining(doc) or name in offline.PRETRAINING_ONLY
    }
    assert train | val == reserved and not train & val
    shared = len(offline.CORPORA) - len(offline.PRETRAINING_ONLY)
    assert 0.15 < (len(reserved) - 300 * len(offline.PRETRAINING_ONLY)) / (300 * shared) < 0.25  # the documented 20%
    assert {f"fortunes_{c}{d:04d}" for c in ("de", "it") for d in range(300)} <= train | val  # all of them
    used_by_recipes = {c for shape in OFFLINE_SHAPES.values() for corpora in shape[0].values() for c in corpora}
    assert used_by_recipes == set(offline.CORPORA) - offline.PRETRAINING_ONLY
    assert 0 < len(val) < 0.15 * len(reserved)
    assert json.loads((folder / "manifest.json").read_text())["corpora"]["java"]["train"] > 0
    # no offline recipe hands a reserved document to a client or to the reference stream
    for recipe in ("offline_multi_specific", "offline_code_prose_mixed", "offline_topics_specific"):
        prepared = prepare_recipe(recipe, progress=False, train=300, val=100, trust=50, ref=100)
        for path in prepared.rglob("*.bin"):
            assert not ids(read(prepared, path.relative_to(prepared))) & reserved, (recipe, path)
    assert pretraining_corpus(mix, progress=False) == folder  # reused
    small = pretraining_corpus({"java": 500, "fortunes_de": 500}, progress=False)  # a mix of its own, capped
    assert small != folder and json.loads((small / "manifest.json").read_text())["corpora"]["java"]["train"] == 500
    with pytest.raises(ValueError, match="unknown: klingon"):
        pretraining_corpus({"klingon": 10}, progress=False)


# --- one offline recipe end to end, from the real archive -----------------------------------------


@pytest.fixture(scope="session")
def shared_debs(tmp_path_factory):
    """One download of the .deb files for the whole session, whatever cache each test uses."""
    return tmp_path_factory.mktemp("debs")


def test_offline_recipes_end_to_end_from_debian(shared_debs, monkeypatch):
    monkeypatch.setenv(debian.DEBS_ENV, str(shared_debs))
    try:
        debian.fetch("debian-reference-fr")
    except SourceUnavailableError as err:
        pytest.skip(f"Debian's archive is not usable from this machine: {err}")
    folder = prepare_recipe(
        "offline_multi_mixed", num_clients=3, progress=False, train=3000, val=800, trust=300, ref=600
    )
    m = json.loads((folder / "manifest.json").read_text())
    assert m["categories"] == ["french", "german", "italian"] and m["num_clients"] == 3
    np.testing.assert_allclose(m["mixture"], [[0.75, 0.25, 0], [0, 0.75, 0.25], [0.25, 0, 0.75]], atol=0.01)
    codes = {"french": "fr", "german": "de", "italian": "it"}
    for n in range(3):
        docs = get_tokenizer().decode(read(folder, f"client_{n:02d}/train.bin").tolist()).split("<|endoftext|>")
        langs = [language_of(d) for d in docs if len(d) > 300]
        major, minor = codes[m["categories"][n]], codes[m["categories"][(n + 1) % 3]]
        assert langs.count(major) > langs.count(minor) > 0, langs  # really mixed: two languages, 3:1
        assert set(langs) <= {major, minor, None}
    assert len(offline.corpus("italian")) > 300 and sum(map(len, offline.corpus("french"))) > 2_000_000
    assert (read(folder, "ref.bin") == EOT_TOKEN).sum() > 0
    dm = ClientDataModule(folder=folder, config=DataConfig(batch_size=2, sequence_length=64, eval_batches=2))
    dm.setup()
    assert dm.train_batch(0).shape == (3, 2, 65) and len(dm.val_batches()) == 2
    topics = prepare_recipe(
        "offline_topics_specific", num_clients=4, progress=False, train=2000, val=500, trust=200, ref=300
    )
    assert json.loads((topics / "manifest.json").read_text())["categories"] == list(offline.FORTUNE_TOPICS)
    assert "\x08" not in get_tokenizer().decode(read(topics, "client_00/train.bin").tolist())
    assert sorted(p.name.split("_")[0] for p in shared_debs.glob("*.deb")) == sorted(
        [
            "debian-reference-fr",
            "debian-reference-de",
            "debian-reference-it",
            "fortunes",
            "manpages-fr",
            "manpages-de",
            "manpages-it",
        ]
    )


def test_english_man_pages_come_from_the_top_folder_only(tmp_path, monkeypatch):
    """Debian's `manpages` keeps English pages directly under usr/share/man; translated packages
    use usr/share/man/<lang>. Each corpus must read its own pages and no translation."""
    import gzip
    from contextlib import contextmanager

    root = tmp_path / "root" / "usr/share/man"
    for folder, text in (("man1", PROSE["en"]), ("fr/man1", PROSE["fr"]), ("man3", PROSE["en"] + " Again.")):
        (root / folder).mkdir(parents=True)
        with gzip.open(root / folder / "ls.1.gz", "wt") as f:
            f.write(f".TH LS 1\n.SH DESCRIPTION\n{text}\n")

    @contextmanager
    def fake_unpacked(deb):
        yield tmp_path / "root"

    monkeypatch.setattr(offline, "fetch", lambda package: package)
    monkeypatch.setattr(offline, "unpacked", fake_unpacked)
    english = [f"DESCRIPTION {PROSE['en']}", f"DESCRIPTION {PROSE['en']} Again."]
    assert offline._manpages("", "en", "manpages", set()) == english
    assert offline._manpages("fr", "fr", "manpages-fr", set()) == [f"DESCRIPTION {PROSE['fr']}"]
    assert offline._english_manpages() == english  # the same tree read twice: duplicates dropped


def test_foreign_fortunes_keep_their_own_language_only(tmp_path, monkeypatch):
    from contextlib import contextmanager

    folder = tmp_path / "root/usr/share/games/fortunes/it"
    folder.mkdir(parents=True)
    (folder / "leggi").write_text(f"{PROSE['it']}\n%\n{PROSE['en']}\n%\nciao\n%\n{PROSE['it']} Ancora.\n")
    (folder / "leggi.dat").write_bytes(b"\x00\x02binary")
    (folder / "leggi.u8").symlink_to(folder / "leggi")  # the package's UTF-8 alias: read once

    @contextmanager
    def fake_unpacked(deb):
        yield tmp_path / "root"

    monkeypatch.setattr(offline, "fetch", lambda package: package)
    monkeypatch.setattr(offline, "unpacked", fake_unpacked)
    assert offline._foreign_fortunes("it") == [PROSE["it"], f"{PROSE['it']} Ancora."]
