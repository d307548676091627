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
    (["--trust", "dynamic-top-k", "--k", "0"], "k must be >= 1"),
    (["--trust_temperature", "0"], "temperature must be > 0"),
    (["--token_top_k", "0"], "token_top_k must be >= 1"),
    (["--precision", "16-mixed", "--accelerator", "cpu"], "16-mixed needs a CUDA GPU"),
])
def test_bad_options_fail_before_any_work(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fit, "prepare_data", lambda args: pytest.fail("work started"))
    with pytest.raises(SystemExit) as exit_info:
        fit.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_bf16_where_the_cpu_lacks_it_fails_at_once_naming_the_fallback(capsys, tmp_path, monkeypatch):
    from lora_gpt import precision

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(fit, "prepare_data", lambda args: pytest.fail("work started"))
    with pytest.raises(SystemExit) as exit_info:
        fit.main(["--precision", "bf16-mixed", "--accelerator", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no native bfloat16" in err and "--precision 32-true" in err
    assert precision.resolve_precision("auto", "cpu") == "32-true"


def test_help_documents_every_paper_option(capsys):
    with pytest.raises(SystemExit):
        fit.main(["--help"])
    text = capsys.readouterr().out
    for option in ("--trust", "--num_clients", "--dataset", "--iterations", "--eval_freq", "--trust_freq",
                   "--pretraining_rounds", "--k", "--lora_rank", "--lora_alpha", "--lora_dropout", "--lora_mlp",
                   "--lora_causal_self_attention", "--batch_size", "--acc_steps", "--sequence_length", "--lr",
                   "--seed", "--init", "--out", "--accelerator", "--client_chunk"):
        assert option in text, option


def test_short_run_end_to_end_writes_summary_adapters_and_trust(tmp_path, monkeypatch, capsys):
    import torch

    from lora_gpt import GPT, GPTConfig

    monkeypatch.setenv("LORA_GPT_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus"
    for cat in ("red", "blue"):
        (corpus / cat).mkdir(parents=True)
        for d in range(20):
            (corpus / cat / f"{d}.txt").write_text(" ".join(f"{cat} item {d} {i}" for i in range(40)))
    torch.manual_seed(0)
    base = tmp_path / "base"
    GPT(GPTConfig.from_name("gpt2-tiny")).save_pretrained(base)
    out = tmp_path / "run"
    argv = ["--dataset", str(corpus), "--num_clients", "4", "--init", str(base), "--trust", "dynamic-top-k",
            "--k", "2", "--iterations", "4", "--eval_freq", "2", "--trust_freq", "2", "--pretraining_rounds", "2",
            "--batch_size", "2", "--sequence_length", "16", "--eval_batches", "1", "--out", str(out),
            "--train_tokens", "400", "--val_tokens", "100", "--trust_tokens", "40", "--ref_tokens", "100",
            "--accelerator", "cpu", "--no-progress", "--lora_init", "reference", "--similarity", "reference-rows",
            "--trust_temperature", "0.5"]
    assert fit.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["options"]["trust"] == "dynamic-top-k" and summary["options"]["iterations"] == 4
    assert [c["step"] for c in summary["curves"]] == [2, 4]
    assert len(summary["final"]["clients"]) == 4
    mean_ppl = sum(c["ppl"] for c in summary["final"]["clients"]) / 4
    assert summary["final"]["mean"]["ppl"] == pytest.approx(mean_ppl)
    assert [t["step"] for t in summary["trust"]] == [2, 4]
    assert summary["dataset"]["mixture"] == [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]
    assert sorted(p.name for p in (out / "trust").iterdir()) == ["step_000002.json", "step_000004.json"]
    trust = json.loads((out / "trust" / "step_000004.json").read_text())["trust"]
    assert all(sum(w > 0 for w in row) == 2 for row in trust)
    assert all((out / "adapters" / f"client_{n:02d}" / "clients.safetensors").exists() for n in range(4))
    assert json.loads((out / "adapters" / "client_00" / "clients.json").read_text())["lora"]["init"] == "reference"
    assert (summary["options"]["similarity"], summary["options"]["trust_temperature"]) == ("reference-rows", 0.5)
    assert (out / "checkpoints" / "last.ckpt").exists() and (out / "metrics.csv").exists()
    assert "val loss" in capsys.readouterr().out
    with pytest.raises(SystemExit) as again:  # a finished run is never overwritten
        fit.main(argv)
    assert again.value.code == 2


def test_missing_or_mismatched_base_fails_before_any_work(tmp_path, monkeypatch, capsys):
    from lora_gpt import GPT, GPTConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fit, "prepare_data", lambda args: pytest.fail("data work started"))
    with pytest.raises(SystemExit) as missing:
        fit.main(["--init", str(tmp_path / "no-such-base"), "--out", str(tmp_path / "run")])
    assert missing.value.code == 2 and "no-such-base" in capsys.readouterr().err
    GPT(GPTConfig.from_name("gpt2-tiny")).save_pretrained(tmp_path / "tiny")  # block_size 64
    with pytest.raises(SystemExit) as too_long:
        fit.main(["--init", str(tmp_path / "tiny"), "--sequence_length", "128", "--out", str(tmp_path / "run")])
    assert too_long.value.code == 2 and "exceeds the base model's block_size 64" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
