"""`python -m collab.export` on a real (tiny) `collab.fit` run, read back with peft and transformers."""

import shutil

import pytest
import torch
from run_adapter import run_client

from collab import export, fit
from collab.run_folder import RunFolder
from lora_gpt import GPT, inject_lora, load_adapters, lora_parameters, saved_lora_config

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

NUM_CLIENTS = 2
TOL = 1e-4


@pytest.fixture(scope="module")
def run(finished_run):
    return finished_run


@pytest.fixture(scope="module")
def ours(run):
    """Every client of the run in one stacked model, built from the run's files by hand."""
    folder, base = run
    adapters = [RunFolder(folder).adapters(n) for n in range(NUM_CLIENTS)]
    model = inject_lora(GPT.from_pretrained(base), saved_lora_config(adapters[0]), num_adapters=NUM_CLIENTS)
    for n, adapter in enumerate(adapters):
        load_adapters(model, adapter, into=n)
    return model.eval()


@pytest.fixture(scope="module")
def idx():
    return torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(1))


def test_peft_format_loads_in_peft(run, ours, idx, tmp_path, capsys):
    assert export.main([str(run[0]), "--client", "1", "--format", "peft", "--out", str(tmp_path)]) == 0
    assert f'GPT2LMHeadModel.from_pretrained("{tmp_path}/base"), "{tmp_path}")' in capsys.readouterr().out
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "base")
    model = peft.PeftModel.from_pretrained(hf, tmp_path).eval()
    with torch.no_grad():
        got = model(idx).logits
    expected = run_client(ours, idx, 1)
    assert (got - expected).abs().max().item() < TOL
    with torch.no_grad(), model.disable_adapter():
        base = model(idx).logits
    assert (expected - base).abs().max().item() > 100 * TOL  # the trained adapter does change the logits


def test_merged_format_loads_in_transformers(run, ours, idx):
    out = export.export(run[0], 0, "merged")
    assert out == run[0] / "export" / "client_00_merged"
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    with torch.no_grad():
        assert (hf(idx).logits - run_client(ours, idx, 0)).abs().max().item() < TOL


def test_stacked_format_converts_a_folder_with_the_old_names(run, ours, tmp_path):
    client = RunFolder(run[0]).adapters(1)
    old = tmp_path / "run"  # a run folder as collab.fit wrote it before the stacked format's rename
    RunFolder(old).adapters(1).mkdir(parents=True)
    (old / "config.yaml").write_bytes((run[0] / "config.yaml").read_bytes())
    for new_name, old_name in (
        ("clients.safetensors", "adapter_model.safetensors"),
        ("clients.json", "adapter_config.json"),
    ):
        (RunFolder(old).adapters(1) / old_name).write_bytes((client / new_name).read_bytes())
    out = export.export(old, 1, "stacked", tmp_path / "converted")
    assert sorted(p.name for p in out.iterdir()) == ["clients.json", "clients.safetensors"]
    single = inject_lora(GPT.from_pretrained(run[1]), saved_lora_config(out))
    load_adapters(single, out)
    for p, q in zip(lora_parameters(ours).values(), lora_parameters(single).values(), strict=True):
        assert torch.equal(p[1:2], q)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--client", "5", "--format", "peft"], "client_05 not found; the run saved client_00 to client_01"),
        (["--client", "0", "--format", "onnx"], "invalid choice: 'onnx'"),
        (["--client", "first", "--format", "peft"], "--export.client first: give a client's number (0, 1, ...) or all"),
    ],
)
def test_bad_requests_fail_naming_the_fix(run, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export.main([str(run[0]), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_an_out_that_cannot_hold_the_export_is_refused(run, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    for fmt, out in (("peft", a_file), ("merged", a_file / "merged")):
        with pytest.raises(SystemExit) as exit_info:
            export.main([str(run[0]), "--client", "0", "--format", fmt, "--out", str(out)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith(f"error: --out {out}: the export cannot be written there")
    assert a_file.read_text() == "keep me"


def test_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        export.main([str(tmp_path), "--client", "0", "--format", "merged"])
    assert "config.yaml not found; pass a run folder written by python -m collab.fit" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, damage, said",
    [
        ("clients.safetensors", lambda b: b"garbage", "cannot be read (Error while deserializing header"),
        ("clients.safetensors", lambda b: b[: len(b) // 2], "cannot be read (Error while deserializing header"),
        ("clients.json", lambda b: b[:20], "is not valid JSON (Unterminated string"),
        ("clients.json", lambda b: b"\xff\xfe", "is not valid JSON ('utf-8' codec can't decode"),
        ("clients.json", lambda b: b"{}", "holds no 'lora' settings"),
        ("clients.safetensors", None, "not found beside clients.json"),
    ],
)
def test_damaged_adapter_files_are_one_error_line_naming_the_file_and_the_fix(
    run, tmp_path, capsys, monkeypatch, name, damage, said
):
    """Issue 21.6: a corrupt clients.safetensors or clients.json ended in a traceback."""
    folder = shutil.copytree(run[0], tmp_path / "run")
    path = RunFolder(folder).adapters(1) / name
    if damage is None:
        path.unlink()
    else:
        path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(SystemExit) as exit_info:
        export.main([str(folder), "--client", "1", "--format", "peft"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith(f"error: {path}") and said in err, err
    fix = f"delete {RunFolder(folder).summary} and run python -m collab.fit --config {RunFolder(folder).config} --out "
    assert f"{fix}{folder} again" in err
    (folder / "summary.json").unlink()  # the fix, as it says: the adapters are written anew, export works
    monkeypatch.setenv("LORA_GPT_CACHE", str(run[0].parent / "cache"))  # where the run's data was prepared
    assert fit.main(["--config", str(RunFolder(folder).config), "--out", str(folder)]) == 0
    assert export.main([str(folder), "--client", "1", "--format", "peft", "--out", str(tmp_path / "peft")]) == 0


TEXTS = [
    "Hello world",
    "  leading   spaces\n\n\ttabs and trailing   ",
    "Ünïcödé: 日本語のテキスト, emoji 🤖🎉, Ελληνικά, русский",
    "it's we'll they're I'd I'M",
    "1234567 3.14159 a\u00a0b\u2003c",
    "code(x) {\r\n    return x**2; }  // done\n",
]


@pytest.mark.parametrize("fmt", ["peft", "merged"])
def test_exports_carry_a_tokenizer_that_encodes_as_ours_offline(run, fmt, tmp_path, monkeypatch):
    from lora_gpt import get_tokenizer

    out = export.export(run[0], 0, fmt, tmp_path / fmt)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = get_tokenizer()
    for folder in [out, out / "base"] if fmt == "peft" else [out]:
        theirs = transformers.AutoTokenizer.from_pretrained(folder)
        for text in TEXTS:
            ids = theirs.encode(text)
            assert ids == ours.encode(text), text
            assert theirs.decode(ids) == text
        assert theirs.eos_token_id == 50256


def test_client_all_exports_every_client(run, ours, idx, tmp_path, capsys):
    assert export.main([str(run[0]), "--client", "all", "--format", "merged", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["client_00", "client_01"]
    assert "2 client(s) of" in capsys.readouterr().out
    for n in range(NUM_CLIENTS):
        hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / f"client_{n:02d}").eval()
        with torch.no_grad():
            assert (hf(idx).logits - run_client(ours, idx, n)).abs().max().item() < TOL
