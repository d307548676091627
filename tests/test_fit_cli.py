"""`python -m collab.fit` as a user runs it: bad options fail before any work; a short run end to
end; a run killed with SIGKILL resumes exactly; a damaged checkpoint, a busy folder and a
`--data_dir` that contradicts the options are refused without losing anything."""

import csv
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_run import TINY_DATA, TINY_RUN, tiny_inputs

from collab import checkpoint, fit
from collab.run_folder import RunFolder
from lora_gpt.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
# Runs `python -m collab.fit ARGS` and dies by SIGKILL right after `where` (the checkpoint's save, or
# the aggregation, with the loggers flushed) at optimizer step STEP, or is sent SIGTERM right after
# that step's aggregation (`where` sigterm): `python -c KILLER WHERE STEP ARGS`.
KILLER = """
import os, signal, sys
from collab import aggregation, checkpoint, fit
where, step = sys.argv[1], int(sys.argv[2])
def dying(method):
    def wrapped(self, trainer, *args):
        method(self, trainer, *args)
        if trainer.global_step == step and where == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        elif trainer.global_step == step:
            for logger in trainer.loggers:
                logger.save()
            os.kill(os.getpid(), signal.SIGKILL)
    return wrapped
if where == "checkpoint":
    checkpoint.RunCheckpoint.save = dying(checkpoint.RunCheckpoint.save)
else:
    aggregation.TrustAggregation.on_train_batch_end = dying(aggregation.TrustAggregation.on_train_batch_end)
sys.exit(fit.main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A two-category corpus, a tiny base and a private cache, shared by this file's runs."""
    tmp = tmp_path_factory.mktemp("fit_cli")
    tiny_inputs(tmp)
    return tmp


@pytest.fixture()
def cache(inputs, monkeypatch):
    monkeypatch.setenv("LORA_GPT_CACHE", str(inputs / "cache"))
    return inputs / "cache"


def argv(inputs, out, *extra):
    return [
        "--dataset",
        str(inputs / "corpus"),
        "--num_clients",
        "4",
        "--init",
        str(inputs / "base"),
        "--out",
        str(out),
        *TINY_DATA,
        *extra,
    ]


def metrics(folder):
    with open(RunFolder(folder).metrics, newline="") as f:
        return list(csv.DictReader(f))


def summary(folder):
    return json.loads(RunFolder(folder).summary.read_text())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--trust", "dynamik"], "unknown trust strategy"),
        (["--lora_rank", "0"], "--lora.rank must be >= 1, got 0"),
        (["--lora_dropout", "1.5"], "--lora.dropout must be in [0, 1), got 1.5"),
        (["--lr", "0"], "--optim.lr must be > 0"),
        (["--trust", "dynamic-top-k", "--num_clients", "4", "--k", "5"], "--k 5 exceeds the 4 clients"),
        (["--no-lora_mlp", "--no-lora_causal_self_attention"], "no LoRA targets"),
        (["--pretraining_rounds", "-1"], "--trust.pretraining_rounds must be >= 0"),
        (["--trust", "dynamic-top-k", "--k", "0"], "--k must be >= 1"),
        (["--trust_temperature", "0"], "--trust_temperature must be > 0"),
        (["--token_top_k", "0"], "--trust.token_top_k must be >= 1"),
        (["--sequence_length", "1"], "--data.sequence_length must be >= 2"),
        (["--precision", "16-mixed", "--accelerator", "cpu"], "16-mixed needs a CUDA GPU"),
        (["--seed", "-1"], "--run.seed must be >= 0, got -1"),
        (["--accelerator", "tpu"], "argument --run.accelerator/--accelerator: invalid choice: 'tpu'"),
        pytest.param(
            ["--accelerator", "gpu"],
            "--accelerator gpu: no CUDA device is visible here. Fix: --accelerator cpu",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there"),
        ),
        (["--config", "no-such.yaml"], "--config no-such.yaml: No such file or directory"),
        (["--lora_targets", "attn.c_attn", "attn.c_atn"], "Fix: correct or drop 'attn.c_atn'."),  # issue 21.3
        (["--lora_targets", "lm_head"], "--lora.targets must be names of GPT-2's linear layers that LoRA adapts"),
        (["--lr", "inf"], "--optim.lr must be a finite number, got inf"),  # issue 21.6: then a traceback
        (["--lora_alpha", "inf"], "--lora.alpha must be a finite number > 0, got inf"),
        (["--thresh", "nan"], "--trust.threshold must be a finite number, got nan"),  # it was taken silently
        (["--betas", "0.9", "nan"], "--optim.betas must be two numbers in [0, 1), got (0.9, nan)"),
    ],
)
def test_bad_options_fail_before_any_work(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fit, "prepare_data", lambda config: pytest.fail("work started"))
    with pytest.raises(SystemExit) as exit_info:
        fit.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_help_keeps_every_strategy_name_whole_in_a_narrow_terminal(capsys, monkeypatch):
    """Issue 21.6: below 70 columns the help broke names such as dynamic-ref-thresh mid-word."""
    from collab.trust import ALIASES, strategy_names

    monkeypatch.setenv("COLUMNS", "60")
    with pytest.raises(SystemExit):
        fit.main(["--help"])
    words = {w.strip(",;()") for w in capsys.readouterr().out.split()}
    assert set(strategy_names()) <= words and {f"{k}={v}" for k, v in ALIASES.items()} <= words


