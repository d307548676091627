"""The single-model LightningModule: it learns, and its schedule and decay groups are the paper's."""
import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lora_gpt import GPTConfig, LoRAConfig
from lora_gpt.lightning import LitGPT
from lora_gpt.training import adamw, one_cycle

CFG = GPTConfig.from_name("gpt2-tiny", vocab_size=64)


def repeating_batches(n=8, b=4, t=17):
    # A deterministic cyclic sequence: a model that learns drives the loss far below log(64).
    seq = torch.arange(n * b * t) % 13
    return list(seq.view(n, b, t))


def fit(module, steps):
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        val_check_interval=steps, check_val_every_n_epoch=None)
    data = repeating_batches()
    loader = lambda items: DataLoader(items, batch_size=None)
    trainer.fit(module, train_dataloaders=loader(data * 10), val_dataloaders=loader(data[:2]))
    return trainer


def test_pretraining_learns_and_logs_metrics():
    torch.manual_seed(0)
    module = LitGPT(CFG, lr=1e-2, max_steps=80)
    trainer = fit(module, 80)
    metrics = trainer.callback_metrics
    assert metrics["val/loss"] < 1.0  # from ln(64) = 4.16 at init
    assert torch.isclose(metrics["val/ppl"], metrics["val/loss"].exp())
    assert metrics["val/acc"] > 0.7


def test_lora_finetuning_trains_only_adapters():
    torch.manual_seed(0)
    module = LitGPT(CFG, lora=LoRAConfig(rank=4, dropout=0.0, kernel="torch"), lr=1e-2, max_steps=20)
    frozen = {k: v.clone() for k, v in module.model.state_dict().items() if "lora_" not in k}
    fit(module, 20)
    for k, v in module.model.state_dict().items():
        if "lora_" in k:
            continue
        assert torch.equal(v, frozen[k]), k
    assert any(p.abs().sum() > 0 for n, p in module.model.named_parameters() if n.endswith("lora_B"))


def test_decay_groups_and_one_cycle_shape():
    module = LitGPT(CFG)
    opt = adamw(module.model.named_parameters(), lr=1e-3, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    sched = one_cycle(opt, lr=1e-3, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-3 / 100) and max(lrs) == lrs[1] == pytest.approx(1e-3)  # warmup: 2% of 100 steps
    assert lrs[-1] == pytest.approx(1e-4, rel=1e-2) and all(a >= b for a, b in zip(lrs[2:], lrs[3:]))


def test_frozen_head_cross_entropy_matches_plain_loss_and_gradient():
    from lora_gpt.training import frozen_head_cross_entropy, token_cross_entropy

    torch.manual_seed(0)
    weight = torch.randn(50, 8)
    hidden = torch.randn(3, 7, 8, requires_grad=True)
    targets = torch.randint(0, 50, (3, 7))
    scale = torch.rand(3, 7)  # a non-uniform upstream gradient, as per-client means give
    expected = token_cross_entropy(hidden @ weight.T, targets)
    (expected * scale).sum().backward()
    grad_expected, hidden.grad = hidden.grad, None
    got = frozen_head_cross_entropy(hidden, weight, targets, chunk=4)
    (got * scale).sum().backward()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(hidden.grad, grad_expected)
    with pytest.raises(ValueError, match="frozen"):
        frozen_head_cross_entropy(hidden, weight.requires_grad_(), targets)
