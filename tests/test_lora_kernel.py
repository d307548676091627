"""The fused Triton LoRA kernel against the plain PyTorch formula.

Without a GPU the kernels run under Triton's CPU interpreter, which must be switched on
(`TRITON_INTERPRET=1`) before the kernel module is imported. So that this file neither depends on
import order nor changes the environment of the rest of the suite, a plain `pytest` run starts
one child pytest on this file with the variable set (test_kernels_under_the_interpreter), and
the kernel tests run there; with the variable already set, or on a GPU, they run directly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

import lora_gpt.kernels as kernels  # noqa: E402
from lora_gpt.kernels import resolve_kernel, triton_unavailable_reason  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
KERNELS_HERE = CUDA or os.environ.get("TRITON_INTERPRET") == "1"
kernel_test = pytest.mark.skipif(
    not KERNELS_HERE, reason="runs in the TRITON_INTERPRET=1 child of test_kernels_under_the_interpreter"
)


def test_kernels_under_the_interpreter():
    if KERNELS_HERE:
        pytest.skip("the kernel tests run directly in this process")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-o", "addopts=", "-q", "-rs", "-p", "no:cacheprovider"],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, (
        f"kernel tests failed under TRITON_INTERPRET=1:\n{proc.stdout[-8000:]}{proc.stderr[-3000:]}"
    )


def kernel_module():
    from lora_gpt.kernels import triton_lora  # imported here: only where the kernels can run

    return triton_lora


def reference(x, W, bias, A, B, scale, mask, p):
    """The formula in float64 PyTorch, given the dropout mask."""
    x, W, A, B = (t.detach().double().requires_grad_(t.requires_grad) for t in (x, W, A, B))
    bias = None if bias is None else bias.detach().double().requires_grad_(bias.requires_grad)
    xd = torch.where(mask, x / (1 - p), torch.zeros_like(x)) if p > 0 else x
    y = x @ W.T + (0 if bias is None else bias) + scale * torch.bmm(torch.bmm(xd, A), B)
    return y, (x, W, bias, A, B)


def check(n, m, d_in, d_out, r, p=0.0, dtype=torch.float32, bias=True, train_base=False, x_grad=True, tol=1e-5):
    """Forward and every gradient of the fused kernel against `reference`, relative max error < tol."""
    k = kernel_module()
    torch.manual_seed(n * 1000 + m + r)
    x = torch.randn(n, m, d_in, device=DEVICE).to(dtype).requires_grad_(x_grad)
    W = (torch.randn(d_out, d_in, device=DEVICE) / d_in**0.5).to(dtype).requires_grad_(train_base)
    b = torch.randn(d_out, device=DEVICE).to(dtype).requires_grad_(train_base) if bias else None
    A = (0.3 * torch.randn(n, d_in, r, device=DEVICE)).to(dtype).requires_grad_()
    B = (0.3 * torch.randn(n, r, d_out, device=DEVICE)).to(dtype).requires_grad_()
    seeds = torch.arange(42, 42 + n, device=DEVICE)
    y = k.fused_lora_linear(x, W, b, A, B, scale=2.0, dropout_p=p, seeds=seeds)
    assert y.shape == (n, m, d_out) and y.dtype == dtype
    grad = torch.randn_like(y)
    y.backward(grad)
    mask = k.dropout_mask(seeds, (n, m, d_in), p) if p > 0 else None
    y_ref, leaves = reference(x, W, b, A, B, 2.0, mask, p)
    y_ref.backward(grad.double())

    def close(got, want, name):
        err = (got.double() - want).abs().max() / want.abs().max().clamp_min(1e-12)
        assert err < tol, f"{name}: relative error {err:.2e} (tolerance {tol:.0e})"

    close(y, y_ref, "y")
    for name, got, ref in zip(("x", "W", "bias", "A", "B"), (x, W, b, A, B), leaves, strict=True):
        if got is not None and got.requires_grad:
            assert got.grad is not None and got.grad.dtype == got.dtype, f"d{name}"
            close(got.grad, ref.grad, f"d{name}")
        elif got is not None:
            assert got.grad is None, f"frozen {name} got a gradient"


@kernel_test
@pytest.mark.parametrize(
    "n, m, d_in, d_out, r",
    [
        (1, 33, 47, 65, 4),  # an ordinary layer, odd shapes everywhere
        (3, 20, 40, 24, 16),  # three clients' adapters in one launch
        (2, 70, 96, 33, 1),  # rank 1; M = 70 spans two of dA's row blocks under the interpreter
        (2, 9, 31, 40, 64),  # the largest supported rank
    ],
)
def test_forward_and_gradients_fp32(n, m, d_in, d_out, r):
    check(n, m, d_in, d_out, r)


@kernel_test
@pytest.mark.parametrize("n, m, d_in, d_out, r", [(1, 33, 47, 65, 4), (2, 70, 65, 47, 16)])
def test_dropout_matches_pytorch_given_the_same_mask(n, m, d_in, d_out, r):
    check(n, m, d_in, d_out, r, p=0.3)


@kernel_test
def test_gradient_flags():
    check(2, 13, 24, 18, 4, train_base=True)  # the frozen base trains too when asked
    check(1, 13, 24, 18, 4, bias=False)
    check(2, 21, 24, 18, 8, p=0.2, x_grad=False)  # the first adapted layer: no dx, still dA and dB


@kernel_test
@pytest.mark.parametrize("dtype, tol", [(torch.float16, 3e-3), (torch.bfloat16, 3e-2)])
def test_half_precisions(dtype, tol):
    """Under the interpreter bf16 products are taken in fp32 (its bf16 tl.dot is wrong in Triton
    3.9); loads, dropout, rounding of the rank-r products and stores are bf16 as on a GPU."""
    check(2, 17, 33, 20, 8, p=0.1, dtype=dtype, tol=tol)
    check(1, 40, 65, 47, 16, dtype=dtype, tol=tol)


@kernel_test
def test_dropout_mask_is_seeded_per_client_and_keeps_one_minus_p():
    k = kernel_module()
    seeds = torch.tensor([7, 9], device=DEVICE)
    a = k.dropout_mask(seeds, (2, 64, 128), 0.25)
    assert torch.equal(a, k.dropout_mask(seeds, (2, 64, 128), 0.25))
    assert not torch.equal(a, k.dropout_mask(seeds + 1, (2, 64, 128), 0.25))
    assert torch.equal(a[1], k.dropout_mask(seeds[1:], (1, 64, 128), 0.25)[0])  # a client's mask is its own
    assert abs(a.float().mean().item() - 0.75) < 0.01
    torch.manual_seed(3)
    x = torch.randn(1, 8, 16, device=DEVICE)
    W, A, B = (
        torch.randn(12, 16, device=DEVICE),
        torch.randn(1, 16, 4, device=DEVICE),
        torch.randn(1, 4, 12, device=DEVICE),
    )
    torch.manual_seed(5)  # no seed given: drawn from torch's default generator
    y1 = k.fused_lora_linear(x, W, None, A, B, 1.0, dropout_p=0.5)
    y2 = k.fused_lora_linear(x, W, None, A, B, 1.0, dropout_p=0.5)
    torch.manual_seed(5)
    assert torch.equal(y1, k.fused_lora_linear(x, W, None, A, B, 1.0, dropout_p=0.5))
    assert not torch.equal(y1, y2)
    eleven = torch.tensor([11], device=DEVICE)
    assert torch.equal(
        k.fused_lora_linear(x, W, None, A, B, 1.0, 0.5, seeds=eleven),
        k.fused_lora_linear(x, W, None, A, B, 1.0, 0.5, seeds=eleven),
    )


@kernel_test
def test_autocast_and_dtype_errors():
    k = kernel_module()
    torch.manual_seed(0)
    x, W, b = torch.randn(2, 9, 24, device=DEVICE), torch.randn(10, 24, device=DEVICE), torch.randn(10, device=DEVICE)
    A = torch.randn(2, 24, 4, device=DEVICE, requires_grad=True)
    B = torch.randn(2, 4, 10, device=DEVICE, requires_grad=True)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        y = k.fused_lora_linear(x, W, b, A, B, 0.5)
    assert y.dtype == torch.bfloat16  # as F.linear under autocast
    expected = x @ W.T + b + 0.5 * torch.bmm(torch.bmm(x, A), B)
    torch.testing.assert_close(y.float(), expected, atol=0.1, rtol=0.05)
    y.float().sum().backward()
    assert A.grad.dtype == torch.float32 and B.grad.dtype == torch.float32
    with pytest.raises(TypeError, match="one dtype"):
        k.fused_lora_linear(x.half(), W, b, A, B, 0.5)


@kernel_test
def test_non_contiguous_input_and_bad_arguments():
    k = kernel_module()
    x = torch.randn(2, 24, 10, device=DEVICE).transpose(1, 2)  # [2, 10, 24], strided
    W, A, B = (
        torch.randn(6, 24, device=DEVICE),
        torch.randn(2, 24, 3, device=DEVICE),
        torch.randn(2, 3, 6, device=DEVICE),
    )
    expected = x @ W.T + torch.bmm(torch.bmm(x, A), B)
    torch.testing.assert_close(k.fused_lora_linear(x, W, None, A, B, 1.0), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="ranks 1 to 64"):
        k.fused_lora_linear(x, W, None, torch.randn(2, 24, 65), torch.randn(2, 65, 6), 1.0)
    with pytest.raises(ValueError, match="shapes do not fit"):
        k.fused_lora_linear(x, W, None, A[:1], B, 1.0)
    with pytest.raises(ValueError, match="dropout_p"):
        k.fused_lora_linear(x, W, None, A, B, 1.0, dropout_p=1.0)


@kernel_test
def test_gpt_with_triton_kernel_equals_torch_path():
    from lora_gpt import GPT, GPTConfig, LoRAConfig, inject_lora, lora_parameters, mark_only_lora_as_trainable

    def build(kernel):
        torch.manual_seed(0)
        model = GPT(GPTConfig.from_name("gpt2-tiny", vocab_size=64)).to(DEVICE)
        cfg = LoRAConfig(
            rank=4,
            dropout=0.0,
            kernel=kernel,
            init_seed=0,
            targets=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
        )
        model = mark_only_lora_as_trainable(inject_lora(model, cfg, num_adapters=2))
        with torch.no_grad():
            for name, p in lora_parameters(model).items():
                p.normal_(0, 0.1, generator=torch.Generator(DEVICE).manual_seed(len(name)))
        return model

    idx = torch.randint(0, 64, (2, 2, 8), device=DEVICE)
    fused, plain = build("triton"), build("torch")
    out_f, out_p = fused(idx), plain(idx)
    torch.testing.assert_close(out_f, out_p, atol=1e-5, rtol=1e-5)
    out_f.square().mean().backward()
    out_p.square().mean().backward()
    for (name, pf), pp in zip(lora_parameters(fused).items(), lora_parameters(plain).values(), strict=True):
        torch.testing.assert_close(pf.grad, pp.grad, atol=1e-6, rtol=1e-4, msg=name)


@kernel_test
def test_fused_dropout_masks_belong_to_each_client():
    """With per-client seeds, a client's output does not depend on which clients share the launch."""
    from lora_gpt import GPT, ClientSlice, GPTConfig, LoRAConfig, client_seeds, inject_lora, lora_parameters

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("gpt2-tiny", vocab_size=64)).to(DEVICE)
    inject_lora(model, LoRAConfig(rank=4, dropout=0.3, kernel="triton", targets=("attn.c_attn", "mlp.c_fc")), 3)
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.normal_(0, 0.1)
    idx = torch.randint(0, 64, (3, 2, 8), device=DEVICE)
    seeds = client_seeds(5, range(3), step=2)
    with torch.no_grad():
        whole = model(idx, ClientSlice(0, 3, seeds))
        tail = model(idx[1:], ClientSlice(1, 3, seeds[1:]))
        other_step = model(idx, ClientSlice(0, 3, client_seeds(5, range(3), step=3)))
    torch.testing.assert_close(tail, whole[1:], atol=1e-6, rtol=0)
    assert not torch.allclose(other_step, whole)