def test_an_unreadable_config_or_an_unusable_out_is_one_error_line(inputs, tmp_path, capsys, monkeypatch):
    """Issue 21.6: a --config that is not UTF-8, an --out that is a file, below a file or not
    writable ended in a traceback."""
    monkeypatch.setattr(fit, "load_base", lambda *a: pytest.fail("work started"))
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("run:\n  seed: 0\n# café\n".encode("latin1"))
    (tmp_path / "a_file").write_text("not a folder")

    def refuses(args, message):
        with pytest.raises(SystemExit) as exit_info:
            fit.main(args)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err

    refuses(
        ["--config", str(latin1)],
        f"error: --config {latin1}: line 3 is not UTF-8 text (byte b'\\xe9'). Fix: save it as UTF-8",
    )
    for out in (tmp_path / "a_file", tmp_path / "a_file" / "run"):
        refuses(argv(inputs, out), f"error: --out {out}: a run folder cannot be made there (")

    def read_only(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    refuses(
        argv(inputs, tmp_path / "read_only" / "run"),
        f"--out {tmp_path / 'read_only' / 'run'}: a run folder cannot be made there (Permission denied: ",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "latin1.yaml"]


@pytest.mark.parametrize("kind", ["tensorboard", "wandb"])
def test_a_logger_not_installed_fails_before_any_work_naming_the_extra(kind, capsys, tmp_path, monkeypatch):
    from collab import loggers

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loggers, "installed", lambda module: False)
    monkeypatch.setattr(fit, "prepare_data", lambda config: pytest.fail("work started"))
    with pytest.raises(SystemExit) as exit_info:
        fit.main(["--logger", kind])
    assert exit_info.value.code == 2
    assert f'--logger {kind} needs the {kind} package, which is not installed. Fix: pip install -e ".[{kind}]"' in (
        capsys.readouterr().err
    )
    assert not any(tmp_path.iterdir())  # nothing written


