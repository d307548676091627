"""PEFT export and import, checked with `peft` and `transformers` themselves."""

import copy
import dataclasses
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from run_adapter import run_client
from safetensors.torch import load_file

from lora_gpt import (
    GPT,
    GPTConfig,
    LoRAConfig,
    export_base,
    export_merged,
    export_peft,
    import_peft,
    inject_lora,
    is_lora_name,
    load_adapters,
    lora_config_from_peft,
    lora_parameters,
    mark_only_lora_as_trainable,
    merge_lora,
    save_adapters,
)
from lora_gpt.lora import ATTENTION_TARGETS, MLP_TARGETS

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

CFG = GPTConfig.from_name("gpt2-tiny", vocab_size=97)
LORA = LoRAConfig(rank=4, alpha=8, dropout=0.1, targets=ATTENTION_TARGETS + MLP_TARGETS, kernel="torch")
N = 3
TOL = 1e-4  # max abs logit difference allowed against peft / transformers (float32)


def max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def trained():
    """N stacked adapters trained a few steps on different random data, on a base with non-trivial biases."""
    torch.manual_seed(0)
    model = GPT(CFG)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    mark_only_lora_as_trainable(inject_lora(model, LORA, num_adapters=N))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    data = torch.randint(0, CFG.vocab_size, (N, 4, 17))
    for _ in range(5):
        logits = model(data[..., :-1])
        loss = sum(F.cross_entropy(logits[n].flatten(0, 1), data[n, :, 1:].flatten()) for n in range(N))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def idx():
    return torch.randint(0, CFG.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    return export_peft(trained, 1, tmp_path_factory.mktemp("peft") / "client_01")


def peft_model(folder, base=None):
    hf = transformers.GPT2LMHeadModel.from_pretrained(base or folder / "base")
    return peft.PeftModel.from_pretrained(hf, folder).eval()


def test_adapters_change_the_logits(trained, idx):
    """The comparisons below would prove nothing if the adapters did next to nothing."""
    assert all(torch.count_nonzero(p) > 0 for name, p in lora_parameters(trained).items() if name.endswith("lora_B"))
    with torch.no_grad():
        base = export_base(trained).eval()(idx)
    for n in range(N):
        assert max_diff(run_client(trained, idx, n), base) > 100 * TOL


@pytest.mark.parametrize("merged", [None, 1, 2])
def test_peft_loads_our_export_and_computes_what_we_do(trained, idx, tmp_path, merged):
    model = copy.deepcopy(trained)
    expected = run_client(model, idx, 1)
    if merged is not None:  # the export reads the unmerged base whatever is merged
        merge_lora(model, merged)
    export_peft(model, 1, tmp_path)
    with torch.no_grad():
        got = peft_model(tmp_path)(idx).logits
    assert max_diff(got, expected) < TOL


def test_export_has_peft_names_layouts_and_config(trained, exported, tmp_path):
    # peft's own save of a GPT-2 LoRA with the same settings is the reference for key names and shapes.
    hf = transformers.GPT2LMHeadModel.from_pretrained(exported / "base")
    reference = peft.get_peft_model(
        hf,
        peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=list(LORA.targets), fan_in_fan_out=True, task_type="CAUSAL_LM"
        ),
    )
    reference.save_pretrained(tmp_path)
    ours, theirs = load_file(exported / "adapter_model.safetensors"), load_file(tmp_path / "adapter_model.safetensors")
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert ours["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"].shape == (4, CFG.n_embd)
    assert ours["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"].shape == (3 * CFG.n_embd, 4)
    config = peft.PeftConfig.from_pretrained(exported)
    assert isinstance(config, peft.LoraConfig)
    assert (config.peft_type, config.task_type, config.r, config.lora_alpha, config.lora_dropout) == (
        peft.PeftType.LORA,
        "CAUSAL_LM",
        4,
        8,
        0.1,
    )
    assert set(config.target_modules) == set(LORA.targets) and config.fan_in_fan_out and config.bias == "none"
    assert config.base_model_name_or_path == str((exported / "base").resolve())


