"""The single-model LightningModule: it learns; its schedule, decay groups and random windows."""

import itertools

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lora_gpt import GPTConfig, LoRAConfig, is_lora_name
from lora_gpt.lightning import LitGPT
from lora_gpt.training import adamw, one_cycle, random_windows

CFG = GPTConfig.from_name("gpt2-tiny", vocab_size=64)


def repeating_batches(n=8, b=4, t=17):
    # A deterministic cyclic sequence: a model that learns drives the loss far below log(64).
    seq = torch.arange(n * b * t) % 13
    return list(seq.view(n, b, t))


def fit(module, steps):
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=steps,
        check_val_every_n_epoch=None,
    )
    data = repeating_batches()
    trainer.fit(
        module,
        train_dataloaders=DataLoader(data * 10, batch_size=None),
        val_dataloaders=DataLoader(data[:2], batch_size=None),
    )
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
    frozen = {k: v.clone() for k, v in module.model.state_dict().items() if not is_lora_name(k)}
    fit(module, 20)
    for k, v in module.model.state_dict().items():
        if is_lora_name(k):
            continue
        assert torch.equal(v, frozen[k]), k
    assert any(p.abs().sum() > 0 for n, p in module.model.named_parameters() if n.endswith("lora_B"))


def test_random_windows_start_anywhere_the_last_window_included():
    tokens = np.arange(10)
    windows = np.concatenate([random_windows(tokens, 4, 8, (0, t)) for t in range(100)])
    assert {int(w[0]) for w in windows} == {0, 1, 2}  # 10 tokens hold windows of 8 starting at 0, 1 and 2
    assert all((w == np.arange(w[0], w[0] + 8)).all() for w in windows)
    np.testing.assert_array_equal(random_windows(tokens, 3, 8, (5, 1)), random_windows(tokens, 3, 8, (5, 1)))


@pytest.mark.parametrize("final_div", [10.0, 5.0])  # this project's CPU default, and the paper's runs'
def test_decay_groups_and_one_cycle_shape(final_div):
    module = LitGPT(CFG)
    opt = adamw(module.model.named_parameters(), lr=1e-3, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    sched = one_cycle(opt, lr=1e-3, total_steps=100, final_div=final_div)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-3 / 100) and max(lrs) == lrs[1] == pytest.approx(1e-3)  # warmup: 2% of 100 steps
    assert lrs[-1] == pytest.approx(1e-3 / final_div) and all(a >= b for a, b in itertools.pairwise(lrs[2:]))


@pytest.mark.parametrize("train_head", [False, True])
def test_fused_linear_cross_entropy_matches_plain_loss_and_gradients(train_head):
    from lora_gpt.cross_entropy import fused_linear_cross_entropy, linear_predictions, token_cross_entropy

    torch.manual_seed(0)
    weight = torch.randn(50, 8, requires_grad=train_head)
    hidden = torch.randn(3, 7, 8, requires_grad=True)
    targets = torch.randint(0, 50, (3, 7))
    token_weights = torch.rand(3, 7)  # non-uniform, as per-client means with unequal counts give
    logits = hidden @ weight.T
    expected = token_cross_entropy(logits, targets)
    (2.5 * (expected * token_weights).sum()).backward()
    grads = [hidden.grad] + ([weight.grad] if train_head else [])
    hidden.grad = weight.grad = None
    objective, losses = fused_linear_cross_entropy(hidden, weight, targets, token_weights, chunk=4)
    (2.5 * objective).backward()  # an upstream scale reaches both gradients
    torch.testing.assert_close(losses, expected.detach())
    torch.testing.assert_close(objective, (expected * token_weights).sum())
    torch.testing.assert_close(hidden.grad, grads[0])
    if train_head:
        torch.testing.assert_close(weight.grad, grads[1])
    else:
        assert weight.grad is None
    got_losses, correct = linear_predictions(hidden, weight, targets, chunk=5)
    torch.testing.assert_close(got_losses, expected.detach())
    assert torch.equal(correct, logits.argmax(-1) == targets)


def test_fused_linear_cross_entropy_in_bfloat16_stays_close():
    """Under bf16 autocast the head runs in bfloat16 with float32 accumulation: the losses stay
    within bfloat16's rounding of the logits, the mean much closer."""
    from lora_gpt.cross_entropy import fused_linear_cross_entropy, token_cross_entropy

    torch.manual_seed(0)
    weight = torch.randn(500, 32) * 0.3
    hidden = torch.randn(256, 32, requires_grad=True)
    targets = torch.randint(0, 500, (256,))
    expected = token_cross_entropy(hidden @ weight.T, targets)
    expected.mean().backward()
    grad, hidden.grad = hidden.grad, None
    with torch.autocast("cpu", torch.bfloat16):
        objective, losses = fused_linear_cross_entropy(hidden, weight, targets)
    objective.backward()
    assert losses.dtype == torch.float32 and hidden.grad.dtype == torch.float32
    assert (losses - expected.detach()).abs().max() < 0.05
    assert abs(objective.item() - expected.mean().item()) < 2e-3
    assert ((hidden.grad - grad).norm() / grad.norm()) < 1e-2