def test_bf16_where_the_cpu_lacks_it_fails_at_once_naming_the_fallback(capsys, tmp_path, monkeypatch):
    from lora_gpt import precision

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(fit, "prepare_data", lambda config: pytest.fail("work started"))
    with pytest.raises(SystemExit) as exit_info:
        fit.main(["--precision", "bf16-mixed", "--accelerator", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no native bfloat16" in err and "--precision 32-true" in err
    assert precision.resolve_precision("auto", "cpu") == "32-true"


def test_a_bug_or_out_of_memory_keeps_its_traceback(monkeypatch, capsys):
    """Issue 10.8: every RuntimeError, out of memory included, became a one-line exit 2."""

    def out_of_memory(config):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(fit, "run", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        fit.main([])
    monkeypatch.setattr(fit, "run", lambda config: (_ for _ in ()).throw(ConfigError("--x is wrong. Fix: --y")))
    with pytest.raises(SystemExit) as exit_info:  # the project's own errors: one line naming the fix
        fit.main([])
    assert exit_info.value.code == 2 and capsys.readouterr().err == "error: --x is wrong. Fix: --y\n"


def test_help_documents_every_paper_option(capsys):
    with pytest.raises(SystemExit):
        fit.main(["--help"])
    text = capsys.readouterr().out
    for option in (
        "--trust",
        "--num_clients",
        "--dataset",
        "--iterations",
        "--eval_freq",
        "--trust_freq",
        "--pretraining_rounds",
        "--k",
        "--lora_rank",
        "--lora_alpha",
        "--lora_dropout",
        "--lora_mlp",
        "--lora_causal_self_attention",
        "--batch_size",
        "--acc_steps",
        "--sequence_length",
        "--lr",
        "--seed",
        "--init",
        "--out",
        "--accelerator",
        "--client_chunk",
        "--profile",
        "--config",
    ):
        assert option in text, option
    assert "PATH:mixed the mixed split" in " ".join(
        text.split()
    )  # issue 20.4: your own data's mixed split was said nowhere
    assert "GPU settings" not in text  # it claimed README.md gives the paper's GPU settings; --profile paper sets them


def test_short_run_end_to_end_writes_summary_adapters_and_trust(inputs, cache, tmp_path, capsys):
    out = tmp_path / "run"
    args = argv(
        inputs,
        out,
        "--trust",
        "dynamic-top-k",
        "--k",
        "2",
        "--iterations",
        "4",
        "--eval_freq",
        "2",
        "--trust_freq",
        "2",
        "--pretraining_rounds",
        "2",
        "--lora_init",
        "reference",
        "--similarity",
        "reference-rows",
        "--trust_temperature",
        "0.5",
    )
    assert fit.main(args) == 0
    result = summary(out)
    assert result["config"]["trust"]["strategy"] == "dynamic-top-k" and result["config"]["optim"]["iterations"] == 4
    assert result["config"]["data"]["num_clients"] == 4 and result["precision"] in ("32-true", "bf16-mixed")
    assert [c["step"] for c in result["curves"]] == [0, 2, 4]  # step 0: the base, before any fine-tuning
    assert len(result["final"]["clients"]) == 4
    mean_ppl = sum(c["ppl"] for c in result["final"]["clients"]) / 4
    assert result["final"]["mean"]["ppl"] == pytest.approx(mean_ppl)
    assert [t["step"] for t in result["trust"]] == [2, 4]
    assert result["dataset"]["mixture"] == [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]
    assert sorted(p.name for p in (out / "trust").iterdir()) == ["step_000002.json", "step_000004.json"]
    trust = json.loads((out / "trust" / "step_000004.json").read_text())["trust"]
    assert all(sum(w > 0 for w in row) == 2 for row in trust)
    assert all((out / "adapters" / f"client_{n:02d}" / "clients.safetensors").exists() for n in range(4))
    assert json.loads((out / "adapters" / "client_00" / "clients.json").read_text())["lora"]["init"] == "reference"
    assert (result["config"]["trust"]["similarity"], result["config"]["trust"]["temperature"]) == (
        "reference-rows",
        0.5,
    )
    assert (out / "checkpoints" / "last.ckpt").exists()
    rows = metrics(out)
    assert {r["step"] for r in rows if r["val/ppl"]} == {"0", "2", "4"}
    assert [r["step"] for r in rows if r["train/loss"]] == ["1", "2", "3", "4"]
    step0 = next(r for r in rows if r["step"] == "0" and r["val/ppl"])
    assert float(step0["val/ppl"]) == result["curves"][0]["mean"]["ppl"]
    from collab.cli import load_config, parse

    assert load_config(out / "config.yaml") == parse(args)  # the folder keeps the run's options whole
    printed = capsys.readouterr().out
    assert "val loss" in printed
    assert printed.splitlines()[-1].endswith(f"python -m collab.report {out}")  # and the report runs on it
    from collab import report

    command = printed.splitlines()[-1].split(": ", 1)[1].split()
    assert command[:3] == ["python", "-m", "collab.report"]
    assert report.main(command[3:]) == 0 and (out / "report" / "report.md").is_file()
    with pytest.raises(SystemExit) as again:  # a finished run is never overwritten
        fit.main(args)
    assert again.value.code == 2


def test_a_run_killed_twice_resumes_exactly(inputs, cache, tmp_path):
    """Issue 10.11, with the default dropout: killed (SIGKILL) right after the checkpoint of a step
    that is also an evaluation and an aggregation step, stopped by SIGTERM (issue 21.2: it exited 0,
    unfinished, as if it had succeeded) at a step between checkpoints, which it checkpoints before it
    exits 143, then killed after the aggregation of a step past its checkpoint, the run ends as the
    uninterrupted one does: the same curves, trust matrices, adapters, and every metrics row, step 0
    once."""
    schedule = [
        "--iterations",
        "12",
        "--eval_freq",
        "3",
        "--trust_freq",
        "3",
        "--pretraining_rounds",
        "3",
        "--ckpt_freq",
        "2",
    ]
    assert fit.main(argv(inputs, tmp_path / "straight", *schedule)) == 0
    resumed = argv(inputs, tmp_path / "resumed", *schedule)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for where, step, code in (("checkpoint", 6, -9), ("sigterm", 7, 143), ("aggregation", 9, -9)):
        killed = subprocess.run(
            [sys.executable, "-c", KILLER, where, str(step), *resumed], env=env, capture_output=True, text=True
        )
        assert killed.returncode == code, killed.stderr[-3000:]
        if where == "sigterm":
            assert torch.load(RunFolder(tmp_path / "resumed").checkpoint, weights_only=False)["global_step"] == 7
            assert killed.stderr.endswith(
                "stopped by SIGTERM at step 7; the checkpoint holds step 7: run the same command again to resume.\n"
            )
    assert {r["step"] for r in metrics(tmp_path / "resumed")} >= {"9"}  # rows past the checkpoint (8) reached disk
    assert fit.main(resumed) == 0
    a, b = summary(tmp_path / "straight"), summary(tmp_path / "resumed")
    assert [c["step"] for c in b["curves"]] == [0, 3, 6, 9, 12]
    for key in ("curves", "train_loss", "trust", "final"):
        assert b[key] == a[key], key
    assert metrics(tmp_path / "resumed") == metrics(tmp_path / "straight")
    for n in range(4):
        ours, theirs = (
            load_file(RunFolder(tmp_path / run).adapters(n) / "clients.safetensors") for run in ("resumed", "straight")
        )
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_resume_on_data_that_changed_since_the_run_started_is_refused(inputs, cache, tmp_path, capsys, monkeypatch):
    """Issue 21.1: killed, its dataset edited, the same command resumed on the newly prepared data
    (exit 0, no warning): metrics.csv held step 0 of the old data and the steps after of the new."""
    corpus = shutil.copytree(inputs / "corpus", tmp_path / "corpus")
    out = tmp_path / "run"
    args = [*argv(inputs, out, "--iterations", "4", "--eval_freq", "2"), "--dataset", str(corpus)]
    save = checkpoint.RunCheckpoint.save

    def save_then_die(self, trainer):
        save(self, trainer)
        raise KeyboardInterrupt  # killed once the checkpoint of step 2 is written

    monkeypatch.setattr(checkpoint.RunCheckpoint, "save", save_then_die)
    with pytest.raises(SystemExit):
        fit.main(args)
    monkeypatch.setattr(checkpoint.RunCheckpoint, "save", save)
    assert torch.load(RunFolder(out).checkpoint, weights_only=False)["global_step"] == 2
    originals = {p: p.read_text() for p in (corpus / "red").iterdir()}
    for p, text in originals.items():
        p.write_text("a sentence added since, " + text)
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    with pytest.raises(SystemExit) as exit_info:
        fit.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(  # the edited data was prepared without a progress bar: --no-progress
        f"error: {RunFolder(out).checkpoint} was made on other data than {corpus} gives now: it changed since the "
        f"run started (the run's prepared data: "
    ), err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == files
    older = shutil.copytree(out, tmp_path / "older")  # a checkpoint written before the data was recorded
    state = torch.load(RunFolder(older).checkpoint, weights_only=False)
    del state[checkpoint.DATA_KEY]
    torch.save(state, RunFolder(older).checkpoint)
    assert fit.main([*args, "--out", str(older)]) == 0  # resumes as it did
    for p, text in originals.items():  # the fix the error names: the data as it was (new file times: prepared anew)
        p.write_text(text)
    assert fit.main(args) == 0
    assert [c["step"] for c in summary(out)["curves"]] == [0, 2, 4]


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_a_damaged_checkpoint_is_refused_before_anything_is_touched(inputs, cache, tmp_path, capsys, keep):
    """Issue 10.13: resuming over a cut-short or empty last.ckpt deleted metrics.csv (and an empty
    one gave a bare EOFError)."""
    out = tmp_path / "run"
    folder = RunFolder(out)
    folder.checkpoint.parent.mkdir(parents=True)
    torch.save({"global_step": 2, "state_dict": {"w": torch.zeros(1000)}}, folder.checkpoint)
    data = folder.checkpoint.read_bytes()
    folder.checkpoint.write_bytes(data[: int(len(data) * keep)])
    folder.metrics.write_text("step,train/loss\n1,10.8\n2,10.7\n")
    folder.config.write_text("run: {seed: 0}\n")
    files = lambda: {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}  # noqa: E731
    before = files()
    with pytest.raises(SystemExit) as exit_info:
        fit.main(argv(inputs, out))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"{folder.checkpoint} cannot be read" in err and f"Fix: delete {folder.checkpoint}" in err
    assert files() == before


def test_a_second_run_on_a_busy_folder_fails_at_once(inputs, cache, tmp_path, capsys, monkeypatch):
    """Issue 10.14: two runs on one --out interleaved and corrupted each other's files."""
    out = tmp_path / "run"
    out.mkdir()
    monkeypatch.setattr(fit, "load_base", lambda *a: pytest.fail("the second run started work"))
    with open(out / ".lock", "w") as held:  # as the first run holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 4242\n")
        held.flush()
        with pytest.raises(SystemExit) as exit_info:
            fit.main(argv(inputs, out))
    assert exit_info.value.code == 2
    assert f"{out} is in use by another run (pid 4242)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_data_dir_refuses_contradicting_options_and_records_what_ran(inputs, cache, tmp_path, capsys):
    """Issue 10.15: --data_dir trained the folder's clients while summary.json recorded --num_clients."""
    from data import prepare_recipe

    folder = prepare_recipe(
        str(inputs / "corpus"), num_clients=4, progress=False, train=400, val=100, trust=40, ref=100
    )
    base = ["--data_dir", str(folder), "--init", str(inputs / "base"), *TINY_RUN]
    for extra, said in (
        (["--num_clients", "3"], "--data.num_clients 3 (the folder: 4)"),
        (["--train_tokens", "500"], "--data.train_tokens 500 (the folder: 400)"),
        (["--dataset", "offline_multi_specific"], "--data.dataset offline_multi_specific (the folder: "),
    ):
        with pytest.raises(SystemExit):
            fit.main([*base, *extra, "--out", str(tmp_path / "refused")])
        assert said in capsys.readouterr().err
        assert not (tmp_path / "refused").exists()
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="no aggregation happens in 2 steps"):  # issue 10.18: said, and kept
        assert fit.main([*base, "--iterations", "2", "--eval_freq", "2", "--out", str(out)]) == 0
    result = summary(out)
    assert (result["config"]["data"]["num_clients"], result["config"]["data"]["dataset"]) == (4, str(inputs / "corpus"))
    assert result["warnings"] == [w for w in result["warnings"] if "no aggregation happens" in w] != []
