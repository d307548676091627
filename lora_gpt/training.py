"""Pieces every training loop here shares: the optimizer, the schedule, and language-model metrics."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics import MeanMetric


def adamw(named_params: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float,
          betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW that decays matrices only (weights, embeddings, adapters), not biases or norms."""
    params = [(n, p) for n, p in named_params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: freeze less, or inject LoRA adapters first.")
    decay = [p for _, p in params if p.dim() >= 2]
    no_decay = [p for _, p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas)


def one_cycle(optimizer: torch.optim.Optimizer, lr: float, total_steps: int,
              warmup: float = 0.02) -> torch.optim.lr_scheduler.OneCycleLR:
    """The paper's OneCycle: warmup over the first 2% of steps from lr/100, then cosine down to lr/10."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=max(total_steps, 2), pct_start=warmup,
        anneal_strategy="cos", cycle_momentum=False, div_factor=1e2, final_div_factor=0.1,
    )


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy `[...]` for logits `[..., V]` (computed in float32)."""
    return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), reduction="none").view(targets.shape)


class _FrozenHeadCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy of `hidden @ weight.T` that never holds the `[M, vocab]` logits.

    With the output head frozen, the gradient reaching `hidden` is `g * (softmax - onehot) @ W`
    per token, so the forward computes `(softmax - onehot) @ W` slice by slice and keeps only
    that `[M, d]` tensor: peak memory is one slice of logits instead of all of them (with
    GPT-2's 50,257-word vocabulary the logits are what fills memory), at no extra FLOPs.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, hidden.shape[0], chunk):
            part = slice(start, start + chunk)
            logits = (hidden[part] @ weight.T).float()
            lse = logits.logsumexp(dim=-1)
            target = targets[part, None]
            losses[part] = lse - logits.gather(1, target).squeeze(1)
            if grad is not None:
                probs = logits.sub_(lse[:, None]).exp_()
                probs.scatter_add_(1, target, torch.full_like(target, -1, dtype=probs.dtype))
                grad[part] = probs.to(weight.dtype) @ weight
        ctx.save_for_backward(grad)
        return losses

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_losses[:, None].to(grad.dtype), None, None, None


def frozen_head_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                              chunk: int = 1024) -> torch.Tensor:
    """Per-token loss `[...]` of hidden states `[..., d]` under a frozen output head `[V, d]`,
    computed `chunk` tokens at a time (see `_FrozenHeadCrossEntropy`)."""
    if weight.requires_grad:
        raise ValueError("frozen_head_cross_entropy needs a frozen output head; use token_cross_entropy "
                         "when the head trains.")
    flat = _FrozenHeadCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1), chunk)
    return flat.view(targets.shape)


class LanguageModelMetrics(nn.Module):
    """Token-weighted validation loss, perplexity (exp of that loss) and next-token accuracy.

    Perplexity as exp of the mean cross-entropy avoids a full softmax metric over 50,257
    classes; both means are `torchmetrics` aggregators, so they sync across devices.
    """

    def __init__(self) -> None:
        super().__init__()
        self.loss = MeanMetric()
        self.accuracy = MeanMetric()

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.loss.update(token_cross_entropy(logits, targets).flatten())
        self.accuracy.update((logits.argmax(-1) == targets).float().flatten())

    def compute(self) -> dict[str, torch.Tensor]:
        loss = self.loss.compute()
        return {"loss": loss, "ppl": loss.exp(), "acc": self.accuracy.compute()}

    def reset(self) -> None:
        self.loss.reset()
        self.accuracy.reset()
