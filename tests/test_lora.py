"""LoRA layers: the formula, freezing, merging, adapter files, and the stacked-adapter invariant."""

import copy
import re

import pytest
import torch

from lora_gpt import (
    GPT,
    GPTConfig,
    LoRAConfig,
    LoRALinear,
    export_base,
    export_merged,
    inject_lora,
    is_lora_name,
    load_adapters,
    lora_parameters,
    mark_only_lora_as_trainable,
    merge_lora,
    save_adapters,
    saved_lora_config,
    unmerge_lora,
)
from lora_gpt.errors import ConfigError
from lora_gpt.lora import ATTENTION_TARGETS, MLP_TARGETS, lora_layers
from lora_gpt.lora.files import LEGACY_CONFIG, LEGACY_WEIGHTS

CFG = GPTConfig.from_name("gpt2-tiny", vocab_size=97)
ALL_TARGETS = ATTENTION_TARGETS + MLP_TARGETS


def lora_model(num_adapters=1, seed=0, dropout=0.0, targets=ALL_TARGETS, randomize_b=True, alpha=8):
    torch.manual_seed(seed)
    model = GPT(CFG)
    inject_lora(model, LoRAConfig(rank=4, alpha=alpha, dropout=dropout, targets=targets, kernel="torch"), num_adapters)
    if randomize_b:  # B starts at zero; give it values so the adapter path is exercised
        with torch.no_grad():
            for name, p in lora_parameters(model).items():
                if name.endswith("lora_B"):
                    p.normal_(0, 0.1)
    return mark_only_lora_as_trainable(model)


def test_zero_b_equals_base_model():
    torch.manual_seed(0)
    base = GPT(CFG).eval()
    adapted = inject_lora(copy.deepcopy(base), LoRAConfig(rank=4, targets=ALL_TARGETS, kernel="torch"), 3).eval()
    idx = torch.randint(0, 97, (3, 2, 12))
    with torch.no_grad():
        torch.testing.assert_close(adapted(idx), base(idx))


def test_layer_matches_explicit_formula():
    torch.manual_seed(0)
    cfg = LoRAConfig(rank=3, alpha=6, dropout=0.0, kernel="torch")
    layer = LoRALinear(10, 7, True, cfg, num_adapters=2)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 5, 10)
    expected = torch.stack(
        [x[n] @ layer.weight.T + layer.bias + 2.0 * x[n] @ layer.lora_A[n] @ layer.lora_B[n] for n in range(2)]
    )
    torch.testing.assert_close(layer(x), expected)


def test_init_a_kaiming_uniform_b_zero_and_shared_across_adapters():
    layer = LoRALinear(256, 8, True, LoRAConfig(rank=16), num_adapters=3)
    bound = 1 / 256**0.5
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.9 * bound
    assert layer.lora_A.std().item() == pytest.approx(bound / 3**0.5, rel=0.05)
    assert torch.count_nonzero(layer.lora_B) == 0
    assert torch.equal(layer.lora_A[0], layer.lora_A[2])


