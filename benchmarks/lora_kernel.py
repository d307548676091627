"""The fused LoRA kernel against its baselines at GPT-2's layer shapes (GPU only; not a test).

For every (d_in -> d_out, rank, tokens, clients N) it times, forward and forward+backward
(gradients for x, A and B; W frozen):

  base     F.linear(x, W, bias) alone: the floor a LoRA layer cannot beat
  eager    the unfused formula as lora_gpt's PyTorch path runs it
  compile  torch.compile of that formula (one static graph per shape)
  fused    lora_gpt.kernels.triton_lora.fused_lora_linear

with CUDA events (warmup, then the median of --reps runs, L2 flushed before each), checks the
fused output against eager first, prints times, ratios and the fused kernel's TFLOP/s and GB/s
as a share of the device's peak, and writes the table to
`benchmarks/results/lora_kernel_<device>.md`.

    python benchmarks/lora_kernel.py                  # the full grid, bf16 (several minutes)
    python benchmarks/lora_kernel.py --quick          # 768 -> 2304, r 16, 16k tokens, N 1 and 8
    python benchmarks/lora_kernel.py --dropout 0.1    # LoRA dropout on in every candidate
"""

from __future__ import annotations

import argparse
import itertools
import re
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]
RANKS = (4, 8, 16)
TOKENS = (4096, 16384, 65536)
CLIENTS = (1, 8)
# Dense bf16 tensor-core TFLOP/s and memory GB/s by device name (first match wins).
PEAKS = [
    ("H100 PCIe", 756.0, 2000.0),
    ("H100 NVL", 835.0, 3900.0),
    ("H100", 989.0, 3350.0),
    ("H200", 989.0, 4800.0),
    ("A100", 312.0, 2039.0),
    ("L40S", 362.0, 864.0),
]
SCALE = 2.0


def unfused(x, W, bias, A, B, p: float):
    """lora_gpt's PyTorch path: three matmuls, x read twice."""
    return F.linear(x, W, bias) + SCALE * torch.bmm(torch.bmm(F.dropout(x, p, p > 0), A), B)


