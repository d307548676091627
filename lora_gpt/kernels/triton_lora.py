"""Fused LoRA linear in Triton: `y = x @ W.T + bias + s * (dropout(x) @ A[n]) @ B[n]`.

Rows are grouped by client: `x` is `[N, M, d_in]` and client n's rows use adapter n (N = 1 is
an ordinary layer), so one launch serves every client. The forward reads each tile of `x` once:
the rank-r product `dropout(x) @ A` accumulates in the same K loop as `x @ W.T` and is expanded
by `B` before the store. The backward fuses `dy @ W` with the LoRA term the same way. The
dropout mask is never stored: every kernel regenerates it from (seed, element offset) with
Philox (`tl.rand`). The rank is padded inside the kernels to a power of two >= 16 for `tl.dot`.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _configs(keys: list[str], values: list[tuple]) -> list[triton.Config]:
    if INTERPRET:  # the interpreter runs on the CPU: one small config, no tuning runs
        values = values[:1]
    return [triton.Config(dict(zip(keys, v[:-2])), num_warps=v[-2], num_stages=v[-1]) for v in values]


FWD_CONFIGS = _configs(["BLOCK_M", "BLOCK_N", "BLOCK_K"], [
    (32, 32, 32, 4, 2) if INTERPRET else (128, 128, 64, 8, 3),
    (128, 64, 64, 4, 3), (64, 128, 64, 4, 3), (128, 256, 64, 8, 3), (64, 64, 64, 4, 4), (128, 128, 32, 4, 4),
])
DA_CONFIGS = _configs(["BLOCK_M", "BLOCK_K"], [
    (32, 32, 4, 2) if INTERPRET else (64, 128, 4, 3), (128, 64, 4, 3), (64, 64, 4, 4), (128, 128, 8, 3),
])


@triton.jit
def _keep(seed, offsets, p):
    """The dropout decision of each element: a pure function of (seed, element offset)."""
    return tl.rand(seed, offsets) >= p


@triton.autotune(configs=FWD_CONFIGS, key=["M", "N_OUT", "K_IN", "R"])
@triton.jit
def _fused_fwd(x_ptr, w_ptr, bias_ptr, a_ptr, b_ptr, y_ptr, xa_ptr,
               M, N_OUT, K_IN, R, scale, p, seed,
               HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr, R_PAD: tl.constexpr, PRECISION: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    client = tl.program_id(1)
    tiles_n = tl.cdiv(N_OUT, BLOCK_N)
    pid_m, pid_n = pid // tiles_n, pid % tiles_n
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rr = tl.arange(0, R_PAD)
    x_base = x_ptr + client * M * K_IN
    a_base = a_ptr + client * K_IN * R
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    xa = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
    for k0 in range(0, K_IN, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x_mask = (rm[:, None] < M) & (rk[None, :] < K_IN)
        x = tl.load(x_base + rm[:, None] * K_IN + rk[None, :], mask=x_mask, other=0.0)
        w = tl.load(w_ptr + rn[None, :] * K_IN + rk[:, None], mask=(rn[None, :] < N_OUT) & (rk[:, None] < K_IN),
                    other=0.0)
        acc = tl.dot(x, w, acc, input_precision=PRECISION)
        if DROPOUT:
            offsets = client * M * K_IN + rm[:, None] * K_IN + rk[None, :]
            x = tl.where(_keep(seed, offsets, p), x / (1 - p), 0.0).to(x.dtype)
        a = tl.load(a_base + rk[:, None] * R + rr[None, :], mask=(rk[:, None] < K_IN) & (rr[None, :] < R), other=0.0)
        xa = tl.dot(x, a, xa, input_precision=PRECISION)
    b = tl.load(b_ptr + client * R * N_OUT + rr[:, None] * N_OUT + rn[None, :],
                mask=(rr[:, None] < R) & (rn[None, :] < N_OUT), other=0.0)
    acc += scale * tl.dot(xa.to(b.dtype), b, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N_OUT, other=0.0).to(tl.float32)[None, :]
    out_mask = (rm[:, None] < M) & (rn[None, :] < N_OUT)
    tl.store(y_ptr + client * M * N_OUT + rm[:, None] * N_OUT + rn[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=out_mask)
    if pid_n == 0:  # the rank-r intermediate, kept for dB in the backward (small: [N, M, r])
        tl.store(xa_ptr + client * M * R + rm[:, None] * R + rr[None, :], xa,
                 mask=(rm[:, None] < M) & (rr[None, :] < R))


@triton.autotune(configs=FWD_CONFIGS, key=["M", "N_OUT", "K_IN", "R"])
@triton.jit
def _fused_dx(dy_ptr, w_ptr, a_ptr, b_ptr, dx_ptr, dyb_ptr,
              M, N_OUT, K_IN, R, scale, p, seed,
              DROPOUT: tl.constexpr, R_PAD: tl.constexpr, PRECISION: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """dx = dy @ W + s * keep/(1-p) * (dy @ B[n].T) @ A[n].T; BLOCK_N tiles d_in here, BLOCK_K d_out."""
    pid = tl.program_id(0)
    client = tl.program_id(1)
    tiles_in = tl.cdiv(K_IN, BLOCK_N)
    pid_m, pid_in = pid // tiles_in, pid % tiles_in
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ri = pid_in * BLOCK_N + tl.arange(0, BLOCK_N)
    rr = tl.arange(0, R_PAD)
    dy_base = dy_ptr + client * M * N_OUT
    b_base = b_ptr + client * R * N_OUT
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    dyb = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
    for o0 in range(0, N_OUT, BLOCK_K):
        ro = o0 + tl.arange(0, BLOCK_K)
        dy = tl.load(dy_base + rm[:, None] * N_OUT + ro[None, :], mask=(rm[:, None] < M) & (ro[None, :] < N_OUT),
                     other=0.0)
        w = tl.load(w_ptr + ro[:, None] * K_IN + ri[None, :], mask=(ro[:, None] < N_OUT) & (ri[None, :] < K_IN),
                    other=0.0)
        acc = tl.dot(dy, w, acc, input_precision=PRECISION)
        bt = tl.load(b_base + rr[None, :] * N_OUT + ro[:, None], mask=(rr[None, :] < R) & (ro[:, None] < N_OUT),
                     other=0.0)
        dyb = tl.dot(dy, bt, dyb, input_precision=PRECISION)
    at = tl.load(a_ptr + client * K_IN * R + ri[None, :] * R + rr[:, None],
                 mask=(rr[:, None] < R) & (ri[None, :] < K_IN), other=0.0)
    lora = tl.dot(dyb.to(at.dtype), at, input_precision=PRECISION)
    if DROPOUT:
        offsets = client * M * K_IN + rm[:, None] * K_IN + ri[None, :]
        lora = tl.where(_keep(seed, offsets, p), lora / (1 - p), 0.0)
    acc += scale * lora
    tl.store(dx_ptr + client * M * K_IN + rm[:, None] * K_IN + ri[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (ri[None, :] < K_IN))
    if pid_in == 0:  # dy @ B.T, kept for dA
        tl.store(dyb_ptr + client * M * R + rm[:, None] * R + rr[None, :], dyb,
                 mask=(rm[:, None] < M) & (rr[None, :] < R))


@triton.autotune(configs=DA_CONFIGS, key=["M", "K_IN", "R"])
@triton.jit
def _lora_da(x_ptr, dyb_ptr, da_ptr, M, K_IN, R, scale, p, seed,
             DROPOUT: tl.constexpr, R_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """dA[n] = s * dropout(x[n]).T @ (dy[n] @ B[n].T), the mask regenerated from the seed."""
    pid_k = tl.program_id(0)
    client = tl.program_id(1)
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    rr = tl.arange(0, R_PAD)
    acc = tl.zeros((BLOCK_K, R_PAD), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        x = tl.load(x_ptr + client * M * K_IN + rm[:, None] * K_IN + rk[None, :],
                    mask=(rm[:, None] < M) & (rk[None, :] < K_IN), other=0.0).to(tl.float32)
        if DROPOUT:
            offsets = client * M * K_IN + rm[:, None] * K_IN + rk[None, :]
            x = tl.where(_keep(seed, offsets, p), x / (1 - p), 0.0)
        dyb = tl.load(dyb_ptr + client * M * R + rm[:, None] * R + rr[None, :],
                      mask=(rm[:, None] < M) & (rr[None, :] < R), other=0.0)
        acc = tl.dot(tl.trans(x), dyb, acc, input_precision="ieee")
    tl.store(da_ptr + client * K_IN * R + rk[:, None] * R + rr[None, :], acc * scale,
             mask=(rk[:, None] < K_IN) & (rr[None, :] < R))


@triton.jit
def _mask_kernel(out_ptr, numel, p, seed, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offsets, _keep(seed, offsets, p).to(tl.int8), mask=offsets < numel)


def dropout_mask(seed: int, shape: tuple[int, ...], p: float, device: torch.device | str) -> torch.Tensor:
    """The keep-mask the kernels use for an input of `shape` (`[N, M, d_in]`), as a bool tensor."""
    numel = 1
    for s in shape:
        numel *= s
    out = torch.empty(numel, dtype=torch.int8, device=device)
    _mask_kernel[(triton.cdiv(numel, 1024),)](out, numel, p, seed, BLOCK=1024)
    return out.view(shape).bool()


def _rank_pad(r: int) -> int:
    return max(16, triton.next_power_of_2(r))


class FusedLoRALinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, A, B, scale: float, p: float, seed: int):
        n, m, k_in = x.shape
        r, n_out = B.shape[1], B.shape[2]
        y = torch.empty(n, m, n_out, device=x.device, dtype=x.dtype)
        xa = torch.empty(n, m, r, device=x.device, dtype=torch.float32)
        precision = "ieee" if x.dtype == torch.float32 else "tf32"  # fp32 stays fp32, as PyTorch's matmul
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n_out, meta["BLOCK_N"]), n)
        _fused_fwd[grid](x, weight, bias if bias is not None else x, A, B, y, xa, m, n_out, k_in, r, scale, p, seed,
                         HAS_BIAS=bias is not None, DROPOUT=p > 0, R_PAD=_rank_pad(r), PRECISION=precision)
        ctx.save_for_backward(x, weight, A, B, xa)
        ctx.scale, ctx.p, ctx.seed, ctx.has_bias = scale, p, seed, bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, A, B, xa = ctx.saved_tensors
        scale, p, seed = ctx.scale, ctx.p, ctx.seed
        dy = dy.contiguous()
        n, m, k_in = x.shape
        r, n_out = B.shape[1], B.shape[2]
        precision = "ieee" if x.dtype == torch.float32 else "tf32"  # fp32 stays fp32, as PyTorch's matmul
        dx = torch.empty_like(x)
        dyb = torch.empty(n, m, r, device=x.device, dtype=torch.float32)
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(k_in, meta["BLOCK_N"]), n)
        _fused_dx[grid](dy, weight, A, B, dx, dyb, m, n_out, k_in, r, scale, p, seed,
                        DROPOUT=p > 0, R_PAD=_rank_pad(r), PRECISION=precision)
        dA = torch.empty(n, k_in, r, device=x.device, dtype=torch.float32)
        grid_a = lambda meta: (triton.cdiv(k_in, meta["BLOCK_K"]), n)
        _lora_da[grid_a](x, dyb, dA, m, k_in, r, scale, p, seed, DROPOUT=p > 0, R_PAD=_rank_pad(r))
        dB = scale * torch.bmm(xa.transpose(1, 2), dy.float())
        dW = torch.einsum("nmo,nmi->oi", dy, x) if ctx.needs_input_grad[1] else None
        dbias = dy.sum(dim=(0, 1)) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return (dx if ctx.needs_input_grad[0] else None, dW, dbias, dA.to(A.dtype), dB.to(B.dtype), None, None, None)


def fused_lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, A: torch.Tensor,
                      B: torch.Tensor, scale: float, dropout_p: float = 0.0, seed: int | None = None) -> torch.Tensor:
    """`[N, M, d_in]` -> `[N, M, d_out]` through the fused kernels (see the module docstring)."""
    if x.dim() != 3 or A.dim() != 3 or B.dim() != 3:
        raise ValueError(f"expected x [N, M, d_in], A [N, d_in, r], B [N, r, d_out]; got {tuple(x.shape)}, "
                         f"{tuple(A.shape)}, {tuple(B.shape)}.")
    n, _, k_in = x.shape
    if A.shape[0] != n or B.shape[0] != n or A.shape[1] != k_in or A.shape[2] != B.shape[1] \
            or weight.shape != (B.shape[2], k_in):
        raise ValueError(f"shapes do not fit: x {tuple(x.shape)}, W {tuple(weight.shape)}, A {tuple(A.shape)}, "
                         f"B {tuple(B.shape)}.")
    if not 1 <= A.shape[2] <= 64:
        raise ValueError(f"the fused kernel supports ranks 1 to 64, got {A.shape[2]}; use kernel='torch'.")
    if dropout_p > 0 and seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    # the kernels index rows densely: make strided views (e.g. a transposed input) contiguous
    tensors = [t.contiguous() for t in (x, weight, A, B)]
    return FusedLoRALinear.apply(tensors[0], tensors[1], bias.contiguous() if bias is not None else None,
                                 tensors[2], tensors[3], float(scale), float(dropout_p), int(seed or 0))
