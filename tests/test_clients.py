"""Per-client calls: which adapters run, and each client's own dropout stream."""

import copy

import pytest
import torch

from lora_gpt import GPT, ClientSlice, GPTConfig, LoRAConfig, client_seeds, inject_lora, lora_parameters
from lora_gpt.clients import client_dropout, mix64, picked_adapters

CFG = GPTConfig.from_name("gpt2-tiny", vocab_size=61, dropout=0.2)


def test_mix64_is_a_fixed_function_of_its_inputs():
    assert mix64(0, 1, 2) == mix64(0, 1, 2)
    assert len({mix64(0, n, t) for n in range(50) for t in range(50)}) == 2500
    assert mix64(1, 2) != mix64(2, 1) and 0 <= mix64(3) < 2**63
    assert mix64(0, 1, 2) == 3287953325444517617  # the same on every machine and version


def test_client_dropout_keeps_one_minus_p_and_each_client_owns_its_mask():
    x = torch.ones(3, 400, 50)
    seeds = client_seeds(7, range(3), step=0)
    out = client_dropout(x, 0.25, True, ClientSlice(0, 3, seeds), site=5)
    assert torch.equal(out.unique(), torch.tensor([0.0, 1 / 0.75]))  # 0.25 * 65536 is whole: exact
    assert (out > 0).float().mean().item() == pytest.approx(0.75, abs=0.01)
    alone = client_dropout(x[1:2], 0.25, True, ClientSlice(1, 2, seeds[1:2]), site=5)
    assert torch.equal(alone[0], out[1])  # client 1's mask does not depend on clients 0 and 2
    assert not torch.equal(out[0], out[1])
    unbiased = client_dropout(torch.ones(2, 100_000), 0.1, True, ClientSlice(0, 2, seeds[:2]), site=1)
    assert unbiased.mean().item() == pytest.approx(1.0, abs=0.005)  # p quantised to 1/65536, rescaled to match
    other_site = client_dropout(x, 0.25, True, ClientSlice(0, 3, seeds), site=6)
    assert not torch.equal(other_site, out)
    assert torch.equal(client_dropout(x, 0.25, False, ClientSlice(0, 3, seeds), site=5), x)  # eval: identity


def test_stacked_clients_with_dropout_equal_separate_single_client_models():
    """Every dropout (embedding, attention weights, residual, MLP, adapters) of client n draws from
    client n's stream: a stacked forward/backward equals each client alone with its own seed."""
    torch.manual_seed(0)
    base = GPT(CFG)
    lora = LoRAConfig(
        rank=4,
        alpha=8,
        dropout=0.3,
        targets=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
        kernel="torch",
        init_seed=3,
    )
    stacked = inject_lora(copy.deepcopy(base), lora, num_adapters=3).train()
    with torch.no_grad():
        for p in lora_parameters(stacked).values():
            p.normal_(0, 0.1)
    idx = torch.randint(0, 61, (3, 2, 16))
    seeds = client_seeds(11, range(3), step=4)
    out = stacked(idx, ClientSlice(0, 3, seeds))
    out.square().mean(dim=(1, 2, 3)).sum().backward()
    for n in range(3):
        single = inject_lora(copy.deepcopy(base), lora, num_adapters=1).train()
        with torch.no_grad():
            for name, p in lora_parameters(single).items():
                p.copy_(lora_parameters(stacked)[name][n : n + 1])
        got = single(idx[n], ClientSlice(0, 1, seeds[n : n + 1]))  # client n alone: its seed, adapter 0
        torch.testing.assert_close(got, out[n], atol=1e-5, rtol=0)
        got.square().mean().backward()
        for name, p in lora_parameters(single).items():
            torch.testing.assert_close(p.grad[0], lora_parameters(stacked)[name].grad[n], atol=1e-6, rtol=1e-4)
    with torch.no_grad():
        again = stacked(idx, ClientSlice(0, 3, client_seeds(11, range(3), step=5)))
    assert not torch.allclose(again, out)  # another micro-step, other masks


def test_picked_adapters_run_each_slice_with_its_chosen_adapter():
    """Slice i runs adapter `ids[i]` (any order, repeats): as that adapter alone on that slice."""
    torch.manual_seed(0)
    lora = LoRAConfig(rank=2, alpha=4, dropout=0.0, targets=("attn.c_attn", "mlp.c_fc"), kernel="torch")
    model = inject_lora(GPT(CFG.replace(dropout=0.0)), lora, num_adapters=4).eval()
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.normal_(0, 0.3)
    ids = [3, 1, 3, 2]
    idx = torch.randint(0, 61, (4, 2, 8))
    with torch.no_grad():
        out = model(idx, picked_adapters(ids))
        for i, n in enumerate(ids):
            torch.testing.assert_close(out[i], model(idx[i], ClientSlice(n, n + 1)), atol=1e-5, rtol=0)
    assert len(picked_adapters(ids)) == 4 and picked_adapters(ids).adapters == ids
    with pytest.raises(ValueError, match="span"):
        ClientSlice(0, 4, picked=(1, 2))
    with pytest.raises(IndexError, match="adapters"):
        model(idx[:1], picked_adapters([4]))
