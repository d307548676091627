"""Fused LoRA linear in Triton: `y = x @ W.T + bias + s * (dropout(x) @ A[n]) @ B[n]`.

Rows are grouped by client: `x` is `[N, M, d_in]` and client n's rows use adapter n (N = 1 is
an ordinary layer), so one launch serves every client. The forward reads each tile of `x` once:
the rank-r product `dropout(x) @ A` accumulates in the same K loop as `x @ W.T` and is expanded
by `B` before the store. The backward fuses `dy @ W` with the LoRA term the same way, then forms
`dA` in a split-M kernel (the reduction runs over all M rows, so it is cut into row blocks whose
partial sums are added in a fixed order: enough parallelism, deterministic) and `dB` with one
small batched matmul. The dropout mask is never stored: every kernel regenerates it from
(client n's seed, element offset within client n's rows) with Philox (`tl.rand`), so a client's
mask does not depend on the other clients in the launch. The rank is padded inside the kernels to a power
of two >= 16, the smallest shape `tl.dot` takes.

This module imports Triton, so it is imported only when the fused kernel is used; under Triton's
CPU interpreter `TRITON_INTERPRET=1` must be set before it is imported.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import MAX_RANK

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# The interpreter's tl.dot is wrong on bf16 (Triton 3.9); there the kernels multiply in fp32.
_UPCAST_DTYPES = (torch.bfloat16,) if INTERPRET else ()


def _configs(keys: list[str], values: list[tuple]) -> list[triton.Config]:
    """Autotuning candidates; the last two entries of each are num_warps and num_stages."""
    if INTERPRET:  # the interpreter runs on the CPU: one small config, no tuning runs
        values = [(32,) * len(keys) + (1, 1)]
    return [triton.Config(dict(zip(keys, v[:-2], strict=True)), num_warps=v[-2], num_stages=v[-1]) for v in values]


# BLOCK_N tiles the output columns of the GEMM (d_out in the forward, d_in in dx); BLOCK_K its
# reduction. Small list, chosen for d in {768, 2304, 3072} on Hopper/Ampere.
GEMM_CONFIGS = _configs(
    ["BLOCK_M", "BLOCK_N", "BLOCK_K"],
    [
        (128, 128, 64, 8, 3),
        (128, 64, 64, 4, 3),
        (64, 128, 64, 4, 3),
        (128, 256, 64, 8, 3),
        (64, 64, 64, 4, 4),
        (128, 128, 32, 4, 4),
        (256, 128, 64, 8, 3),
    ],
)
DA_CONFIGS = _configs(
    ["BLOCK_M", "BLOCK_K"],
    [
        (64, 128, 4, 3),
        (128, 64, 4, 3),
        (64, 64, 4, 4),
        (128, 128, 8, 3),
        (32, 128, 4, 4),
    ],
)
# dA's row blocks are multiples of this (a multiple of every BLOCK_M above).
_SPLIT_UNIT = 32 if INTERPRET else 256


@triton.jit
def _keep(seed, offsets, p):
    """The dropout decision of each element: a pure function of (seed, element offset)."""
    return tl.rand(seed, offsets) >= p


@triton.jit
def _mma(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b with fp32 accumulation (UPCAST: multiply in fp32, for the interpreter's bf16)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.autotune(configs=GEMM_CONFIGS, key=["M", "N_OUT", "K_IN", "R"])
@triton.jit
def _fused_fwd(
    x_ptr,
    w_ptr,
    bias_ptr,
    a_ptr,
    b_ptr,
    y_ptr,
    xa_ptr,
    M,
    N_OUT,
    K_IN,
    R,
    scale,
    p,
    seed_ptr,
    HAS_BIAS: tl.constexpr,
    DROPOUT: tl.constexpr,
    STORE_XA: tl.constexpr,
    R_PAD: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """y tile = x @ W.T + bias + s * (dropout(x) @ A[n]) @ B[n]; grid (M tiles * d_out tiles, N)."""
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
        x = tl.load(x_base + rm[:, None] * K_IN + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K_IN), other=0.0)
        w = tl.load(
            w_ptr + rn[None, :] * K_IN + rk[:, None], mask=(rn[None, :] < N_OUT) & (rk[:, None] < K_IN), other=0.0
        )
        acc = _mma(x, w, acc, PRECISION, UPCAST)
        if DROPOUT:
            offsets = rm[:, None] * K_IN + rk[None, :]
            x = tl.where(_keep(tl.load(seed_ptr + client), offsets, p), x / (1 - p), 0.0).to(x.dtype)
        a = tl.load(a_base + rk[:, None] * R + rr[None, :], mask=(rk[:, None] < K_IN) & (rr[None, :] < R), other=0.0)
        xa = _mma(x, a, xa, PRECISION, UPCAST)
    b = tl.load(
        b_ptr + client * R * N_OUT + rr[:, None] * N_OUT + rn[None, :],
        mask=(rr[:, None] < R) & (rn[None, :] < N_OUT),
        other=0.0,
    )
    xa_low = xa.to(b.dtype)  # what the unfused path would feed its second matmul
    acc += scale * _mma(xa_low, b, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), PRECISION, UPCAST)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N_OUT, other=0.0).to(tl.float32)[None, :]
    tl.store(
        y_ptr + client * M * N_OUT + rm[:, None] * N_OUT + rn[None, :],
        acc.to(y_ptr.dtype.element_ty),
        mask=(rm[:, None] < M) & (rn[None, :] < N_OUT),
    )
    if STORE_XA:
        if pid_n == 0:  # the rank-r intermediate, kept for dB (small: [N, M, r])
            tl.store(
                xa_ptr + client * M * R + rm[:, None] * R + rr[None, :],
                xa_low,
                mask=(rm[:, None] < M) & (rr[None, :] < R),
            )


@triton.autotune(configs=GEMM_CONFIGS, key=["M", "N_OUT", "K_IN", "R"])
@triton.jit
def _fused_dx(
    dy_ptr,
    w_ptr,
    a_ptr,
    b_ptr,
    dx_ptr,
    dyb_ptr,
    M,
    N_OUT,
    K_IN,
    R,
    scale,
    p,
    seed_ptr,
    DROPOUT: tl.constexpr,
    R_PAD: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """dx = dy @ W + s * keep/(1-p) * (dy @ B[n].T) @ A[n].T; BLOCK_N tiles d_in here, BLOCK_K d_out.

    dy @ B[n].T accumulates in the same loop over d_out as dy @ W, and is also stored for dA."""
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
        dy = tl.load(
            dy_base + rm[:, None] * N_OUT + ro[None, :], mask=(rm[:, None] < M) & (ro[None, :] < N_OUT), other=0.0
        )
        w = tl.load(
            w_ptr + ro[:, None] * K_IN + ri[None, :], mask=(ro[:, None] < N_OUT) & (ri[None, :] < K_IN), other=0.0
        )
        acc = _mma(dy, w, acc, PRECISION, UPCAST)
        bt = tl.load(
            b_base + rr[None, :] * N_OUT + ro[:, None], mask=(rr[None, :] < R) & (ro[:, None] < N_OUT), other=0.0
        )
        dyb = _mma(dy, bt, dyb, PRECISION, UPCAST)
    at = tl.load(
        a_ptr + client * K_IN * R + ri[None, :] * R + rr[:, None],
        mask=(rr[:, None] < R) & (ri[None, :] < K_IN),
        other=0.0,
    )
    dyb_low = dyb.to(at.dtype)
    lora = _mma(dyb_low, at, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), PRECISION, UPCAST)
    if DROPOUT:  # dropout sits on x's LoRA branch, so its gradient there is masked the same way
        offsets = rm[:, None] * K_IN + ri[None, :]
        lora = tl.where(_keep(tl.load(seed_ptr + client), offsets, p), lora / (1 - p), 0.0)
    acc += scale * lora
    tl.store(
        dx_ptr + client * M * K_IN + rm[:, None] * K_IN + ri[None, :],
        acc.to(dx_ptr.dtype.element_ty),
        mask=(rm[:, None] < M) & (ri[None, :] < K_IN),
    )
    if pid_in == 0:
        tl.store(
            dyb_ptr + client * M * R + rm[:, None] * R + rr[None, :],
            dyb_low,
            mask=(rm[:, None] < M) & (rr[None, :] < R),
        )


@triton.autotune(configs=DA_CONFIGS, key=["M", "K_IN", "R", "ROWS"])
@triton.jit
def _lora_da(
    x_ptr,
    dyb_ptr,
    part_ptr,
    M,
    K_IN,
    R,
    ROWS,
    p,
    seed_ptr,
    DROPOUT: tl.constexpr,
    R_PAD: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Partial dA[n] over one block of ROWS rows: dropout(x[n]).T @ (dy[n] @ B[n].T).

    Grid (d_in tiles, row blocks, N); the caller sums the row blocks and applies the scale."""
    pid_k = tl.program_id(0)
    split = tl.program_id(1)
    client = tl.program_id(2)
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    rr = tl.arange(0, R_PAD)
    acc = tl.zeros((BLOCK_K, R_PAD), dtype=tl.float32)
    for m0 in range(0, ROWS, BLOCK_M):
        rm = split * ROWS + m0 + tl.arange(0, BLOCK_M)
        x = tl.load(
            x_ptr + client * M * K_IN + rm[:, None] * K_IN + rk[None, :],
            mask=(rm[:, None] < M) & (rk[None, :] < K_IN),
            other=0.0,
        )
        if DROPOUT:
            offsets = rm[:, None] * K_IN + rk[None, :]
            x = tl.where(_keep(tl.load(seed_ptr + client), offsets, p), x / (1 - p), 0.0).to(x.dtype)
        dyb = tl.load(
            dyb_ptr + client * M * R + rm[:, None] * R + rr[None, :],
            mask=(rm[:, None] < M) & (rr[None, :] < R),
            other=0.0,
        )
        acc = _mma(tl.trans(x), dyb, acc, PRECISION, UPCAST)
    n_clients = tl.num_programs(2)
    tl.store(
        part_ptr + ((split * n_clients + client) * K_IN + rk[:, None]) * R + rr[None, :],
        acc,
        mask=(rk[:, None] < K_IN) & (rr[None, :] < R),
    )


