"""The fused LoRA kernel against its baselines, at GPT-2's layer shapes (GPU only).

For every (d_in -> d_out, rank, tokens, clients) it times, forward and forward+backward:
the base matmul alone (the floor), unfused eager PyTorch, `torch.compile` of the unfused
formula, and the fused Triton kernel; prints times, ratios, achieved TFLOP/s and GB/s as a
share of the device's peak, and writes the table to `benchmarks/results/lora_kernel_<device>.md`.

    python benchmarks/lora_kernel.py            # the full grid, bf16
    python benchmarks/lora_kernel.py --quick    # 768 -> 2304, r 16, 16k tokens
"""
from __future__ import annotations

import argparse
import itertools
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]
PEAKS = {"H100": (989.0, 3350.0), "H200": (989.0, 4800.0), "A100": (312.0, 2039.0)}  # dense bf16 TFLOP/s, GB/s


def unfused(x, W, bias, A, B, scale):
    return F.linear(x, W, bias) + scale * torch.bmm(torch.bmm(x, A), B)


def time_ms(fn, warmup: int = 5, reps: int = 20) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def case(d_in: int, d_out: int, r: int, tokens: int, n: int, dtype: torch.dtype, compiled) -> dict:
    from lora_gpt.kernels.triton_lora import fused_lora_linear

    m = tokens // n
    x = torch.randn(n, m, d_in, device="cuda", dtype=dtype, requires_grad=True)
    W = torch.randn(d_out, d_in, device="cuda", dtype=dtype) / d_in ** 0.5
    bias = torch.zeros(d_out, device="cuda", dtype=dtype)
    A = (torch.randn(n, d_in, r, device="cuda", dtype=dtype) / d_in ** 0.5).requires_grad_()
    B = (torch.randn(n, r, d_out, device="cuda", dtype=dtype) * 0.01).requires_grad_()
    dy = torch.randn(n, m, d_out, device="cuda", dtype=dtype)
    candidates = {
        "base": lambda: F.linear(x, W, bias),
        "eager": lambda: unfused(x, W, bias, A, B, 2.0),
        "compile": lambda: compiled(x, W, bias, A, B, 2.0),
        "fused": lambda: fused_lora_linear(x, W, bias, A, B, 2.0),
    }
    row = {}
    for name, fn in candidates.items():
        with torch.no_grad():
            row[f"{name}_fwd"] = time_ms(fn)
        row[f"{name}_fwdbwd"] = time_ms(lambda: fn().backward(dy))
    base_flops = 2 * tokens * d_in * d_out
    lora_flops = 2 * tokens * r * (d_in + d_out)
    bytes_moved = dtype.itemsize * (tokens * (d_in + d_out) + d_in * d_out)  # x in, y out, W once
    row.update(flops=base_flops + lora_flops, bytes=bytes_moved)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--peak-gbs", type=float, default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/lora_kernel.py needs a CUDA GPU: it times the Triton kernel against cuBLAS. "
              "On the CPU the kernel's correctness is tested under TRITON_INTERPRET=1 (tests/test_lora_kernel.py).")
        return 2
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    device = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAKS.items() if k in device), (None, None))
    peak_tflops, peak_gbs = args.peak_tflops or peak[0], args.peak_gbs or peak[1]
    compiled = torch.compile(unfused)
    grid = ([(768, 2304, 16, 16384, 1), (768, 2304, 16, 16384, 8)] if args.quick else
            [(di, do, r, t, n) for (di, do), r, t, n in itertools.product(SHAPES, (4, 8, 16), (4096, 16384, 65536), (1, 8))])
    lines = [f"# Fused LoRA linear on {device}, {args.dtype}", "",
             "Times in ms (median of 20). Ratios: fused fwd / base fwd (target <= 1.10 at >= 16k tokens, r <= 16); "
             "eager and compile fwd+bwd / fused fwd+bwd (targets >= 1.3 and >= 1.15).", "",
             "| shape | r | tokens | N | base fwd | eager fwd | compile fwd | fused fwd | fused/base fwd | "
             "base f+b | eager f+b | compile f+b | fused f+b | eager/fused f+b | compile/fused f+b | "
             "fused fwd TFLOP/s (% peak) | fused fwd GB/s (% peak) |",
             "|" + "---|" * 17]
    print("\n".join(lines), flush=True)
    for d_in, d_out, r, tokens, n in grid:
        c = case(d_in, d_out, r, tokens, n, dtype, compiled)
        tflops = c["flops"] / c["fused_fwd"] / 1e9
        gbs = c["bytes"] / c["fused_fwd"] / 1e6
        share = lambda v, peak_value: f"{v:.0f} ({100 * v / peak_value:.0f}%)" if peak_value else f"{v:.0f}"
        line = (f"| {d_in}->{d_out} | {r} | {tokens} | {n} | {c['base_fwd']:.3f} | {c['eager_fwd']:.3f} | "
                f"{c['compile_fwd']:.3f} | {c['fused_fwd']:.3f} | {c['fused_fwd'] / c['base_fwd']:.2f} | "
                f"{c['base_fwdbwd']:.3f} | {c['eager_fwdbwd']:.3f} | {c['compile_fwdbwd']:.3f} | {c['fused_fwdbwd']:.3f} | "
                f"{c['eager_fwdbwd'] / c['fused_fwdbwd']:.2f} | {c['compile_fwdbwd'] / c['fused_fwdbwd']:.2f} | "
                f"{share(tflops, peak_tflops)} | {share(gbs, peak_gbs)} |")
        lines.append(line)
        print(line, flush=True)
    out = Path(__file__).parent / "results" / f"lora_kernel_{re.sub(r'[^A-Za-z0-9]+', '_', device)}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