@pytest.fixture
def fresh_dispatch():
    """resolve_kernel caches per (kernel, device type); tests that change the environment clear it."""
    kernels._resolve.cache_clear()
    yield
    kernels._resolve.cache_clear()


def test_kernel_dispatch(fresh_dispatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto on the CPU is silent
        assert resolve_kernel("auto", torch.device("cpu"), 4) == "torch"
    assert resolve_kernel("torch", torch.device("cpu"), 4) == "torch"
    with pytest.raises(ValueError, match=r"kernel must be one of \('auto', 'triton', 'torch'\)"):
        resolve_kernel("cuda", torch.device("cpu"), 4)


def test_triton_on_cpu_needs_the_interpreter(fresh_dispatch, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reason = triton_unavailable_reason(torch.device("cpu"))
    assert "needs a CUDA device" in reason and "TRITON_INTERPRET=1" in reason
    with pytest.raises(RuntimeError, match="cannot run: the fused kernel needs a CUDA device"):
        resolve_kernel("triton", torch.device("cpu"), 4)
    if KERNELS_HERE and not CUDA:  # in the interpreter child: with the variable set, it runs
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        kernels._resolve.cache_clear()
        assert resolve_kernel("triton", torch.device("cpu"), 4) == "triton"


def test_the_fused_kernels_rank_limit_is_checked_where_the_configuration_is_made(fresh_dispatch):
    """kernel='triton' above the kernel's largest rank is refused by LoRAConfig (and so by the command
    line, before any work), naming the fix; kernel='auto' runs PyTorch's matmuls there, saying so once."""
    from collab import cli
    from lora_gpt import LoRAConfig
    from lora_gpt.errors import ConfigError

    assert LoRAConfig(kernel="triton", rank=kernels.MAX_RANK).rank == 64
    said = r"--lora.rank must be <= 64 with --lora.kernel triton .*, got 65. Fix: --lora.kernel auto or torch"
    with pytest.raises(ConfigError, match=said):
        LoRAConfig(kernel="triton", rank=65)
    with pytest.raises(ConfigError, match=said.replace("65", "128")):
        cli.parse(["--lora.kernel", "triton", "--lora_rank", "128"])
    with pytest.warns(
        UserWarning, match="'auto' runs PyTorch's matmuls on CUDA: the fused kernel takes ranks up to 64"
    ):
        assert resolve_kernel("auto", torch.device("cuda"), 65) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_kernel("auto", torch.device("cuda"), 128) == "torch"
        assert resolve_kernel("auto", torch.device("cpu"), 128) == "torch"


def test_auto_on_cuda_without_triton_warns_once(fresh_dispatch, monkeypatch):
    monkeypatch.setattr(kernels, "_triton_importable", lambda: False)
    with pytest.warns(UserWarning, match="falls back to PyTorch on CUDA: Triton is not installed"):
        assert resolve_kernel("auto", torch.device("cuda"), 4) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_kernel("auto", torch.device("cuda"), 4) == "torch"
    with pytest.raises(RuntimeError, match="Triton is not installed"):
        resolve_kernel("triton", torch.device("cuda"), 4)
