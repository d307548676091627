"""`python -m collab.fit`: bad options fail before any work; a short run end to end."""
import json

import pytest

from collab import fit


@pytest.mark.parametrize("argv, message", [
    (["--trust", "dynamik"], "unknown trust strategy"),
    (["--lora_rank", "0"], "--lora_rank must be >= 1"),
    (["--lora_dropout", "1.5"], "--lora_dropout must be in"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--num_clients", "4", "--k", "5"], "--k 5 exceeds"),
    (["--no-lora_mlp", "--no-lora_causal_self_attention"], "no LoRA targets"),
    (["--pretraining_rounds", "-1"], "--pretraining_rounds must be >= 0"),
])
def test_bad_options_fail_before_any_work(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fit, "prepare_data", lambda args: pytest.fail("work started"))
    with pytest.raises(SystemExit) as exit_info:
        fit.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_help_documents_every_paper_option(capsys):
    with pytest.raises(SystemExit):
        fit.main(["--help"])
    text = capsys.readouterr().out
    for option in ("--trust", "--num_clients", "--dataset", "--iterations", "--eval_freq", "--trust_freq",
                   "--pretraining_rounds", "--k", "--lora_rank", "--lora_alpha", "--lora_dropout", "--lora_mlp",
                   "--lora_causal_self_attention", "--batch_size", "--acc_steps", "--sequence_length", "--lr",
                   "--seed", "--init", "--out", "--accelerator", "--client_chunk"):
        assert option in text, option