@triton.jit
def _mask_kernel(out_ptr, numel, p, seed_ptr, BLOCK: tl.constexpr):
    client = tl.program_id(1)
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    keep = _keep(tl.load(seed_ptr + client), offsets, p)
    tl.store(out_ptr + client * numel + offsets, keep.to(tl.int8), mask=offsets < numel)


def dropout_mask(seeds: torch.Tensor, shape: tuple[int, ...], p: float) -> torch.Tensor:
    """The keep-mask the kernels use for an input of `shape` (`[N, M, d_in]`), as a bool tensor;
    `seeds` are the N clients' seeds (int64, on the device).

    For tests and debugging: the kernels themselves never materialise it."""
    n, numel = shape[0], shape[1] * shape[2]
    out = torch.empty(n, numel, dtype=torch.int8, device=seeds.device)
    _mask_kernel[(triton.cdiv(numel, 1024), n)](out, numel, p, seeds, BLOCK=1024)
    return out.view(shape).bool()


def _rank_pad(r: int) -> int:
    return max(16, triton.next_power_of_2(r))


def _precision(dtype: torch.dtype) -> str:
    """fp32 follows PyTorch's matmul setting (TF32 only when allowed); half types use tensor cores."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _row_blocks(m: int) -> tuple[int, int]:
    """(rows per block, number of blocks) for dA's reduction over M: up to 64 blocks of a
    multiple of _SPLIT_UNIT rows, so a long M still fills the GPU."""
    blocks = max(1, min(64, triton.cdiv(m, 2 * _SPLIT_UNIT)))
    rows = triton.cdiv(triton.cdiv(m, blocks), _SPLIT_UNIT) * _SPLIT_UNIT
    return rows, triton.cdiv(m, rows)


class FusedLoRALinear(torch.autograd.Function):
    """Saves x, W, A, B and the rank-r product dropout(x) @ A; never the dropout mask."""

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, scale: float, p: float, seeds: torch.Tensor):
        n, m, k_in = x.shape
        r, n_out = B.shape[1], B.shape[2]
        y = torch.empty(n, m, n_out, device=x.device, dtype=x.dtype)
        store_xa = ctx.needs_input_grad[4]  # dB needs dropout(x) @ A
        xa = torch.empty(n, m, r, device=x.device, dtype=x.dtype) if store_xa else y

        def grid(meta: dict[str, int]) -> tuple[int, int]:
            return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n_out, meta["BLOCK_N"]), n)

        _fused_fwd[grid](
            x,
            weight,
            bias if bias is not None else x,
            A,
            B,
            y,
            xa,
            m,
            n_out,
            k_in,
            r,
            scale,
            p,
            seeds,
            HAS_BIAS=bias is not None,
            DROPOUT=p > 0,
            STORE_XA=store_xa,
            R_PAD=_rank_pad(r),
            PRECISION=_precision(x.dtype),
            UPCAST=x.dtype in _UPCAST_DTYPES,
        )
        ctx.save_for_backward(x, weight, A, B, xa if store_xa else None, seeds)
        ctx.scale, ctx.p, ctx.has_bias = scale, p, bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, A, B, xa, seeds = ctx.saved_tensors
        scale, p = ctx.scale, ctx.p
        need_x, need_w, need_bias, need_a, need_b = ctx.needs_input_grad[:5]
        dy = dy.contiguous()
        n, m, k_in = x.shape
        r, n_out = B.shape[1], B.shape[2]
        r_pad, precision, upcast = _rank_pad(r), _precision(x.dtype), x.dtype in _UPCAST_DTYPES
        dx = dA = dB = dW = dbias = None
        if need_x:  # dx and dy @ B.T in one pass over dy
            dx = torch.empty_like(x)
            dyb = torch.empty(n, m, r, device=x.device, dtype=x.dtype)

            def grid(meta: dict[str, int]) -> tuple[int, int]:
                return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(k_in, meta["BLOCK_N"]), n)

            _fused_dx[grid](
                dy,
                weight,
                A,
                B,
                dx,
                dyb,
                m,
                n_out,
                k_in,
                r,
                scale,
                p,
                seeds,
                DROPOUT=p > 0,
                R_PAD=r_pad,
                PRECISION=precision,
                UPCAST=upcast,
            )
        elif need_a:  # e.g. the first adapted layer, whose input comes from frozen layers
            dyb = torch.bmm(dy, B.transpose(1, 2))
        if need_a:
            rows, blocks = _row_blocks(m)
            parts = torch.empty(blocks, n, k_in, r, device=x.device, dtype=torch.float32)

            def grid_a(meta: dict[str, int]) -> tuple[int, int, int]:
                return (triton.cdiv(k_in, meta["BLOCK_K"]), blocks, n)

            _lora_da[grid_a](
                x,
                dyb,
                parts,
                m,
                k_in,
                r,
                rows,
                p,
                seeds,
                DROPOUT=p > 0,
                R_PAD=r_pad,
                PRECISION=precision,
                UPCAST=upcast,
            )
            dA = (parts.sum(0) * scale).to(A.dtype)
        if need_b:  # dB[n] = s * (dropout(x[n]) @ A[n]).T @ dy[n]: r x M x d_out, cuBLAS does it well
            dB = (torch.bmm(xa.transpose(1, 2), dy) * scale).to(B.dtype)
        if need_w:
            dW = torch.einsum("nmo,nmi->oi", dy, x).to(weight.dtype)
        if need_bias:
            dbias = dy.sum(dim=(0, 1))
        return dx, dW, dbias, dA, dB, None, None, None


def _common_dtype(x: torch.Tensor, weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.dtype:
    """The dtype the kernels run in: autocast's where it is on (as F.linear would), else the
    shared dtype of the inputs; mixed dtypes without autocast are refused, as in PyTorch."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    dtypes = {t.dtype for t in (x, weight, A, B)}
    if len(dtypes) > 1:
        raise TypeError(
            f"fused_lora_linear needs one dtype for x, weight, A and B (or autocast), got "
            f"x {x.dtype}, weight {weight.dtype}, A {A.dtype}, B {B.dtype}."
        )
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"fused_lora_linear supports float32, float16 and bfloat16, got {x.dtype}.")
    return x.dtype


