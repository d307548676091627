"""The fused Triton LoRA kernel against the plain PyTorch formula, under Triton's CPU interpreter."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel is defined

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")

from lora_gpt.kernels import resolve_kernel, triton_unavailable_reason  # noqa: E402

if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)

from lora_gpt.kernels.triton_lora import dropout_mask, fused_lora_linear  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def interpreter_dot_works(dtype: torch.dtype) -> bool:
    """Triton's CPU interpreter computes tl.dot wrongly for some dtypes (bf16 in Triton 3.9)."""
    if DEVICE == "cuda":
        return True
    import triton.language as tl

    @triton.jit
    def probe(a_ptr, c_ptr):
        o = tl.arange(0, 16)
        a = tl.load(a_ptr + o[:, None] * 16 + o[None, :])
        tl.store(c_ptr + o[:, None] * 16 + o[None, :], tl.dot(a, a))

    a = torch.randn(16, 16).to(dtype)
    c = torch.empty(16, 16)
    probe[(1,)](a, c)
    return torch.allclose(c, a.float() @ a.float(), atol=1e-2, rtol=1e-2)


def reference(x, W, bias, A, B, scale, mask, p):
    """The formula in float64 PyTorch, given the dropout mask."""
    x, W, A, B = (t.detach().double().requires_grad_(t.requires_grad) for t in (x, W, A, B))
    bias = None if bias is None else bias.detach().double().requires_grad_(bias.requires_grad)
    xd = torch.where(mask, x / (1 - p), torch.zeros_like(x)) if p > 0 else x
    y = x @ W.T + (0 if bias is None else bias) + scale * torch.bmm(torch.bmm(xd, A), B)
    return y, (x, W, bias, A, B)


def check(n, m, d_in, d_out, r, p=0.0, dtype=torch.float32, bias=True, train_base=False, tol=1e-5):
    torch.manual_seed(n * 1000 + m + r)
    x = torch.randn(n, m, d_in, dtype=dtype, device=DEVICE, requires_grad=True)
    W = (torch.randn(d_out, d_in, device=DEVICE) / d_in ** 0.5).to(dtype).requires_grad_(train_base)
    b = torch.randn(d_out, device=DEVICE).to(dtype).requires_grad_(train_base) if bias else None
    A = (0.3 * torch.randn(n, d_in, r, device=DEVICE)).to(dtype).requires_grad_()
    B = (0.3 * torch.randn(n, r, d_out, device=DEVICE)).to(dtype).requires_grad_()
    y = fused_lora_linear(x, W, b, A, B, scale=2.0, dropout_p=p, seed=42)
    grad = torch.randn_like(y)
    y.backward(grad)
    mask = dropout_mask(42, (n, m, d_in), p, DEVICE) if p > 0 else None
    y_ref, leaves = reference(x, W, b, A, B, 2.0, mask, p)
    y_ref.backward(grad.double())

    def close(got, want, name):
        err = (got.double() - want).abs().max() / want.abs().max().clamp_min(1e-12)
        assert err < tol, f"{name}: relative error {err:.2e}"

    close(y, y_ref, "y")
    for name, got, ref in zip(("x", "W", "bias", "A", "B"), (x, W, b, A, B), leaves):
        if got is not None and got.requires_grad:
            close(got.grad, ref.grad, f"d{name}")
        elif got is not None:
            assert got.grad is None, f"frozen {name} got a gradient"


@pytest.mark.parametrize("n, m, d_in, d_out, r", [
    (1, 33, 47, 65, 4),   # an ordinary layer, odd shapes everywhere
    (3, 20, 40, 24, 16),  # three clients' adapters in one launch
    (2, 70, 96, 33, 1),
    (2, 9, 31, 40, 64),   # the largest supported rank
])
def test_forward_and_gradients_fp32(n, m, d_in, d_out, r):
    check(n, m, d_in, d_out, r)


def test_dropout_matches_pytorch_given_the_same_mask():
    check(3, 21, 37, 29, 8, p=0.3)