def test_reference_init_is_uniform_on_the_rank_and_drawn_per_client():
    """The reference code's A: Kaiming-uniform on its [d_in, r] layout takes fan-in r, U(+-1/sqrt(r)) =
    U(+-0.5) at r=4, and every client's model draws its own."""
    layer = LoRALinear(256, 8, True, LoRAConfig(rank=4, init="reference"), num_adapters=3)
    assert layer.lora_A.abs().max() <= 0.5 and layer.lora_A.abs().max() > 0.49
    assert layer.lora_A.std().item() == pytest.approx(0.5 / 3**0.5, rel=0.05)
    assert not torch.equal(layer.lora_A[0], layer.lora_A[1]) and torch.count_nonzero(layer.lora_B) == 0
    # the draw is one U(-0.5, 0.5) tensor [N, d_in, r] from the generator, as PEFT's is one [d_in, r] shared
    layer.reset_lora_parameters(torch.Generator().manual_seed(3))
    expected = torch.empty(3, 256, 4).uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(layer.lora_A.detach(), expected, rtol=0, atol=0)
    shared = LoRALinear(256, 8, True, LoRAConfig(rank=4), num_adapters=3)
    shared.reset_lora_parameters(torch.Generator().manual_seed(3))
    expected = torch.empty(256, 4).uniform_(-1 / 16, 1 / 16, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(shared.lora_A.detach(), expected.expand(3, 256, 4), rtol=0, atol=0)


def test_init_seed_makes_adapters_reproducible():
    a = inject_lora(GPT(CFG), LoRAConfig(init_seed=7))
    b = inject_lora(GPT(CFG), LoRAConfig(init_seed=7))
    for (name, pa), pb in zip(lora_parameters(a).items(), lora_parameters(b).values(), strict=True):
        assert torch.equal(pa, pb), name


def test_only_adapters_get_gradients():
    model = lora_model()
    model(torch.randint(0, 97, (2, 8))).sum().backward()
    for name, p in model.named_parameters():
        if is_lora_name(name):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_targets_choose_the_adapted_layers():
    attn_only = inject_lora(GPT(CFG), LoRAConfig(targets=ATTENTION_TARGETS))
    names = {n.rsplit(".", 1)[0] for n in lora_parameters(attn_only)}
    assert names == {f"transformer.h.{i}.{t}" for i in range(2) for t in ATTENTION_TARGETS}
    mlp_only = inject_lora(GPT(CFG), LoRAConfig(targets=MLP_TARGETS))
    assert all(".mlp." in n for n in lora_parameters(mlp_only))


def test_merge_unmerge_and_export():
    model = lora_model(num_adapters=3).eval()
    idx = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        stacked = model(idx.expand(3, 2, 10))
        base_before = {k: v.clone() for k, v in model.state_dict().items() if not is_lora_name(k)}
        merge_lora(model, adapter=1)
        torch.testing.assert_close(model(idx), stacked[1], atol=1e-5, rtol=1e-5)
        unmerge_lora(model)
        for k, v in model.state_dict().items():
            if not is_lora_name(k):
                torch.testing.assert_close(v, base_before[k], atol=1e-6, rtol=0)
        plain = export_merged(model, 2).eval()
        assert not any(is_lora_name(k) for k in plain.state_dict())
        torch.testing.assert_close(plain(idx), stacked[2], atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="unmerge"):
        merge_lora(model, 0)
        merge_lora(model, 1)


def test_stacked_adapters_equal_separate_models():
    """The invariant the collaborative design rests on: outputs and gradients of N stacked
    adapters on an [N, b, T] batch equal those of N separate single-adapter models."""
    N = 3
    stacked = lora_model(num_adapters=N, seed=1)
    singles = []
    for n in range(N):
        single = lora_model(num_adapters=1, seed=1)
        with torch.no_grad():
            for p, q in zip(lora_parameters(single).values(), lora_parameters(stacked).values(), strict=True):
                p.copy_(q[n : n + 1])
        singles.append(single)
    idx = torch.randint(0, 97, (N, 2, 12))
    targets = torch.randint(0, 97, (N, 2, 12))
    logits = stacked(idx)
    loss = sum(torch.nn.functional.cross_entropy(logits[n].flatten(0, 1), targets[n].flatten()) for n in range(N))
    loss.backward()
    for n, single in enumerate(singles):
        out = single(idx[n])
        torch.testing.assert_close(out, logits[n], atol=1e-5, rtol=1e-5)
        torch.nn.functional.cross_entropy(out.flatten(0, 1), targets[n].flatten()).backward()
        for (name, p), q in zip(lora_parameters(single).items(), lora_parameters(stacked).values(), strict=True):
            torch.testing.assert_close(p.grad[0], q.grad[n], atol=1e-6, rtol=1e-5, msg=name)


def test_wrong_leading_dim_is_refused():
    model = lora_model(num_adapters=3)
    with pytest.raises(ValueError, match="one slice per client"):
        model(torch.randint(0, 97, (2, 2, 8)))


def base_weights(model):
    return {k: v.clone() for k, v in model.state_dict().items() if not is_lora_name(k)}


def assert_same_base(model, before):
    for k, v in base_weights(model).items():
        torch.testing.assert_close(v, before[k], atol=1e-6, rtol=0, msg=k)


def test_adapter_save_load_round_trip(tmp_path):
    model = lora_model(num_adapters=2, seed=3)
    save_adapters(model, tmp_path / "all")
    save_adapters(model, tmp_path / "one", adapters=1)
    # Our own stacked format has its own names: nothing in it pretends to be a PEFT adapter.
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["clients.json", "clients.safetensors"]
    assert saved_lora_config(tmp_path / "one") == LoRAConfig(
        rank=4, alpha=8, dropout=0.0, targets=ALL_TARGETS, kernel="torch"
    )
    fresh = lora_model(num_adapters=2, seed=4)
    load_adapters(fresh, tmp_path / "all")
    for p, q in zip(lora_parameters(model).values(), lora_parameters(fresh).values(), strict=True):
        assert torch.equal(p, q)
    single = lora_model(num_adapters=1, seed=5)
    load_adapters(single, tmp_path / "one")
    for p, q in zip(lora_parameters(model).values(), lora_parameters(single).values(), strict=True):
        assert torch.equal(p[1:2], q)


def test_folders_saved_under_the_old_names_still_load(tmp_path):
    """Before the rename, save_adapters wrote the same contents as adapter_model.safetensors + adapter_config.json."""
    model = lora_model(num_adapters=2, seed=3)
    save_adapters(model, tmp_path)
    (tmp_path / "clients.safetensors").rename(tmp_path / LEGACY_WEIGHTS)
    (tmp_path / "clients.json").rename(tmp_path / LEGACY_CONFIG)
    fresh = load_adapters(lora_model(num_adapters=2, seed=4), tmp_path)
    for p, q in zip(lora_parameters(model).values(), lora_parameters(fresh).values(), strict=True):
        assert torch.equal(p, q)


def test_adapters_for_another_config_are_refused(tmp_path):
    save_adapters(lora_model(num_adapters=1), tmp_path)
    other_rank = inject_lora(GPT(CFG), LoRAConfig(rank=8, alpha=8, targets=ALL_TARGETS))
    with pytest.raises(ValueError, match="rank=4"):
        load_adapters(other_rank, tmp_path)
    other_targets = inject_lora(GPT(CFG), LoRAConfig(rank=4, alpha=8, targets=ATTENTION_TARGETS))
    with pytest.raises(ValueError, match="targets"):
        load_adapters(other_targets, tmp_path)
    wider = inject_lora(GPT(CFG.replace(n_embd=64)), LoRAConfig(rank=4, alpha=8, targets=ALL_TARGETS))
    with pytest.raises(ValueError, match="another model"):
        load_adapters(wider, tmp_path)


def test_adapters_for_another_alpha_are_refused_dropout_and_kernel_may_differ(tmp_path):
    """Issue 10.4: adapters saved at alpha 4 loaded into an alpha-64 model acted 16x larger."""
    saved = lora_model(num_adapters=1, alpha=4).eval()
    save_adapters(saved, tmp_path)
    with pytest.raises(ValueError, match="alpha=4.*saved_lora_config"):
        load_adapters(lora_model(num_adapters=1, alpha=64), tmp_path)
    # Dropout, kernel and init seed do not change what the weights mean: such adapters load and compute the same.
    other = inject_lora(
        GPT(CFG), LoRAConfig(rank=4, alpha=4, dropout=0.3, targets=ALL_TARGETS, kernel="auto", init_seed=9)
    )
    other.load_state_dict(base_weights(saved), strict=False)
    load_adapters(other, tmp_path)
    idx = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(idx), saved(idx))


