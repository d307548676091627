"""CPU speed of the training steps, float32 against bfloat16, each row measured side by side.

Rows (every variant of a row runs in this process, interleaved over `--reps` rounds; the
table gives each variant's median step time, its tokens/s and its ratio to the row's first):

- pretraining (`gpt2-micro`, 16 x 128 tokens, every weight trains): plain PyTorch float32 with
  full logits (the earlier path), the fused head loss in float32, the same in bfloat16;
- a collaborative step (N=8 clients, 2 x 128 tokens each, LoRA r=4 on attention and MLP, frozen
  base) at the offline base's shape and at GPT-2 124M's, float32 against bfloat16;
- the LoRA step against the same frozen-base step without adapters (its embedding output made a
  leaf, so the backward runs through every block in both), in both precisions.

    python benchmarks/cpu_speed.py --out benchmarks/results/cpu_speed.md
    python benchmarks/cpu_speed.py --quick          # gpt2-tiny shapes, 2 rounds: a smoke run
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lora_gpt import GPT, ClientSlice, GPTConfig, LoRAConfig, client_seeds, inject_lora, mark_only_lora_as_trainable
from lora_gpt.cross_entropy import fused_linear_cross_entropy, token_cross_entropy
from lora_gpt.lora import ATTENTION_TARGETS, MLP_TARGETS
from lora_gpt.precision import flush_denormals, native_bf16
from lora_gpt.training import adamw

LORA = LoRAConfig(rank=4, alpha=32, dropout=0.1, targets=ATTENTION_TARGETS + MLP_TARGETS, kernel="torch")
Step = Callable[[], None]


def precision(bf16: bool):
    return torch.autocast("cpu", torch.bfloat16, enabled=bf16)


def pretraining_steps(preset: str, batch: int, seq: int) -> dict[str, Step]:
    torch.manual_seed(0)
    config = GPTConfig.from_name(preset)
    model = GPT(config)
    optimizer = adamw(model.named_parameters(), 1e-4, 0.1)
    data = torch.randint(0, config.vocab_size, (batch, seq + 1))
    x, y = data[:, :-1], data[:, 1:]

    def full_logits() -> None:
        token_cross_entropy(model(x), y).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def fused(bf16: bool) -> Step:
        def step() -> None:
            with precision(bf16):
                loss, _ = fused_linear_cross_entropy(model.hidden_states(x), model.lm_head.weight, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    return {
        "fp32, full logits (plain PyTorch)": full_logits,
        "fp32, fused head loss": fused(False),
        "bf16, fused head loss": fused(True),
    }


def collaborative_steps(preset: str, clients: int, batch: int, seq: int) -> tuple[dict[str, Step], dict[str, Step]]:
    """`(lora steps by precision, frozen-base steps by precision)` for one shape."""
    torch.manual_seed(0)
    config = GPTConfig.from_name(preset)
    base = GPT(config).requires_grad_(False)
    lora = mark_only_lora_as_trainable(inject_lora(copy.deepcopy(base), LORA, clients))
    with torch.no_grad():
        for p in lora.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    optimizer = adamw(lora.named_parameters(), 1e-4, 1e-3)
    base.transformer.drop.register_forward_hook(lambda module, inputs, out: out.detach().requires_grad_())
    data = torch.randint(0, config.vocab_size, (clients, batch, seq + 1))
    x, y = data[..., :-1], data[..., 1:]
    seeds = client_seeds(0, range(clients), 0)

    def step(model: GPT, bf16: bool, train: bool) -> Step:
        def run() -> None:
            with precision(bf16):
                hidden = model.hidden_states(x, ClientSlice(0, clients, seeds) if train else None)
                loss, _ = fused_linear_cross_entropy(hidden, model.lm_head.weight, y)
            loss.backward()
            if train:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        return run

    names = {False: "fp32", True: "bf16"}
    return (
        {names[b]: step(lora, b, True) for b in (False, True)},
        {names[b]: step(base, b, False) for b in (False, True)},
    )


def measure(steps: dict[str, Step], reps: int) -> dict[str, float]:
    """Median seconds per step of each variant, the variants interleaved round by round."""
    for step in steps.values():
        step()  # warm-up: allocator, optimizer state
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def rows(title: str, seconds: dict[str, float], tokens: int) -> list[str]:
    first = next(iter(seconds.values()))
    return [
        f"| {title} | {name} | {1000 * s:.0f} | {tokens / s:,.0f} | {first / s:.2f}x |" for name, s in seconds.items()
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5, help="interleaved rounds per row")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="tiny shapes, 2 rounds")
    p.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = p.parse_args()
    flush_denormals()
    micro, gpt2, reps, seq = ("gpt2-tiny", "gpt2-tiny", 2, 32) if args.quick else ("gpt2-micro", "gpt2", args.reps, 128)
    if not native_bf16("cpu"):
        print("note: this CPU has no native bfloat16; the bf16 rows are emulated and slow.")
    head = [
        f"# CPU step speed, float32 vs bfloat16 ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, median of {reps} interleaved rounds)",
        "",
        "| row | variant | ms/step | tokens/s | vs the row's first |",
        "|---|---|---|---|---|",
    ]
    lines = list(head)
    print("\n".join(head), flush=True)

    def emit(new: list[str]) -> None:
        lines.extend(new)
        print("\n".join(new), flush=True)

    emit(rows(f"pretraining, {micro}, 16 x {seq}", measure(pretraining_steps(micro, 16, seq), reps), 16 * seq))
    overheads = []
    for preset in (micro, gpt2):
        tokens = args.clients * 2 * seq
        lora_steps, base_steps = collaborative_steps(preset, args.clients, 2, seq)
        lora_s = measure(lora_steps, reps)
        emit(rows(f"collaborative step, {preset}, N={args.clients} x 2 x {seq}", lora_s, tokens))
        base_s = measure(base_steps, reps)
        for name in ("fp32", "bf16"):
            overheads.append(
                f"| LoRA overhead, {preset} | {name}: LoRA step / frozen-base step | "
                f"{1000 * lora_s[name]:.0f} / {1000 * base_s[name]:.0f} | | "
                f"{lora_s[name] / base_s[name]:.2f}x |"
            )
    emit(overheads)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