def fused_lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    A: torch.Tensor,
    B: torch.Tensor,
    scale: float,
    dropout_p: float = 0.0,
    seeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """`[N, M, d_in]` -> `[N, M, d_out]`: `x @ W.T + bias + s * (dropout(x) @ A[n]) @ B[n]`.

    x: `[N, M, d_in]` (client n's rows use adapter n); weight: `[d_out, d_in]`; bias: `[d_out]` or
    None; A: `[N, d_in, r]`; B: `[N, r, d_out]`, r in 1..64. Differentiable in x, A and B, and in
    weight and bias when they require grad. `seeds` (`[N]` int64) seed each client's dropout mask;
    with dropout_p > 0 and none given they are drawn from torch's default generator, so
    `torch.manual_seed` makes a run reproducible.
    """
    if x.dim() != 3 or A.dim() != 3 or B.dim() != 3:
        raise ValueError(
            f"expected x [N, M, d_in], A [N, d_in, r], B [N, r, d_out]; got {tuple(x.shape)}, "
            f"{tuple(A.shape)}, {tuple(B.shape)}."
        )
    n, m, k_in = x.shape
    if (
        A.shape[0] != n
        or B.shape[0] != n
        or A.shape[1] != k_in
        or A.shape[2] != B.shape[1]
        or weight.shape != (B.shape[2], k_in)
        or (bias is not None and bias.shape != (B.shape[2],))
    ):
        raise ValueError(
            f"shapes do not fit: x {tuple(x.shape)}, W {tuple(weight.shape)}, A {tuple(A.shape)}, "
            f"B {tuple(B.shape)}, bias {None if bias is None else tuple(bias.shape)}."
        )
    if not 1 <= A.shape[2] <= MAX_RANK:
        raise ValueError(f"the fused kernel supports ranks 1 to {MAX_RANK}, got {A.shape[2]}; use kernel='torch'.")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}.")
    if n * m * max(k_in, B.shape[2]) >= 2**31:  # the kernels index with int32
        raise ValueError(f"input too large for the fused kernel ({n} x {m} rows); split it into chunks.")
    if seeds is None:
        seeds = torch.randint(0, 2**62, (n,)) if dropout_p > 0 else torch.zeros(n, dtype=torch.int64)
    if seeds.shape != (n,):
        raise ValueError(f"seeds must be [N] = [{n}], got {tuple(seeds.shape)}.")
    seeds = seeds.to(device=x.device, dtype=torch.int64)
    dtype = _common_dtype(x, weight, A, B)
    # the kernels index rows densely: strided views (e.g. a transposed input) are copied once
    x, weight, A, B = (t.to(dtype).contiguous() for t in (x, weight, A, B))
    bias = None if bias is None else bias.to(dtype).contiguous()
    with torch.autocast(x.device.type, enabled=False):
        return FusedLoRALinear.apply(x, weight, bias, A, B, float(scale), float(dropout_p), seeds)
