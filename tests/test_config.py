"""The run configuration: one default per option, the CLI and config files built from it, the
paper profile, and checks that name the option."""

import re

import pytest

from collab import cli, fit
from collab.config import FitConfig
from collab.trust import TrustSettings, strategy_names
from lora_gpt import LoRAConfig
from lora_gpt.errors import ConfigError
from lora_gpt.lora import ATTENTION_TARGETS, MLP_TARGETS

FLAGS = [
    "--trust",
    "dynamic-top-k",
    "--k",
    "2",
    "--num_clients",
    "4",
    "--lr",
    "0.05",
    "--betas",
    "0.8",
    "0.9",
    "--lora_rank",
    "8",
    "--no-lora_mlp",
    "--iterations",
    "7",
    "--client_chunk",
    "2",
    "--out",
    "runs/x",
    "--no-progress",
    "--dataset",
    "offline_topics_mixed",
    "--pairing",
    "pairs",
]
YAML = """
trust: {strategy: dynamic-top-k, k: 2}
data: {num_clients: 4, dataset: offline_topics_mixed, pairing: pairs}
lora: {rank: 8, targets: [attn.c_attn, attn.c_proj]}
optim: {lr: 5e-2, betas: [0.8, 0.9], iterations: 7}   # 5e-2 is text to YAML: read as the field's type
memory: {client_chunk: 2}
run: {out: runs/x, progress: false}
"""


def test_the_cli_defaults_are_the_library_defaults():
    assert cli.parse([]) == FitConfig()
    assert (TrustSettings().trust_freq, TrustSettings().pretraining_rounds) == (10, 20)
    assert LoRAConfig().targets == ATTENTION_TARGETS + MLP_TARGETS == cli.parse([]).lora.targets


def test_a_config_file_gives_the_same_run_as_the_flags(tmp_path):
    (tmp_path / "run.yaml").write_text(YAML)
    from_flags = cli.parse(FLAGS)
    assert from_flags.optim.lr == 0.05 and from_flags.lora.targets == ATTENTION_TARGETS
    assert cli.parse(["--config", str(tmp_path / "run.yaml")]) == from_flags
    # what a run folder keeps reads back as the same configuration, and flags override a file
    (tmp_path / "config.yaml").write_text(cli.dump_config(from_flags))
    assert cli.load_config(tmp_path / "config.yaml") == from_flags
    assert cli.parse(["--config", str(tmp_path / "config.yaml"), "--lr", "0.01"]).optim.lr == 0.01


@pytest.mark.parametrize(
    "text, message",
    [
        ("optim: {learning_rate: 1}", "unknown option optim.learning_rate; optim has iterations, acc_steps, lr"),
        ("trainer: {lr: 1}", "unknown group 'trainer'"),
        ("trust: dynamic", "'trust' must be a mapping"),
        ("optim: {iterations: 2.5}", "optim.iterations must be int: a whole number"),
        ("lora: {rank: 0}", "--lora.rank must be >= 1, got 0"),
    ],
)
def test_a_bad_config_file_names_the_option(tmp_path, text, message):
    (tmp_path / "run.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        cli.parse(["--config", str(tmp_path / "run.yaml")])


def test_the_paper_switches_for_lora_targets():
    assert cli.parse(["--no-lora_causal_self_attention"]).lora.targets == MLP_TARGETS
    assert cli.parse(["--lora_targets", "attn.c_attn", "--lora_mlp"]).lora.targets == ("attn.c_attn",) + MLP_TARGETS
    with pytest.raises(ConfigError, match="no LoRA targets"):
        cli.parse(["--no-lora_mlp", "--no-lora_causal_self_attention"])


@pytest.mark.parametrize("strategy", ["none", "naive", "static", "dynamic", "dynamic-ref-thresh"])
def test_k_is_checked_only_where_a_top_k_strategy_uses_it(strategy):
    """Issue 10.2: `--trust none --num_clients 2` was refused for the default --k 3."""
    config = cli.parse(["--trust", strategy, "--num_clients", "2"])
    config.check_clients(2)  # as after preparing a dataset of 2 clients
    with pytest.raises(ConfigError, match="--k 3 exceeds the 2 clients: dynamic-top-k keeps each client's k best"):
        cli.parse(["--trust", "dynamic-top-k", "--num_clients", "2"])
    with pytest.raises(ConfigError, match="Fix: --k 2 or less"):
        cli.parse(["--trust", "dynamic-token-top-k"]).check_clients(2)


def test_help_keeps_every_strategy_name_whole(capsys, monkeypatch):
    """Issue 10.9: names were broken at their hyphens, so one copied from --help failed."""
    monkeypatch.setenv("COLUMNS", "60")
    with pytest.raises(SystemExit):
        fit.main(["--help"])
    words = set(re.split(r"[\s,;:()]+", capsys.readouterr().out))
    assert set(strategy_names()) <= words


def test_the_paper_profile_sets_what_the_papers_runs_used():
    paper = cli.parse(["--profile", "paper"])
    assert paper.run.init == "gpt2" and paper.optim.iterations == 500
    assert (paper.data.batch_size, paper.optim.acc_steps, paper.data.sequence_length) == (50, 4, 512)
    assert (paper.optim.lr, paper.optim.betas, paper.optim.weight_decay) == (2e-3, (0.9, 0.95), 1e-3)
    assert (paper.optim.warmup_percent, paper.optim.final_div, paper.run.dropout) == (0.02, 5.0, 0.2)
    assert (paper.lora.rank, paper.lora.alpha, paper.lora.dropout) == (4, 32.0, 0.1)
    assert paper.lora.targets == ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    assert (paper.data.eval_batches, paper.run.eval_freq) == (12, 25)
    # the reference code aggregates after step itr when itr % 25 == 0 and itr >= pretraining_rounds - 1 (its 100)
    reference = [itr for itr in range(1, 501) if itr % 25 == 0 and itr >= 100 - 1]
    assert [s for s in range(1, 501) if paper.trust.aggregates_at(s)] == reference == list(range(100, 501, 25))
    assert cli.parse(["--profile", "paper", "--iterations", "50", "--init", "offline"]).optim.iterations == 50


def test_no_aggregation_at_all_is_said():
    """Issue 10.18: --pretraining_rounds at least --iterations never aggregates, silently."""
    assert cli.parse(["--iterations", "100"]).warnings() == []  # the defaults aggregate at 20, 30, ..., 100
    said = cli.parse(["--iterations", "20", "--pretraining_rounds", "21"]).warnings()
    assert len(said) == 1 and "no aggregation happens in 20 steps" in said[0]
    assert cli.parse(["--trust", "none", "--iterations", "5"]).warnings() == []