def test_frozen_base_can_also_train_when_asked():
    check(2, 13, 24, 18, 4, train_base=True)
    check(1, 13, 24, 18, 4, bias=False)


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 3e-3), (torch.bfloat16, 3e-2)])
def test_half_precisions(dtype, tol):
    if not interpreter_dot_works(dtype):
        pytest.skip(f"Triton {triton.__version__}'s CPU interpreter computes tl.dot on {dtype} wrongly; "
                    "this dtype is checked on a GPU only")
    check(2, 17, 33, 20, 8, p=0.1, dtype=dtype, tol=tol)


def test_dropout_mask_is_seeded_and_keeps_one_minus_p():
    a = dropout_mask(7, (2, 64, 128), 0.25, DEVICE)
    assert torch.equal(a, dropout_mask(7, (2, 64, 128), 0.25, DEVICE))
    assert not torch.equal(a, dropout_mask(8, (2, 64, 128), 0.25, DEVICE))
    assert abs(a.float().mean().item() - 0.75) < 0.01
    torch.manual_seed(3)
    x = torch.randn(1, 8, 16, device=DEVICE)
    W, A, B = torch.randn(12, 16, device=DEVICE), torch.randn(1, 16, 4, device=DEVICE), torch.randn(1, 4, 12, device=DEVICE)
    torch.manual_seed(5)
    y1 = fused_lora_linear(x, W, None, A, B, 1.0, dropout_p=0.5)
    torch.manual_seed(5)
    assert torch.equal(y1, fused_lora_linear(x, W, None, A, B, 1.0, dropout_p=0.5))


def test_non_contiguous_input_and_bad_shapes():
    x = torch.randn(2, 24, 10, device=DEVICE).transpose(1, 2)  # [2, 10, 24], strided
    W, A, B = torch.randn(6, 24, device=DEVICE), torch.randn(2, 24, 3, device=DEVICE), torch.randn(2, 3, 6, device=DEVICE)
    expected = x @ W.T + torch.bmm(torch.bmm(x, A), B)
    torch.testing.assert_close(fused_lora_linear(x, W, None, A, B, 1.0), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="ranks 1 to 64"):
        fused_lora_linear(x, W, None, torch.randn(2, 24, 65), torch.randn(2, 65, 6), 1.0)
    with pytest.raises(ValueError, match="shapes do not fit"):
        fused_lora_linear(x, W, None, A[:1], B, 1.0)


def test_gpt_with_triton_kernel_equals_torch_path():
    from lora_gpt import GPT, GPTConfig, LoRAConfig, inject_lora, lora_parameters, mark_only_lora_as_trainable

    def build(kernel):
        torch.manual_seed(0)
        model = GPT(GPTConfig.from_name("gpt2-tiny", vocab_size=64)).to(DEVICE)
        cfg = LoRAConfig(rank=4, dropout=0.0, kernel=kernel, init_seed=0,
                         targets=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
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
    for (name, pf), pp in zip(lora_parameters(fused).items(), lora_parameters(plain).values()):
        torch.testing.assert_close(pf.grad, pp.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_kernel_dispatch():
    assert resolve_kernel("torch", torch.device("cpu")) == "torch"
    assert resolve_kernel("auto", torch.device("cpu")) == "torch"  # silently, even when Triton could interpret
    assert resolve_kernel("triton", torch.device("cpu")) == "triton"  # TRITON_INTERPRET=1 here
    with pytest.raises(ValueError, match="kernel must be one of"):
        resolve_kernel("cuda", torch.device("cpu"))


def test_triton_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    reason = triton_unavailable_reason(torch.device("cpu"))
    assert "needs a CUDA device" in reason and "TRITON_INTERPRET=1" in reason
    from lora_gpt.kernels import _resolve

    _resolve.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="cannot run: the fused kernel needs a CUDA device"):
            resolve_kernel("triton", torch.device("cpu"))
    finally:
        _resolve.cache_clear()
