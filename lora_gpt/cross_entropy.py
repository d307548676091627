"""Next-token cross-entropy through the output head, without ever holding every token's logits.

With GPT-2's 50,257-word vocabulary the head's logits `[tokens, V]` are the largest tensor of a
step, and on a CPU the passes over them (matmul out, softmax, matmul back) are most of its time.
`fused_linear_cross_entropy` runs the head a chunk of tokens at a time and forms the gradients
of the hidden states (and of the head, when it trains) in the same pass, so each chunk's logits
are written once, read by one fused softmax, read once more by the backward matmuls, and freed.

The chunk's logits and probabilities are in the compute dtype (bfloat16 under autocast, with
float32 accumulation inside the matmuls and the softmax); the loss is read off the softmax as
-log p(target), which keeps bfloat16's relative precision, and accumulated in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import compute_dtype

# Elements of one chunk's logits: a chunk stays under glibc's 32 MB mmap threshold in bfloat16,
# so its buffers are recycled instead of page-faulted in afresh (measured: 2-4x slower above it).
CHUNK_ELEMENTS = 1 << 24


def default_chunk(vocab_size: int) -> int:
    """Tokens per chunk: the largest power of two whose logits fit `CHUNK_ELEMENTS`."""
    return max(1, 1 << (CHUNK_ELEMENTS // vocab_size).bit_length() - 1)


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy `[...]` for full logits `[..., V]`, in float32 (a plain reference)."""
    return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), reduction="none").view(targets.shape)


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """`sum_t w_t * CE(hidden_t @ weight.T, target_t)` and its gradients, in one chunked pass.

    The token weights `w` are known in the forward, so the gradients are too: per chunk,
    `G = w * (softmax - onehot)`, `d hidden = G @ weight` and `d weight += G.T @ hidden`.
    The backward only scales them by the scalar's incoming gradient.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, token_weights, chunk, dtype):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        h, w = hidden.to(dtype), weight.to(dtype)
        losses = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        with torch.autocast(h.device.type, enabled=False):
            for start in range(0, h.shape[0], chunk):
                part = slice(start, start + chunk)
                target = targets[part, None]
                probs = torch.softmax(h[part] @ w.T, dim=-1)
                losses[part] = -probs.gather(1, target).squeeze(1).float().clamp_min(1e-30).log()
                # G = w * (softmax - onehot); the onehot part is a row gather of the head (and a
                # row scatter into its gradient), so no pass over the [chunk, V] block is spent on it
                row_weights = token_weights[part, None]
                if grad_h is not None:
                    grad_h[part] = (probs @ w - w[targets[part]]).float() * row_weights
                if grad_w is not None:
                    weighted = h[part] * row_weights.to(dtype)
                    grad_w += probs.T @ weighted
                    grad_w.index_add_(0, targets[part], weighted.float(), alpha=-1)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(losses)
        objective = (losses * token_weights.float()).sum()
        return objective, losses

    @staticmethod
    def backward(ctx, grad_objective, _grad_losses):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_objective.float()
        dh = grad_h * scale.to(grad_h.dtype) if grad_h is not None else None
        dw = (grad_w * scale).to(ctx.weight_dtype) if grad_w is not None else None
        return dh, dw, None, None, None, None


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    token_weights: torch.Tensor | None = None,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(objective, token_losses)` of hidden states `[..., d]` under the output head `[V, d]`.

    `objective` is the differentiable scalar `sum_t w_t * loss_t` (`token_weights` shaped like
    `targets`; default: the mean over all tokens); `token_losses` (float32, shaped like `targets`)
    are detached, for logging. Gradients flow to `hidden` and, when it requires grad, to `weight`.
    """
    flat_targets = targets.reshape(-1)
    if token_weights is None:
        token_weights = torch.full(flat_targets.shape, 1.0 / flat_targets.numel(), device=hidden.device)
    chunk = chunk or default_chunk(weight.shape[0])
    objective, losses = _FusedLinearCrossEntropy.apply(
        hidden.reshape(-1, hidden.shape[-1]),
        weight,
        flat_targets,
        token_weights.reshape(-1).float(),
        chunk,
        compute_dtype(hidden),
    )
    return objective, losses.view(targets.shape)


@torch.no_grad()
def linear_predictions(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(token_losses, correct)` shaped like `targets`: each token's cross-entropy (float32) and
    whether the head's top prediction is the target, chunk by chunk (for evaluation)."""
    dtype = compute_dtype(hidden)
    h, w = hidden.reshape(-1, hidden.shape[-1]).to(dtype), weight.to(dtype)
    flat = targets.reshape(-1)
    chunk = chunk or default_chunk(weight.shape[0])
    losses = torch.empty(flat.shape, dtype=torch.float32, device=h.device)
    correct = torch.empty(flat.shape, dtype=torch.bool, device=h.device)
    with torch.autocast(h.device.type, enabled=False):
        for start in range(0, h.shape[0], chunk):
            part = slice(start, start + chunk)
            probs = torch.softmax(h[part] @ w.T, dim=-1)
            losses[part] = -probs.gather(1, flat[part, None]).squeeze(1).float().clamp_min(1e-30).log()
            correct[part] = probs.argmax(dim=-1) == flat[part]
    return losses.view(targets.shape), correct.view(targets.shape)
