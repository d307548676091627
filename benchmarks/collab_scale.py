"""Collaborative training as the number of clients N grows: peak memory, training tokens/s, and
the time of one aggregation of every trust strategy, beside the reference design's N model copies.

Two shapes: the offline base's (`gpt2-micro`, N in 8 32 128, 4 sequences of 128 tokens per client
and step, 8 clients per pass) and GPT-2 124M's (N in 8 32 64, 1 sequence of 128, 2 clients per
pass); random weights and random tokens (speed and memory do not depend on them), LoRA r=4,
alpha 32 on attention and MLP, bf16-mixed where the CPU has native bfloat16, one thread. Every
point runs in a fresh process, so its peak memory (peak RSS, `getrusage`) is its own:

- `collab`: `collab.fit`'s module under Lightning, a warm-up step then timed steps (tokens/s);
  peak RSS after training; then one validation and one aggregation of each strategy through
  the trust round (`dynamic-ref` and `dynamic-token` also with `--trust_peers 8`), on one
  batch of trust data per client and one of shared reference text; peak RSS after all of it.
- `live`: the same training alone with glibc's mmap threshold fixed at 128 KiB
  (`MALLOC_MMAP_THRESHOLD_`), so that freed blocks go back to the system and peak RSS follows the
  memory really in use: with glibc's default, heap fragmentation from the per-pass activations
  adds to the peak, and at the offline shape that noise is larger than a client's adapter state.
  The growth per added client is read from these peaks, against a client's adapter and AdamW
  moments.
  `dynamic-ref` costs one evaluation per scored pair: its time per pair is measured on a probe of
  pairs at that N, and where pairs x that time exceeds `--max_seconds` the aggregation is not run
  and its time is that product, marked extrapolated.
- `copies`: the reference design, N full model copies each with its adapter and AdamW, trained one
  after another with the same head loss and precision. Its memory per copy is measured at 1 and 4
  copies; it is run at a table's N while that predicts under `--copies_limit_gb`, and the N where
  it would pass 24 GB is stated.

    python benchmarks/collab_scale.py --out benchmarks/results/collab_scale_cpu.md
    python benchmarks/collab_scale.py --quick      # gpt2-tiny, N in 2 4: a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from numpy.typing import ArrayLike
from torch.utils.data import DataLoader, IterableDataset

from collab.config import MemoryConfig, OptimConfig
from collab.module import CollabLoRAModule
from collab.trust import BatchedMeasurements, TrustRounds, TrustSettings
from lora_gpt import GPT, GPTConfig, LoRAConfig, inject_lora, mark_only_lora_as_trainable
from lora_gpt.cross_entropy import fused_linear_cross_entropy
from lora_gpt.lora import ATTENTION_TARGETS, MLP_TARGETS
from lora_gpt.precision import Precision, flush_denormals, resolve_precision
from lora_gpt.training import adamw

LORA = LoRAConfig(rank=4, alpha=32, dropout=0.1, targets=ATTENTION_TARGETS + MLP_TARGETS, kernel="torch", init_seed=0)
CATEGORIES = 4
BOUNDED_PEERS = 8
GB = 2**30
LIVE_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072"}  # the `live` points: RSS follows the memory in use
STRATEGIES: dict[str, dict[str, Any]] = {  # column -> trust settings
    "naive": {"strategy": "naive"},
    "static": {"strategy": "static"},
    "dynamic": {"strategy": "dynamic"},
    "dynamic-ref": {"strategy": "dynamic-ref"},
    f"dynamic-ref m={BOUNDED_PEERS}": {"strategy": "dynamic-ref", "peers": BOUNDED_PEERS},
    "dynamic-token": {"strategy": "dynamic-token"},
    f"dynamic-token m={BOUNDED_PEERS}": {"strategy": "dynamic-token", "peers": BOUNDED_PEERS},
}


@dataclass(frozen=True)
class Shape:
    """A model shape and how a CPU user would run it."""

    preset: str
    clients: tuple[int, ...]
    batch: int  # sequences per client per step (and in the trust and reference batches)
    chunk: int  # clients per pass
    seq: int = 128


SHAPES = {
    "offline base (gpt2-micro)": Shape("gpt2-micro", (8, 32, 128), batch=4, chunk=8),
    "GPT-2 124M (gpt2)": Shape("gpt2", (8, 32, 64), batch=1, chunk=2),
}
QUICK = {"tiny (gpt2-tiny)": Shape("gpt2-tiny", (2, 4), batch=2, chunk=2, seq=32)}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class RandomClients(L.LightningDataModule):
    """Random tokens in the shape of `data.ClientDataModule`'s batches; client n of category n % 4."""

    def __init__(self, num_clients: int, shape: Shape, vocab_size: int) -> None:
        super().__init__()
        self.num_clients, self.shape, self.vocab_size = num_clients, shape, vocab_size
        self.mixture: ArrayLike = np.eye(CATEGORIES)[np.arange(num_clients) % CATEGORIES]

    def batch(self, seed: int, *leading: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(0, self.vocab_size, (*leading, self.shape.batch, self.shape.seq + 1), generator=generator)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Endless(self), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader([self.batch(1, self.num_clients)], batch_size=None)  # type: ignore[arg-type]

    def trust_batches(self, num_batches: int | None = None) -> list[torch.Tensor]:
        return [self.batch(2, self.num_clients)]

    def ref_batches(self, num_batches: int | None = None) -> list[torch.Tensor]:
        return [self.batch(3)]


class _Endless(IterableDataset):
    def __init__(self, data: RandomClients) -> None:
        self.data = data

    def __iter__(self) -> Iterator[torch.Tensor]:
        t = 100
        while True:
            yield self.data.batch(t, self.data.num_clients)
            t += 1


class StepTimer(L.Callback):
    """Seconds of every training step."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.start = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self.seconds.append(time.perf_counter() - self.start)


def adapter_state_bytes(module: CollabLoRAModule) -> int:
    """One client's adapter and its AdamW moments (three float32 values per adapter parameter)."""
    return sum(p[0].numel() * p.element_size() * 3 for p in module.adapters().values())


def pair_seconds(module: CollabLoRAModule, data: RandomClients, probe: int) -> float:
    """Seconds of dynamic-ref's evaluation of one (data, adapter) pair, from `probe` random pairs
    (after one pass of warm-up)."""
    n = module.num_clients
    order = torch.randperm(n * n, generator=torch.Generator().manual_seed(0))
    pairs = [
        torch.zeros(n * n, dtype=torch.bool).index_fill_(0, part, True).view(n, n)
        for part in (order[: module.client_chunk], order[:probe])
    ]
    module.pair_losses(data.trust_batches(), pairs[0])
    start = time.perf_counter()
    module.pair_losses(data.trust_batches(), pairs[1])
    return (time.perf_counter() - start) / probe


def time_aggregations(module: CollabLoRAModule, data: RandomClients, max_seconds: float) -> dict[str, Any]:
    """Seconds of one aggregation per strategy; dynamic-ref's extrapolated where it would take too long."""
    n = module.num_clients
    per_pair = pair_seconds(module, data, min(n * n, 4 * module.client_chunk))
    out: dict[str, Any] = {"pair_seconds": per_pair}
    for column, options in STRATEGIES.items():
        settings = TrustSettings(**options)
        pairs = n * min(n, settings.peers + 1) if settings.peers else n * n
        if settings.family == "dynamic-ref" and pairs * per_pair > max_seconds:
            out[column] = {"seconds": pairs * per_pair, "extrapolated": True, "pairs": pairs}
            continue
        rounds = TrustRounds(settings, n, seed=0)
        start = time.perf_counter()
        outcome = rounds.run(10, BatchedMeasurements(module, data, settings.eval_chunk))
        module.replace_adapters(outcome.adapters, reset=~outcome.usable)
        out[column] = {"seconds": time.perf_counter() - start, "extrapolated": False, "pairs": pairs}
    return out


def measure_collab(
    shape: Shape, n: int, steps: int, precision: Precision, max_seconds: float, scoring: bool = True
) -> dict[str, Any]:
    config = GPTConfig.from_name(shape.preset)
    module = CollabLoRAModule(
        base=GPT(config),
        lora=LORA,
        optim=OptimConfig(iterations=steps),
        num_clients=n,
        memory=MemoryConfig(client_chunk=shape.chunk),
    )
    data = RandomClients(n, shape, config.vocab_size)
    timer = StepTimer()
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        precision=precision,
        logger=False,
        callbacks=[timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data)
    step_s = float(np.median(timer.seconds[1:]))  # the first step warms up
    train_peak = peak_rss_mb()
    if not scoring:
        return {"mode": "live", "N": n, "train_peak_mb": train_peak, "client_state_bytes": adapter_state_bytes(module)}
    L.Trainer(
        accelerator="cpu", precision=precision, logger=False, enable_progress_bar=False, enable_model_summary=False
    ).validate(module, datamodule=data, verbose=False)
    aggregations = time_aggregations(module, data, max_seconds)
    return {
        "mode": "collab",
        "N": n,
        "step_s": step_s,
        "tokens_per_s": n * shape.batch * shape.seq / step_s,
        "train_peak_mb": train_peak,
        "peak_mb": peak_rss_mb(),
        "aggregations": aggregations,
        "client_state_bytes": adapter_state_bytes(module),
    }


def measure_copies(shape: Shape, n: int, precision: Precision) -> dict[str, Any]:
    """The reference design: N models, each its own base copy, adapter and optimizer, one after another."""
    config = GPTConfig.from_name(shape.preset)
    models = [mark_only_lora_as_trainable(inject_lora(GPT(config), LORA)) for _ in range(n)]
    optimizers = [adamw(m.named_parameters(), 1e-3, 1e-3) for m in models]
    data = RandomClients(n, shape, config.vocab_size).batch(100, n)
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16-mixed")

    def step() -> None:
        for model, optimizer, batch in zip(models, optimizers, data, strict=True):
            with autocast:
                loss = fused_linear_cross_entropy(
                    model.hidden_states(batch[:, :-1]), model.lm_head.weight, batch[:, 1:]
                )[0]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocator, optimizer state
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    return {
        "mode": "copies",
        "N": n,
        "step_s": seconds,
        "tokens_per_s": n * shape.batch * shape.seq / seconds,
        "peak_mb": peak_rss_mb(),
    }


def run_child(args: argparse.Namespace, shape: Shape, mode: str, n: int) -> dict[str, Any]:
    """One point in a fresh process, one thread."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        json.dumps({"shape": asdict(shape), "mode": mode, "N": n}),
        "--steps",
        str(args.steps),
        "--max_seconds",
        str(args.max_seconds),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(LIVE_MALLOC if mode == "live" else {})}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {shape.preset} {mode} N={n}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def child(spec: dict[str, Any], steps: int, max_seconds: float) -> dict[str, Any]:
    torch.set_num_threads(1)
    flush_denormals()
    shape = Shape(**{**spec["shape"], "clients": tuple(spec["shape"]["clients"])})
    precision = resolve_precision("auto", "cpu")
    if spec["mode"] == "copies":
        return measure_copies(shape, spec["N"], precision)
    return measure_collab(shape, spec["N"], steps, precision, max_seconds, scoring=spec["mode"] == "collab")


def measure_shape(args: argparse.Namespace, shape: Shape) -> dict[str, Any]:
    """Every point of one shape: this design at each N, the copies where they fit (else predicted)."""
    small = [run_child(args, shape, "copies", n) for n in (1, 4)]
    per_copy = (small[1]["peak_mb"] - small[0]["peak_mb"]) / 3
    fixed = small[0]["peak_mb"] - per_copy
    points = []
    for n in shape.clients:
        copies: dict[str, Any] = {"predicted_mb": fixed + per_copy * n}
        if copies["predicted_mb"] < args.copies_limit_gb * 1024:
            copies.update(run_child(args, shape, "copies", n))
        points.append(
            {"collab": run_child(args, shape, "collab", n), "live": run_child(args, shape, "live", n), "copies": copies}
        )
    return {
        "shape": asdict(shape),
        "per_copy_mb": per_copy,
        "copies_fixed_mb": fixed,
        "copies_pass_24gb_at": math.ceil((24 * 1024 - fixed) / per_copy),
        "points": points,
    }


def growth(result: dict[str, Any], mode: str, key: str) -> tuple[float, float]:
    """MiB per added client (least squares over the N measured) and its ratio to a client's adapter + AdamW state."""
    ns = np.array([p[mode]["N"] for p in result["points"]], dtype=float)
    peaks = np.array([p[mode][key] for p in result["points"]])
    per_client = float(np.polyfit(ns, peaks, 1)[0])
    return per_client, per_client * 2**20 / result["points"][0]["collab"]["client_state_bytes"]


def cell(entry: dict[str, Any]) -> str:
    return f"~{entry['seconds']:,.0f}*" if entry["extrapolated"] else f"{entry['seconds']:.2f}"


def table(name: str, result: dict[str, Any]) -> list[str]:
    shape = result["shape"]
    lines = [
        f"### {name}: {shape['batch']} x {shape['seq']} tokens per client and step, {shape['chunk']} clients per pass",
        "",
        "| N | peak MB (training) | live MB (training) | peak MB (with aggregations) | tokens/s | copies: peak MB "
        "| copies: tokens/s | " + " | ".join(f"{s} (s)" for s in STRATEGIES) + " |",
        "|" + "---|" * (7 + len(STRATEGIES)),
    ]
    for point in result["points"]:
        c, copies = point["collab"], point["copies"]
        if "peak_mb" in copies:
            copy_cells = f"{copies['peak_mb']:,.0f} | {copies['tokens_per_s']:,.0f}"
        else:
            copy_cells = f"~{copies['predicted_mb']:,.0f} (predicted, not run) | -"
        lines.append(
            f"| {c['N']} | {c['train_peak_mb']:,.0f} | {point['live']['train_peak_mb']:,.0f} | "
            f"{c['peak_mb']:,.0f} | {c['tokens_per_s']:,.0f} | "
            f"{copy_cells} | " + " | ".join(cell(c["aggregations"][s]) for s in STRATEGIES) + " |"
        )
    live, default, total = (
        growth(result, m, k) for m, k in (("live", "train_peak_mb"), ("collab", "train_peak_mb"), ("collab", "peak_mb"))
    )
    state_mib = result["points"][0]["collab"]["client_state_bytes"] / 2**20
    lines += [
        "",
        f"- Growth per added client (least squares over N; MiB as in the table): live {live[0]:.2f} MiB = "
        f"**{live[1]:.2f}x** a client's adapter + AdamW moments ({state_mib:.3f} MiB, float32; its gradient "
        f"adds 1/3 more while a step runs, so 1.33x is the floor); peak RSS with glibc's default "
        f"{default[0]:.2f} MiB ({default[1]:.2f}x) in training, {total[0]:.2f} MiB ({total[1]:.2f}x) with "
        "the aggregations.",
        f"- Copies: {result['per_copy_mb']:,.0f} MB per copy (measured at 1 and 4 copies), so N copies pass "
        f"24 GB at N = {result['copies_pass_24gb_at']}.",
        "- dynamic-ref per pair: "
        + ", ".join(
            f"{p['collab']['aggregations']['pair_seconds'] * 1e3:.0f} ms at N={p['collab']['N']}"
            for p in result["points"]
        )
        + ".",
    ]
    return lines


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(10, 3.6 * len(results)), squeeze=False)
    for row, (name, result) in zip(axes, results.items(), strict=True):
        points = result["points"]
        ns = [p["collab"]["N"] for p in points]
        row[0].plot(ns, [p["collab"]["peak_mb"] / 1024 for p in points], "o-", label="this design (peak RSS)")
        row[0].plot(ns, [p["live"]["train_peak_mb"] / 1024 for p in points], "^:", label="this design (live)")
        copies = [
            (n, p["copies"].get("peak_mb", p["copies"]["predicted_mb"]) / 1024) for n, p in zip(ns, points, strict=True)
        ]
        (line,) = row[0].plot(*zip(*copies, strict=True), "--", label="N copies (hollow: predicted)")
        for (n, gb), p in zip(copies, points, strict=True):
            row[0].plot(
                n,
                gb,
                "s",
                color=line.get_color(),
                markerfacecolor="none" if "peak_mb" not in p["copies"] else line.get_color(),
            )
        row[0].axhline(24, color="grey", lw=0.8)
        row[0].set_title(f"{name}: peak memory (24 GB line)", fontsize=9)
        row[0].set(xlabel="clients N", ylabel="GB", xscale="log", yscale="log")
        for s in STRATEGIES:
            times = [p["collab"]["aggregations"][s] for p in points]
            (line,) = row[1].plot(ns, [t["seconds"] for t in times], "o-", label=s, ms=4)
            extra = [(n, t["seconds"]) for n, t in zip(ns, times, strict=True) if t["extrapolated"]]
            if extra:
                row[1].plot(*zip(*extra, strict=True), "o", color=line.get_color(), markerfacecolor="white", ms=7)
        row[1].set_title(f"{name}: one aggregation (hollow: extrapolated)", fontsize=9)
        row[1].set(xlabel="clients N", ylabel="seconds", xscale="log", yscale="log")
        for ax in row:
            ax.set_xticks(ns, [str(n) for n in ns])
            ax.minorticks_off()
        row[0].legend(fontsize=7)
        row[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=70)


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"# Collaborative training as N grows, on {platform.processor() or platform.machine()} "
        f"(CPU, 1 thread per process)",
        "",
        "`python benchmarks/collab_scale.py` (one process per point; peak RSS of that process). Random weights "
        "and tokens; LoRA r=4, alpha 32 on attention and MLP; " + resolve_precision("auto", "cpu") + "; "
        f"{args.steps} training steps per point (the first a warm-up); the trust data: one batch per client, "
        "the shared reference text: one batch. The machine (2 cores, 24 GB) was shared with other jobs, so "
        "times may be inflated by contention; memory is unaffected.",
        "",
        f"Aggregation columns: seconds of one aggregation (scoring, trust, new adapters); m={BOUNDED_PEERS}: "
        f"`--trust_peers {BOUNDED_PEERS}`. Cells marked ~...* are **extrapolated**, not measured: dynamic-ref "
        f"scored pairs x the time of one pair measured at that N, where running it would take over "
        f"{args.max_seconds:.0f} s.",
        "",
    ]
    for name, result in results.items():
        lines += table(name, result) + [""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2, help="training steps per point (the first is a warm-up)")
    p.add_argument("--max_seconds", type=float, default=240.0, help="longest dynamic-ref aggregation run for real")
    p.add_argument("--copies_limit_gb", type=float, default=10.0, help="run N copies only where predicted below this")
    p.add_argument("--quick", action="store_true", help="gpt2-tiny, N in 2 4: a smoke run")
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here (and a .png and .json beside)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child), args.steps, args.max_seconds)))
        return
    results = {name: measure_shape(args, shape) for name, shape in (QUICK if args.quick else SHAPES).items()}
    text = report(results, args)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
        plot(results, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