def test_export_merged_and_base_ignore_which_adapter_is_merged():
    """Issue 10.5: export_merged added the update twice when that adapter was already merged."""
    model = lora_model(num_adapters=3).eval()
    idx = torch.randint(0, 97, (2, 10))
    before = base_weights(model)
    with torch.no_grad():
        stacked = model(idx.expand(3, 2, 10))
        merge_lora(model, adapter=1)
        for n in range(3):
            torch.testing.assert_close(export_merged(model, n).eval()(idx), stacked[n], atol=1e-5, rtol=1e-5)
        assert_same_base(export_base(model), before)
    with pytest.raises(IndexError, match="out of range"):
        export_merged(model, 3)


def test_refused_injection_leaves_the_model_unchanged():
    """Issue 10.17: attention targets onto a model with MLP adapters swapped attention layers, then refused."""
    model = lora_model(targets=MLP_TARGETS)
    layers_before = [name for name, _ in lora_layers(model)]
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        inject_lora(model, LoRAConfig(rank=4, targets=ATTENTION_TARGETS))
    assert [name for name, _ in lora_layers(model)] == layers_before
    assert model.state_dict().keys() == state_before.keys()
    assert all(torch.equal(v, state_before[k]) for k, v in model.state_dict().items())


def test_loading_into_a_merged_slot_is_refused(tmp_path):
    """Issue 10.17: loading over a merged adapter, then unmerge_lora, left the base off by the difference."""
    model = lora_model(num_adapters=2, seed=1)
    save_adapters(lora_model(num_adapters=1, seed=2), tmp_path)
    before = base_weights(model)
    merge_lora(model, adapter=0)
    with pytest.raises(RuntimeError, match=r"adapter 0 is merged.*unmerge_lora\(model\) first"):
        load_adapters(model, tmp_path, into=0)
    load_adapters(model, tmp_path, into=1)  # another slot is free to change
    unmerge_lora(model)
    assert_same_base(model, before)
    load_adapters(model, tmp_path, into=0)  # unmerged: loads