def time_ms(fn, reps: int, flush: torch.Tensor) -> float:
    """Median CUDA-event time of fn in ms, after warmup (which also runs Triton's autotuning)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        flush.zero_()  # evict x, W from L2 so every run reads them from memory
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def case(
    d_in: int, d_out: int, r: int, tokens: int, n: int, dtype: torch.dtype, p: float, reps: int, flush: torch.Tensor
) -> dict:
    from lora_gpt.kernels.triton_lora import fused_lora_linear

    m = tokens // n
    g = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(n, m, d_in, device="cuda", generator=g).to(dtype).requires_grad_()
    W = (torch.randn(d_out, d_in, device="cuda", generator=g) / d_in**0.5).to(dtype)
    bias = torch.randn(d_out, device="cuda", generator=g).to(dtype)
    A = (torch.randn(n, d_in, r, device="cuda", generator=g) / d_in**0.5).to(dtype).requires_grad_()
    B = (torch.randn(n, r, d_out, device="cuda", generator=g) * 0.1).to(dtype).requires_grad_()
    dy = torch.randn(n, m, d_out, device="cuda", generator=g).to(dtype)
    compiled = torch.compile(unfused, dynamic=False)
    forwards = {
        "base": lambda: F.linear(x, W, bias),
        "eager": lambda: unfused(x, W, bias, A, B, p),
        "compile": lambda: compiled(x, W, bias, A, B, p),
        "fused": lambda: fused_lora_linear(x, W, bias, A, B, SCALE, p),
    }
    with torch.no_grad():  # a wrong kernel is not worth timing
        want, got = unfused(x, W, bias, A, B, 0.0).float(), fused_lora_linear(x, W, bias, A, B, SCALE).float()
    err = ((got - want).abs().max() / want.abs().max()).item()
    row = {"err": err}
    for name, fwd in forwards.items():
        leaves = (x,) if name == "base" else (x, A, B)
        with torch.no_grad():
            row[f"{name}_fwd"] = time_ms(fwd, reps, flush)
        row[f"{name}_fb"] = time_ms(lambda fwd=fwd, leaves=leaves: torch.autograd.grad(fwd(), leaves, dy), reps, flush)
    base_flops, lora_flops = 2 * tokens * d_in * d_out, 2 * tokens * r * (d_in + d_out)
    row["fwd_flops"] = base_flops + lora_flops
    row["fb_flops"] = 2 * base_flops + 3 * lora_flops  # dx = dy W (+ LoRA), then dA and dB
    size = dtype.itemsize
    row["fwd_bytes"] = size * (tokens * (d_in + d_out) + d_in * d_out)  # x in, y out, W once
    row["fb_bytes"] = row["fwd_bytes"] + size * (tokens * (2 * d_in + d_out) + d_in * d_out)  # + dy, x, dx, W
    return row


def peaks(device: str, tflops: float | None, gbs: float | None) -> tuple[float | None, float | None]:
    found = next(((t, b) for name, t, b in PEAKS if name in device), (None, None))
    return tflops or found[0], gbs or found[1]


def share(value: float, peak: float | None) -> str:
    return f"{value:.0f} ({100 * value / peak:.0f}%)" if peak else f"{value:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one shape, r 16, 16k tokens, N 1 and 8")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout in every candidate")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the device's dense peak")
    parser.add_argument("--peak-gbs", type=float, default=None, help="override the device's memory bandwidth")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            "benchmarks/lora_kernel.py needs a CUDA GPU: it times the Triton kernel against cuBLAS and "
            "torch.compile, and there is none here. The kernel's correctness is tested on the CPU under "
            "TRITON_INTERPRET=1 by tests/test_lora_kernel.py.",
            file=sys.stderr,
        )
        return 2
    import torch._dynamo as dynamo

    dynamo.config.cache_size_limit = 256  # one static graph per shape, no fallback to eager
    dynamo.config.automatic_dynamic_shapes = False
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    device = torch.cuda.get_device_name()
    peak_tflops, peak_gbs = peaks(device, args.peak_tflops, args.peak_gbs)
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    grid = (
        [(768, 2304, 16, 16384, 1), (768, 2304, 16, 16384, 8)]
        if args.quick
        else [(di, do, r, t, n) for (di, do), r, t, n in itertools.product(SHAPES, RANKS, TOKENS, CLIENTS)]
    )
    lines = [
        f"# Fused LoRA linear on {device}, {args.dtype}, LoRA dropout {args.dropout}",
        "",
        f"torch {torch.__version__}; times in ms, median of {args.reps} after warmup, L2 flushed. "
        f"Peaks: {peak_tflops} TFLOP/s, {peak_gbs} GB/s. Targets (bf16, r <= 16, >= 16k tokens): "
        "fused/base fwd <= 1.10; eager/fused f+b >= 1.30; compile/fused f+b >= 1.15. "
        "`f+b` = forward + backward (dx, dA, dB). `err` = max |fused - eager| / max |eager| (forward).",
        "",
        "| d_in->d_out | r | tokens | N | base fwd | eager fwd | compile fwd | fused fwd | fused/base fwd | "
        "eager/fused fwd | base f+b | eager f+b | compile f+b | fused f+b | fused/base f+b | eager/fused f+b | "
        "compile/fused f+b | fused fwd TFLOP/s (% peak) | fused fwd GB/s (% peak) | fused f+b TFLOP/s (% peak) | err |",
        "|" + "---|" * 21,
    ]
    print("\n".join(lines), flush=True)
    for d_in, d_out, r, tokens, n in grid:
        c = case(d_in, d_out, r, tokens, n, dtype, args.dropout, args.reps, flush)
        cells = [f"{d_in}->{d_out}", r, tokens, n]
        cells += [f"{c[f'{k}_fwd']:.3f}" for k in ("base", "eager", "compile", "fused")]
        cells += [f"{c['fused_fwd'] / c['base_fwd']:.2f}", f"{c['eager_fwd'] / c['fused_fwd']:.2f}"]
        cells += [f"{c[f'{k}_fb']:.3f}" for k in ("base", "eager", "compile", "fused")]
        cells += [
            f"{c['fused_fb'] / c['base_fb']:.2f}",
            f"{c['eager_fb'] / c['fused_fb']:.2f}",
            f"{c['compile_fb'] / c['fused_fb']:.2f}",
        ]
        cells += [
            share(c["fwd_flops"] / c["fused_fwd"] / 1e9, peak_tflops),
            share(c["fwd_bytes"] / c["fused_fwd"] / 1e6, peak_gbs),
            share(c["fb_flops"] / c["fused_fb"] / 1e9, peak_tflops),
            f"{c['err']:.1e}",
        ]
        line = "| " + " | ".join(str(v) for v in cells) + " |"
        lines.append(line)
        print(line, flush=True)
    out = Path(__file__).parent / "results" / f"lora_kernel_{re.sub(r'[^A-Za-z0-9]+', '_', device).strip('_')}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