def test_merged_export_matches_transformers(trained, idx, tmp_path):
    export_merged(trained, 2).save_pretrained(tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert max_diff(hf(idx).logits, run_client(trained, idx, 2)) < TOL


@pytest.fixture(scope="module")
def peft_made(exported, tmp_path_factory):
    """An adapter trained elsewhere: made and saved by peft itself, on bare target names, with random A and B."""
    torch.manual_seed(3)
    hf = transformers.GPT2LMHeadModel.from_pretrained(exported / "base")
    model = peft.get_peft_model(
        hf,
        peft.LoraConfig(
            r=4,
            lora_alpha=8,
            lora_dropout=0.05,
            fan_in_fan_out=True,
            target_modules=["c_attn", "c_proj"],
            task_type="CAUSAL_LM",
        ),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_lora_name(name):
                p.normal_(0, 0.2)
    folder = tmp_path_factory.mktemp("peft_made")
    model.save_pretrained(folder)
    return folder, model.eval()


def test_import_a_peft_adapter_into_one_slot_and_round_trip(peft_made, exported, idx, tmp_path):
    folder, reference = peft_made
    config = lora_config_from_peft(folder)
    assert config == LoRAConfig(rank=4, alpha=8.0, dropout=0.05, targets=("attn.c_attn", "attn.c_proj", "mlp.c_proj"))
    model = inject_lora(GPT.from_pretrained(exported / "base"), config, num_adapters=N).eval()
    base = run_client(model, idx, 0)
    import_peft(model, folder, into=2)
    with torch.no_grad():
        assert max_diff(run_client(model, idx, 2), reference(idx).logits) < TOL
    assert torch.equal(run_client(model, idx, 0), base)  # the other slots are untouched
    export_peft(model, 2, tmp_path)
    again, original = load_file(tmp_path / "adapter_model.safetensors"), load_file(folder / "adapter_model.safetensors")
    assert again.keys() == original.keys()
    assert all(torch.equal(again[k], original[k]) for k in original)


def edit_config(folder, **changes):
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, **changes}))


def lora_model(cfg=CFG, **lora):
    return inject_lora(GPT(cfg), dataclasses.replace(LORA, **lora), num_adapters=2)


@pytest.mark.parametrize(
    "changes, model, message",
    [
        ({}, lambda: lora_model(rank=8), r"r=4, the model's LoRA 8; inject LoRA with lora_gpt.lora_config_from_peft"),
        ({}, lambda: lora_model(alpha=32), r"lora_alpha=8, the model's LoRA 32; inject LoRA with"),
        (
            {},
            lambda: lora_model(targets=ATTENTION_TARGETS),
            r"the adapter adapts \('attn.c_attn', .*lora_config_from_peft",
        ),
        ({"fan_in_fan_out": False}, lora_model, r"fan_in_fan_out is false.*set \"fan_in_fan_out\": true"),
        ({"use_dora": True}, lora_model, r"\{'use_dora': True\}, which plain LoRA cannot express"),
        (
            {},
            lambda: lora_model(CFG.replace(vocab_size=101)),
            r"config differs .*'vocab_size': \(97, 101\).*from_pretrained",
        ),
        (
            {"base_model_name_or_path": "gpt2"},
            lambda: lora_model(CFG.replace(n_embd=64)),
            r"do not fit the layer \(64 -> 192, rank 4\): the adapter was made for another base",
        ),
        ({"base_model_name_or_path": None}, lambda: lora_model(CFG.replace(n_layer=3)), r"a base of another depth"),
    ],
)
def test_mismatched_adapters_are_refused_and_nothing_changes(exported, tmp_path, changes, model, message):
    folder = shutil.copytree(exported, tmp_path / "adapter")
    edit_config(folder, **changes)
    model = model()
    before = {k: v.clone() for k, v in lora_parameters(model).items()}
    with pytest.raises(ValueError, match=message):
        import_peft(model, folder, into=0)
    assert all(torch.equal(v, before[k]) for k, v in lora_parameters(model).items())


def test_merged_slot_and_wrong_kinds_of_folder_are_refused(trained, exported, tmp_path):
    for slot in (N, -1):  # issue 21.6: a shape message, as if the adapter were another's
        with pytest.raises(IndexError, match=rf"{exported}: slot {slot} out of range 0-{N - 1}"):
            import_peft(copy.deepcopy(trained), exported, into=slot)
    model = copy.deepcopy(trained)
    merge_lora(model, 0)
    with pytest.raises(RuntimeError, match=r"merged .*unmerge_lora\(model\) first"):
        import_peft(model, exported, into=0)
    with pytest.raises(ValueError, match=r"holds a PEFT adapter.*import_peft\(model, folder, into=n\)"):
        load_adapters(trained, exported)
    save_adapters(trained, tmp_path, adapters=0)
    for name, old in (("clients.safetensors", "adapter_model.safetensors"), ("clients.json", "adapter_config.json")):
        (tmp_path / name).rename(tmp_path / old)  # this project's stacked format under its old names
    with pytest.raises(ValueError, match=r"stacked adapters \(old file names\).*load_adapters\(model, folder\)"):
        import_peft(trained, tmp_path, into=0)