def test_lora_config_validation_names_the_option():
    with pytest.raises(ConfigError, match="--lora.rank must be >= 1, got 0"):
        LoRAConfig(rank=0)
    with pytest.raises(ConfigError, match=r"--lora.dropout must be in \[0, 1\), got 1.0"):
        LoRAConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="--lora.kernel must be one of auto, triton, torch, got 'cuda'"):
        LoRAConfig(kernel="cuda")
    with pytest.raises(ConfigError, match="--lora.init must be one of peft, reference, got 'kaiming'"):
        LoRAConfig(init="kaiming")
    with pytest.raises(ConfigError, match="--lora.targets must be at least one layer"):
        LoRAConfig(targets=())
    with pytest.raises(ConfigError, match="Fix: correct or drop 'nothing'"):
        LoRAConfig(targets=("nothing",))


@pytest.mark.parametrize(
    "targets, wrong", [(("attn.c_attn", "attn.c_atn"), "'attn.c_atn'"), (("lm_head",), "'lm_head'")]
)
def test_every_lora_target_must_name_a_linear_lora_adapts(targets, wrong):
    """Issue 21.3: a misspelt target was dropped without a word where another one matched (so fewer
    layers were adapted than asked), and lm_head was accepted, then failed at the first step."""
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "--lora.targets must be names of GPT-2's linear layers that LoRA adapts: attn.c_attn, attn.c_proj, "
            f"mlp.c_fc, mlp.c_proj (or c_attn, c_proj, c_fc alone), got {targets!r}. Fix: correct or drop {wrong}."
        ),
    ):
        LoRAConfig(targets=targets)
    assert len(dict(lora_layers(inject_lora(GPT(CFG), LoRAConfig(targets=("c_proj",)))))) == 2 * CFG.n_layer


def test_inject_lora_refuses_a_target_the_model_lacks_naming_the_ones_it_has():
    attention_only = torch.nn.Module()  # a model with attention linears only
    attention_only.attn = torch.nn.Module()
    attention_only.attn.c_attn = torch.nn.Linear(4, 12)
    attention_only.lm_head = torch.nn.Linear(4, 9)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "no nn.Linear of the model matches the LoRA target 'mlp.c_fc'; its linears that LoRA adapts answer to "
            "attn.c_attn."
        ),
    ):
        inject_lora(attention_only, LoRAConfig(targets=("attn.c_attn", "mlp.c_fc")))
    assert not list(lora_layers(attention_only))  # refused before any layer was swapped
