"""Collaborative training throughput and peak memory: this design against the paper code's.

(a) `batched`: one frozen base, N stacked adapters, all clients in one forward/backward;
(a') `chunked-k`: the same, k clients per pass with gradients accumulated (exact);
(b) `copies`: the reference design, N full model copies each with its own adapter and optimizer,
    trained one after another, with the same chunked head loss as (a), so the ratios measure the
    design alone;
(b') `copies-full-logits`: the same with full-vocabulary logits and plain cross-entropy, as the
    paper's code computes its loss (labelled; not the baseline of the ratios).
Each configuration runs in a fresh process so peak memory is its own (CPU: peak RSS; GPU: peak
allocated). Prints tokens/s, peak memory and the ratios against (b) at the same N.

    python benchmarks/collab_throughput.py                 # GPT-2 124M shape, N in 1 4 8 16
    python benchmarks/collab_throughput.py --quick         # a small model, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from collab.config import MemoryConfig, OptimConfig
from collab.module import CollabLoRAModule
from lora_gpt import GPT, GPTConfig, LoRAConfig, client_slices, inject_lora, mark_only_lora_as_trainable
from lora_gpt.cross_entropy import fused_linear_cross_entropy, token_cross_entropy
from lora_gpt.lora import ATTENTION_TARGETS, MLP_TARGETS
from lora_gpt.precision import resolve_precision
from lora_gpt.training import adamw

LORA = LoRAConfig(rank=4, alpha=32, dropout=0.1, targets=ATTENTION_TARGETS + MLP_TARGETS)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(
    mode: str, n: int, preset: str, batch: int, seq: int, steps: int, device: torch.device, precision: str
) -> dict:
    torch.manual_seed(0)
    config = GPTConfig.from_name(preset)
    data = torch.randint(0, config.vocab_size, (n, batch, seq + 1), device=device)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16-mixed")
    if mode.startswith("copies"):
        models = [mark_only_lora_as_trainable(inject_lora(GPT(config), LORA)).to(device) for _ in range(n)]
        optimizers = [adamw(m.named_parameters(), 1e-3, 1e-3) for m in models]

        def copy_loss(model: GPT, batch: torch.Tensor) -> torch.Tensor:
            x, y = batch[:, :-1], batch[:, 1:]
            if mode == "copies-full-logits":
                return token_cross_entropy(model(x), y).mean()
            return fused_linear_cross_entropy(model.hidden_states(x), model.lm_head.weight, y)[0]

        def step() -> None:
            for i, (model, opt) in enumerate(zip(models, optimizers, strict=True)):
                with autocast:
                    loss = copy_loss(model, data[i])
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
    else:
        chunk = n if mode == "batched" else int(mode.split("-")[1])
        module = CollabLoRAModule(
            base=GPT(config), lora=LORA, optim=OptimConfig(), num_clients=n, memory=MemoryConfig(client_chunk=chunk)
        ).to(device)
        opt = adamw(module.adapters().items(), 1e-3, 1e-3)

        def step() -> None:
            for clients in client_slices(n, chunk):
                with autocast:
                    objective, _ = module.client_losses(data, clients)
                objective.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    step()  # warm-up: allocator, kernels, optimizer state
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    return {
        "mode": mode,
        "N": n,
        "tokens_per_s": n * batch * seq / seconds,
        "step_s": seconds,
        "peak_mb": peak_memory_mb(device),
    }


def run_isolated(args: argparse.Namespace, mode: str, n: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        str(n),
        "--preset",
        args.preset,
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--steps",
        str(args.steps),
        "--device",
        args.device,
        "--precision",
        args.precision,
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt2")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--chunks", type=int, nargs="+", default=[2], help="k for the chunked mode")
    p.add_argument("--batch", type=int, default=2, help="sequences per client")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--precision", default="auto", help="auto (bf16-mixed where bfloat16 is native), 32-true or bf16-mixed"
    )
    p.add_argument("--quick", action="store_true", help="gpt2-mini, N in 1 4, one step")
    p.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    p.add_argument("--child", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()
    args.precision = resolve_precision(args.precision, torch.device(args.device).type)
    if args.child:
        mode, n = args.child
        print(
            json.dumps(
                measure(
                    mode,
                    int(n),
                    args.preset,
                    args.batch,
                    args.seq,
                    args.steps,
                    torch.device(args.device),
                    args.precision,
                )
            )
        )
        return
    if args.quick:
        args.preset, args.clients, args.steps = "gpt2-mini", [1, 4], 1
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    lines = [
        f"# Collaborative training throughput: {args.preset} shape, seq {args.seq}, "
        f"{args.batch} sequences per client, LoRA r=4 on attention+MLP, {args.precision}, on {device_name}",
        "",
        "| N | mode | tokens/s | peak MB | throughput vs copies | memory vs copies |",
        "|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for n in args.clients:
        modes = ["copies", "copies-full-logits", "batched"] + [f"chunked-{k}" for k in args.chunks if k < n]
        results = {mode: run_isolated(args, mode, n) for mode in modes}
        ref = results["copies"]
        for mode, r in results.items():
            line = (
                f"| {n} | {mode} | {r['tokens_per_s']:.0f} | {r['peak_mb']:.0f} | "
                f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x | {r['peak_mb'] / ref['peak_mb']:.2f}x |"
            )
            lines.append(line)
            print(line, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
