"""`--profile reference` against the reference code (epfml/personalized-collaborative-llms at e47fc90):
every resolved setting beside the reference's value and the file and line it comes from, the static
matrices against its own loop, AG News built as it builds it, its document separator, and the switch
run end to end on a tiny model."""

import dataclasses
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tiny_run import tiny_inputs

from collab import cli, fit
from collab.config import FitConfig
from collab.trust import StaticMixture, build_family
from collab.trust.scores import reference_matrices
from data import prepare_recipe
from data.recipes import get_recipe
from data.sources import hf
from data.tokenize import TokenizedDocuments
from lora_gpt.tokenizer import get_tokenizer

ROOT = Path(__file__).resolve().parents[1]
# The reference's value of every setting the reference decides, with where its code says so (paths
# in its repository, lines at e47fc90). `script.sh` is its scripts/script.sh, whose line 16 is the
# paper's command (--trust_freq 25 --pretraining_rounds 100 --iterations 500 --eval_freq 25
# --use_pretrained gpt2 --lora_mlp --lora_causal_self_attention).
REFERENCE = {
    "trust.trust_freq": (25, "scripts/script.sh:16"),
    "trust.pretraining_rounds": (100, "scripts/script.sh:16; the test src/optim/lora.py:64"),
    "trust.k": (3, "src/config/lora.py:66"),
    "trust.temperature": (1.0, "src/optim/lora.py:306, 330, 352: F.softmax(trust_weights) as it is"),
    "trust.similarity": ("reference-rows", "src/optim/lora.py:276-288: cosine_similarity of A [d_in, r], B [r, d_out]"),
    "trust.ref_score": ("perplexity", "src/optim/lora.py:84-90: res = -val_perplexity"),
    "trust.token_distance": ("reference-logits", "src/optim/lora.py:99-125: top-100 logits of 4 ref batches"),
    "trust.static_rule": ("reference", "src/optim/lora.py:223-273: __average_static"),
    "trust.peers": (0, "src/optim/lora.py:81-87, 116-122: every pair is scored"),
    "data.pairing": ("reference", "src/data/agnews_mixed.py:34-45 (pairs); src/data/three_multi_mixed.py:69 (ring)"),
    "data.volumes": ("reference", "src/data/agnews_mixed.py:15-45, agnews_specific.py:15-45: whole shares, test split"),
    "data.separator": ("space", "src/data/agnews_mixed.py:48-49, three_multi_specific.py:64-65: ' '.join"),
    "data.split_seed": (1, "src/main.py:54, 58: np.random.seed(seed), then one cached split; script.sh:13 seeds 1-10"),
    "data.batch_size": (50, "src/config/lora.py:9"),
    "data.sequence_length": (512, "src/config/lora.py:40"),
    "data.eval_batches": (12, "src/optim/lora.py:85, 149: max_num_batches=12"),
    "data.eval_overlap": (True, "src/optim/utils.py:7-10, 24-25: random windows, overlapping"),
    "data.trust_split": ("val", "src/optim/lora.py:84-85: eval(model, data['val'][id1], ...)"),
    "lora.rank": (4, "src/config/lora.py:54"),
    "lora.alpha": (32.0, "src/config/lora.py:55"),
    "lora.dropout": (0.1, "src/config/lora.py:56"),
    "lora.targets": (
        ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
        "scripts/script.sh:16; src/models/lora.py:107-119, 172-180",
    ),
    "lora.init": ("reference", "src/models/lora.py:51-54, 63: kaiming_uniform_ of A [d_in, r]; src/main.py:62-63 each"),
    "optim.iterations": (500, "scripts/script.sh:16"),
    "optim.acc_steps": (4, "src/config/lora.py:10"),
    "optim.lr": (2e-3, "src/config/lora.py:14"),
    "optim.betas": ([0.9, 0.95], "src/config/lora.py:17-18"),
    "optim.weight_decay": (1e-3, "src/config/lora.py:16; src/models/lora.py:370-373: LoRA's A and B decay"),
    "optim.warmup_percent": (0.02, "src/config/lora.py:15"),
    "optim.final_div": (5.0, "src/main.py:91-96: div_factor 1e2, final_div_factor .05: lr / 100 / .05"),
    "optim.grad_clip": (0.0, "src/config/lora.py:23"),
    "run.init": ("gpt2", "scripts/script.sh:16; src/config/lora.py:34"),
    "run.dropout": (0.2, "src/models/lora.py:327: config_args['dropout'] = 0.2"),
    "run.gelu": ("exact", "src/models/lora.py:185: nn.GELU()"),
    "run.eval_freq": (25, "scripts/script.sh:16"),
    "run.precision": ("auto", "src/optim/lora.py:18-19: bfloat16 autocast on a GPU, which auto gives there"),
}
# What each variant keeps, from the scores the options above choose (`threshold` unset resolves to these).
THRESHOLDS = {
    "dynamic": (0.5, "src/optim/lora.py:313"),
    "dynamic-ref": (-30.0, "src/optim/lora.py:336"),
    "dynamic-token": (-50.0, "src/optim/lora.py:358"),
}
TOKEN_TOP_K = (100, "src/optim/lora.py:109: torch.topk(logits_out, 100)")
# Settings the reference decides per run or per recipe (the grid: scripts/reproduce.py, the recipes'
# budgets below), or that it has no counterpart of (how this project runs, stores and shows a run).
NOT_SET_BY_THE_PROFILE = {
    "trust.strategy", "trust.threshold", "trust.token_top_k", "trust.explore", "trust.eval_chunk", "trust.plugins",
    "data.dataset", "data.data_dir", "data.num_clients", "data.train_tokens", "data.val_tokens",
    "data.trust_tokens", "data.ref_tokens", "lora.kernel", "lora.init_seed", "memory.client_chunk",
    "memory.loss_chunk", "run.seed", "run.ckpt_freq", "run.out", "run.accelerator", "run.devices", "run.logger",
    "run.progress",
    # beyond the reference: bad clients and the defences against them, trust that learns how much
    "attack.kind", "attack.bad", "attack.poses_as", "attack.scale", "trust.norm_bound", "trust.token_source",
    "trust.learn_every", "trust.parts",
}  # fmt: skip
# The recipes' budgets under the switch: (recipe, split) -> (tokens, where).
BUDGETS = {
    ("three_multi_specific", "train"): (840_000, "src/data/three_multi_specific.py:66"),
    ("three_multi_specific", "val"): (160_000, "src/data/three_multi_specific.py:67"),
    ("three_multi_specific", "ref"): (300_000, "src/data/three_multi_specific.py:61"),
    ("three_multi_mixed", "train"): (630_000 + 210_000, "src/data/three_multi_mixed.py:66, 71"),
    ("three_multi_mixed", "val"): (120_000 + 40_000, "src/data/three_multi_mixed.py:67, 72"),
    ("github_wiki_specific", "train"): (840_000, "src/data/github_wiki_specific.py:74, 82"),
    ("github_wiki_specific", "val"): (160_000, "src/data/github_wiki_specific.py:76, 83"),
    ("github_wiki_specific", "ref"): (500_000, "src/data/github_wiki_specific.py:67, 70"),
    ("github_wiki_mixed", "train"): (630_000 + 210_000, "src/data/github_wiki_mixed.py:77, 79"),
    ("github_wiki_mixed", "val"): (120_000 + 40_000, "src/data/github_wiki_mixed.py:78, 81"),
}


def resolved(config: FitConfig) -> dict:
    return {f"{g}.{k}": v for g, items in config.to_dict().items() for k, v in items.items()}


def test_every_setting_of_the_switch_is_the_reference_codes():
    config = cli.parse(["--profile", "reference"])
    settings = resolved(config)
    assert set(REFERENCE) | NOT_SET_BY_THE_PROFILE == set(settings)  # every setting is in one list or the other
    assert not set(REFERENCE) & NOT_SET_BY_THE_PROFILE
    wrong = {name: (settings[name], value, where) for name, (value, where) in REFERENCE.items()}
    assert not {name: said for name, said in wrong.items() if said[0] != said[1]}
    for strategy, (threshold, where) in THRESHOLDS.items():
        family = build_family(dataclasses.replace(config.trust, strategy=f"{strategy}-thresh"))
        assert family.selection.threshold == threshold, where
    assert build_family(dataclasses.replace(config.trust, strategy="dynamic-token")).measure.top_k == TOKEN_TOP_K[0]
    # the profile holds the paper profile's settings, and the rest are the reference code's behaviours
    command = cli.fit_command()
    paper = command.profile_values("paper")
    reference = command.profile_values("reference")
    assert all(reference[g][k] == v for g, items in paper.items() for k, v in items.items())
    for (recipe, split), (tokens, where) in BUDGETS.items():
        assert getattr(get_recipe(recipe).budget, split) == tokens, where
    assert "--data.eval_overlap" in command.profile_settings("reference")


# --- static: the reference's own loop (src/optim/lora.py:223-273 at e47fc90), as it is ---------------


def reference_static_loop(dataset: str, n: int) -> torch.Tensor:
    w = torch.zeros(n, n, dtype=torch.float64)
    for id_1 in range(n):
        for id_2 in range(n):
            if id_2 <= id_1:
                score = 0.0
                if dataset == "agnews_mixed":
                    if id_1 == id_2:
                        score = 3 / 4
                    elif (id_2 // 2) == (id_1 // 2):
                        score = 1 / 4
                if dataset == "agnews_specific":
                    if (id_2 // 2) == (id_1 // 2):
                        score = 4 / n
                if dataset == "three_multi_specific":
                    if (id_2 % 3) == (id_1 % 3):
                        score = 3 / n
                if dataset == "three_multi_mixed":
                    table = {0: (5, 3, 1), 1: (1, 5, 3), 2: (3, 1, 5)}[id_1 % 3]
                    score = table[id_2 % 3] / (n * 3)
                if dataset == "github_wiki_specific":
                    if (id_2 % 2) == (id_1 % 2):
                        score = 2 / n
                if dataset == "github_wiki_mixed":
                    score = 3 / (n * 2) if (id_1 % 2) == (id_2 % 2) else 1 / (n * 2)
                w[id_1, id_2] = score
                w[id_2, id_1] = score
    return w


def intended_mixture(dataset: str, n: int) -> torch.Tensor:
    """Each reference client's category mixture as its data files mean it (its bugs aside: docs/trust.md)."""
    rows = []
    for i in range(n):
        if dataset == "agnews_mixed":  # src/data/agnews_mixed.py:34-39: client 0 is 1/4 class 0, 3/4 class 1
            pair, main = i // 2, 1 - i % 2
            row = [0.0] * 4
            row[2 * pair + main], row[2 * pair + 1 - main] = 0.75, 0.25
        elif dataset == "agnews_specific":  # agnews_specific.py:34-38: clients 2k and 2k+1 halve class k
            row = [float(c == i // 2) for c in range(4)]
        elif dataset.endswith("specific"):  # client i holds category i % C
            c = 3 if dataset.startswith("three") else 2
            row = [float(k == i % c) for k in range(c)]
        else:  # three_multi_mixed.py:63-72, github_wiki_mixed: 3/4 category i % C, 1/4 category (i + 1) % C
            c = 3 if dataset.startswith("three") else 2
            row = [0.0] * c
            row[i % c], row[(i + 1) % c] = 0.75, 0.25
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize(
    "dataset, n",
    [
        ("agnews_mixed", 4),
        ("agnews_specific", 8),
        ("three_multi_specific", 9),
        ("three_multi_mixed", 9),
        ("three_multi_mixed", 6),
        ("github_wiki_specific", 8),
        ("github_wiki_mixed", 8),
    ],
)
def test_static_reference_rule_is_the_reference_codes_matrix(dataset, n):
    class Measured:
        num_clients = n

        def mixture(self):
            return intended_mixture(dataset, n)

    expected = reference_static_loop(dataset, n)
    torch.testing.assert_close(reference_matrices(intended_mixture(dataset, n)), expected)
    static = StaticMixture("reference")
    torch.testing.assert_close(static.to_trust(static.scores(Measured())).double(), expected, atol=1e-7, rtol=0)


def test_three_multi_mixed_rows_do_not_sum_to_one_as_in_the_reference():
    """The defect docs/trust.md states: at N=9 the rows of clients 1, 4, 7 sum to 25/27; own-mixture
    (normalised) differs from the reference's entries by up to 1/9."""
    expected = reference_static_loop("three_multi_mixed", 9)
    sums = expected.sum(1)
    torch.testing.assert_close(sums[[1, 4, 7]], torch.full((3,), 25 / 27, dtype=torch.float64))
    torch.testing.assert_close(sums[[0, 2, 3, 5, 6, 8]], torch.ones(6, dtype=torch.float64))
    own = StaticMixture("own-mixture")

    class Measured:
        num_clients = 9

        def mixture(self):
            return intended_mixture("three_multi_mixed", 9)

    gap = (own.to_trust(own.scores(Measured())).double() - expected).abs().max().item()
    assert gap == pytest.approx(1 / 9, abs=1e-6)


# --- data --------------------------------------------------------------------------------------


def test_space_separator_gives_the_tokens_of_the_reference_codes_join(tokenizer):
    docs = [
        "The package manager keeps a list of 12 files.\nIt can remove them, too!",
        "Le gestionnaire de paquets garde la liste (des fichiers) installés.",
        "x = f(3) + 4; // code: 'quoted' \"double\"",
        "1999 was a year",
        "d'accord, it's fine",
    ]
    ours = TokenizedDocuments(docs, separator="space")
    joined = np.concatenate([ours[i] for i in range(len(docs))])
    # the reference: tokenizer.encode_ordinary(' '.join(docs)) (src/data/agnews_mixed.py:48-50), here after
    # a first space too, as every document of a split but its first follows one
    assert joined.tolist() == get_tokenizer().encode_ordinary(" " + " ".join(docs))
    assert TokenizedDocuments(docs)[0][-1] == get_tokenizer().eot_token  # the default: an end-of-text after each


@pytest.fixture()
def agnews_files(tmp_path, monkeypatch):
    """AG News train and test splits as local parquet files, every document with its own id."""
    import datasets
    import pandas as pd

    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0, raising=False)
    words = ["world", "sports", "business", "science"]
    paths = {}
    for split, ids in (("train", range(0, 400)), ("test", range(400, 480))):
        rows = [{"text": " ".join(f"{words[i % 4]}{i:03d}w{j}" for j in range(8)), "label": i % 4} for i in ids]
        paths[split] = tmp_path / f"agnews_{split}.parquet"
        pd.DataFrame(rows).to_parquet(paths[split])
    for table, split in ((hf.SOURCES, "train"), (hf.HELD_OUT, "test")):
        local = {
            label: hf.HubSource("parquet", "text", data_files=str(paths[split]), where={"label": i})
            for i, label in enumerate(hf.AG_NEWS_LABELS)
        }
        monkeypatch.setitem(table, "agnews", local)
    return words


def documents_in(folder, rel):
    tokens = np.fromfile(folder / rel, dtype=np.uint16)
    return set(re.findall(r"([a-z]+\d{3})w", get_tokenizer().decode(tokens.tolist())))


@pytest.mark.usefixtures("tokenizer", "cache")
def test_agnews_is_built_as_the_reference_builds_it(agnews_files):
    """Each client its whole share of its classes' train documents (3/4 and 1/4 by document count,
    `len // 4` to the minor holder: src/data/agnews_mixed.py:28-39), validation on its share of the
    test split (:40-45), clients (0, 1) and (2, 3) sharing two classes; the reference stream and the
    trust splits, which the reference has not, come out of the train split first."""
    folder = prepare_recipe(
        "agnews_mixed", num_clients=4, progress=False, pairing="reference", volumes="reference", trust=40, ref=80
    )
    m = json.loads((folder / "manifest.json").read_text())
    assert m["options"]["pairing"] == "pairs" and m["options"]["volumes"] == "reference"
    trust = [documents_in(folder, f"client_{n:02d}/trust.bin") for n in range(4)]
    taken = documents_in(folder, "ref.bin").union(*trust)
    word = {w: c for c, w in enumerate(agnews_files)}
    for split, ids in (("train", range(0, 400)), ("val", range(400, 480))):
        owners = [documents_in(folder, f"client_{n:02d}/{split}.bin") for n in range(4)]
        assert not any(a & b for i, a in enumerate(owners) for b in owners[i + 1 :])  # no document twice
        pool = {f"{agnews_files[i % 4]}{i:03d}" for i in ids}
        if split == "train":  # documents cut at the end of a ref or trust piece are dropped whole, as budgets do
            pool = {d for d in pool if d not in taken}
        assert set().union(*owners) <= pool and not set().union(*owners) & taken
        assert len(pool - taken - set().union(*owners)) <= 4 + 8  # a cut document per ref (4) and trust (8) piece
        for c in range(4):
            left = sorted(d for d in pool if word[re.match("[a-z]+", d).group()] == c)
            if split == "train":
                left = [d for d in left if d not in taken and d in set().union(*owners)]
            holders = [n for n in range(4) if any(word[re.match("[a-z]+", d).group()] == c for d in owners[n])]
            pair = [2 * (c // 2), 2 * (c // 2) + 1]
            assert holders == pair  # the pairs: (0, 1) hold classes 0 and 1, (2, 3) classes 2 and 3
            main, minor = (pair[0], pair[1]) if c % 2 == 0 else (pair[1], pair[0])
            count = {n: sum(word[re.match("[a-z]+", d).group()] == c for d in owners[n]) for n in pair}
            assert count[minor] == len(left) // 4 and count[main] == len(left) - len(left) // 4, (split, c)
    # the test split whole: every test document is some client's
    assert set().union(*(documents_in(folder, f"client_{n:02d}/val.bin") for n in range(4))) == {
        f"{agnews_files[i % 4]}{i:03d}" for i in range(400, 480)
    }
    with pytest.raises(Exception, match="--data.volumes reference gives every agnews_mixed client its whole share"):
        prepare_recipe("agnews_mixed", num_clients=4, progress=False, volumes="reference", train=100)


# --- the switch, end to end on a tiny model ------------------------------------------------------

TINY_SIZES = [
    *("--iterations", "2", "--pretraining_rounds", "2", "--trust_freq", "2", "--eval_freq", "2", "--acc_steps", "1"),
    *("--batch_size", "2", "--sequence_length", "16", "--eval_batches", "4", "--accelerator", "cpu", "--no-progress"),
    *("--train_tokens", "400", "--val_tokens", "100", "--trust_tokens", "40", "--ref_tokens", "100"),
]  # fmt: skip
OVERRIDDEN = {
    "trust.trust_freq", "trust.pretraining_rounds", "data.batch_size", "data.sequence_length", "data.eval_batches",
    "optim.iterations", "optim.acc_steps", "run.init", "run.eval_freq",
}  # fmt: skip


@pytest.fixture()
def three_languages(tmp_path):
    """A corpus of three categories (the shape of three_multi) and a tiny base."""
    _, base = tiny_inputs(tmp_path)
    corpus = tmp_path / "three"
    for cat in ("french", "italian", "german"):
        (corpus / cat).mkdir(parents=True)
        for d in range(20):
            (corpus / cat / f"{d}.txt").write_text(" ".join(f"{cat} item {d} {i}" for i in range(40)))
    return corpus, base


def test_the_switch_runs_and_records_every_reference_behaviour(three_languages, cache, tmp_path, capsys):
    corpus, base = three_languages
    out = tmp_path / "reference"
    argv = ["--profile", "reference", "--trust", "static", "--dataset", f"{corpus}:mixed", "--num_clients", "3"]
    assert fit.main([*argv, "--init", str(base), "--out", str(out), *TINY_SIZES]) == 0
    printed = capsys.readouterr().out
    saved = yaml.safe_load((out / "config.yaml").read_text())
    flat = {f"{g}.{k}": v for g, items in saved.items() for k, v in items.items()}
    for name, (value, where) in REFERENCE.items():
        if name not in OVERRIDDEN:
            assert flat[name] == value, (name, where)  # written into config.yaml like any option
    summary = json.loads((out / "summary.json").read_text())
    manifest = json.loads((Path(summary["dataset"]["folder"]) / "manifest.json").read_text())
    assert manifest["options"]["seed"] == 1 and manifest["options"]["separator"] == "space"
    assert manifest["options"]["pairing"] == "ring"  # the reference pairs AG News only
    # 4 x 2 windows of 17 tokens asked of 100 val tokens (5 without overlap): all 8 read, none warned
    assert summary["dataset"]["windows"]["val"] == {"split": "val", "asked": 8, "used": 8, "read": True}
    assert summary["dataset"]["windows"]["trust"]["split"] == "val" and not summary["warnings"]
    assert "warning:" not in printed
    # static on three mixed categories: the reference's hand-set matrix, rows as it has them
    step = json.loads(sorted((out / "trust").glob("step_*.json"))[0].read_text())
    expected = reference_static_loop("three_multi_mixed", 3)
    torch.testing.assert_close(torch.tensor(step["trust"], dtype=torch.float64), expected, atol=1e-6, rtol=0)
    assert fit.load_base(cli.load_config(out / "config.yaml").run, 16).config.gelu == "exact"
    # without the switch, the same short split: fewer windows, recorded and said
    plain = tmp_path / "plain"
    argv = ["--trust", "dynamic-ref", "--dataset", f"{corpus}:mixed", "--num_clients", "3", "--init", str(base)]
    with pytest.warns(UserWarning, match="the val split holds 5 non-overlapping windows"):
        assert fit.main([*argv, "--out", str(plain), *TINY_SIZES]) == 0
    summary = json.loads((plain / "summary.json").read_text())
    windows = summary["dataset"]["windows"]
    assert (windows["val"]["used"], windows["trust"]["used"], windows["trust"]["split"]) == (5, 2, "trust")
    said = [w for w in summary["warnings"] if "windows of 17 tokens" in w]
    assert len(said) == 2 and "dynamic-ref's peer losses read 2 windows" in said[1]
    printed = capsys.readouterr().out
    assert all(f"warning: {w}" in printed for w in said)


def test_the_reproduction_grid_runs_with_the_switch(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("scripts_reproduce", ROOT / "scripts" / "reproduce.py")
    reproduce = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = reproduce
    spec.loader.exec_module(reproduce)
    assert reproduce.main(["--profile", "reference", "--seeds", "1", "--out", str(tmp_path), "--dry_run"]) == 0
    runs = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(runs) == 6 * 6 and all("collab.fit --profile reference --trust" in line for line in runs)
