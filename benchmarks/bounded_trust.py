"""Bounded-cost trust scoring against full scoring, in the training loop: time of an aggregation and
how much of each client's trust stays on clients of its own category.

`offline_multi_specific` split for 32 clients (French, German, Italian prose: each client one
category), the offline base (`data.offline_base`, pretrained on other offline text), and for each of
`dynamic-ref` and `dynamic-token` two runs from the same seed: full scoring (every pair, N² scores)
and `--trust_peers 8` (each client itself and 8 candidates: 6 by the previous trust row, or the
adapters' similarity before the first aggregation, and 2 at random; N * 9 scores). Every run is
`collab.fit`'s module, data module and aggregation callback under Lightning, one thread; the table
gives every aggregation's seconds (scoring, trust, new adapters) and same-category share (the mean
share of a row's trust on clients of its own category, itself included: 1 is perfect; the table
states uniform's), and, since a row can be all self-trust, the mean self weight and the
same-category share of the weight given to others.

    python benchmarks/bounded_trust.py --out benchmarks/results/bounded_trust_cpu.md
    python benchmarks/bounded_trust.py --quick     # 8 clients, m=2, 6 steps: a smoke run
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from collab.aggregation import TrustAggregation
from collab.config import MemoryConfig, OptimConfig
from collab.module import CollabLoRAModule
from collab.trust import TrustSettings
from data import ClientDataModule, prepare_recipe
from data.config import DataConfig
from data.offline_base import offline_base
from lora_gpt import GPT, LoRAConfig
from lora_gpt.precision import flush_denormals, resolve_precision

RECIPE = "offline_multi_specific"


class TimedAggregation(TrustAggregation):
    """The aggregation callback, timing every round and keeping its same-category share."""

    def __init__(self, *, settings: TrustSettings, seed: int) -> None:
        super().__init__(settings=settings, seed=seed)
        self.timed: list[dict[str, Any]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        due = self.due(step)
        start = time.perf_counter()
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not due or self.rounds is None or self.rounds.prior is None:
            return
        seconds = time.perf_counter() - start
        record, trust = self.history[-1], self.rounds.prior
        main = torch.as_tensor(trainer.datamodule.mixture).argmax(1)
        others = trust * (1 - torch.eye(len(trust)))
        same = main[:, None] == main[None, :]
        self.timed.append(
            {
                "step": step,
                "seconds": seconds,
                "same_category": record["quality"]["same_category"],
                "self": float(trust.diagonal().mean()),
                "others_same": float((others * same).sum() / others.sum().clamp_min(1e-12)),
                "scored": record.get("scored", pl_module.num_clients**2),
            }
        )


def run(args: argparse.Namespace, folder: Path, strategy: str, peers: int) -> list[dict[str, Any]]:
    """One training run; its aggregation rounds."""
    L.seed_everything(args.seed, verbose=False)
    data = ClientDataModule(
        folder=folder, config=DataConfig(batch_size=args.batch, sequence_length=128, eval_batches=1), seed=args.seed
    )
    module = CollabLoRAModule(
        base=GPT.from_pretrained(offline_base(progress=False)),
        lora=LoRAConfig(),
        optim=OptimConfig(iterations=args.steps, lr=args.lr),
        num_clients=data.num_clients,
        seed=args.seed,
        memory=MemoryConfig(client_chunk=8),
    )
    settings = TrustSettings(strategy=strategy, trust_freq=args.every, pretraining_rounds=args.every, peers=peers)
    aggregation = TimedAggregation(settings=settings, seed=args.seed)
    trainer = L.Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        precision=resolve_precision("auto", "cpu"),
        logger=False,
        callbacks=[aggregation],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data)
    return aggregation.timed


def mean(rounds: list[dict[str, Any]], key: str) -> float:
    return sum(r[key] for r in rounds) / len(rounds)


def uniform_share(folder: Path) -> float:
    """The same-category share of uniform trust (naive): the mean share of clients in one's own category."""
    main = ClientDataModule(folder=folder, config=DataConfig()).mixture.argmax(1)
    return float((main[:, None] == main[None, :]).mean())


def report(args: argparse.Namespace, results: dict[tuple[str, int], list[dict[str, Any]]], uniform: float) -> str:
    precision = resolve_precision("auto", "cpu")
    lines = [
        f"# Bounded-cost trust scoring against full scoring, {args.clients} clients, on "
        f"{platform.machine()} (CPU, 1 thread)",
        "",
        f"`python benchmarks/bounded_trust.py`: `{RECIPE}` split for {args.clients} clients (seed {args.seed}), "
        f"the offline base (cached at ~/.cache/lora_gpt), LoRA r=4 on attention and MLP, {precision}, "
        f"{args.batch} x 128 tokens per client and step, lr {args.lr}, {args.steps} steps, aggregation every "
        f"{args.every} steps from step {args.every}; trust data: one batch per client (dynamic-ref), the "
        "shared reference text: one batch (dynamic-token); the paper's scores (minus perplexity, top-probs "
        "distances). Each row is its own run from the same seed. The machine (2 cores) was shared with other "
        f"jobs, so times may be inflated; each pair of runs ran back to back. Uniform trust's same-category "
        f"share here: {uniform:.3f}.",
        "",
        "| strategy | scoring | pairs scored per aggregation | seconds per aggregation (each round) | mean s | "
        "same-category share (each round) | mean share | mean self weight | same-category share of the weight "
        "on others |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (strategy, peers), rounds in results.items():
        seconds = [r["seconds"] for r in rounds]
        shares = [r["same_category"] for r in rounds]
        lines.append(
            f"| {strategy} | {f'm={peers}' if peers else 'full'} | {rounds[-1]['scored']} | "
            + ", ".join(f"{s:.1f}" for s in seconds)
            + f" | {sum(seconds) / len(seconds):.1f} | "
            + ", ".join(f"{s:.3f}" for s in shares)
            + f" | {sum(shares) / len(shares):.3f} | "
            + f"{mean(rounds, 'self'):.3f} | {mean(rounds, 'others_same'):.3f} |"
        )
    lines += [
        "",
        "| strategy | bounded / full time | bounded / full same-category share (mean) | target >= 0.90 |",
        "|---|---|---|---|",
    ]
    for strategy in args.strategies:
        full, bounded = results[(strategy, 0)], results[(strategy, args.peers)]
        time_ratio = sum(r["seconds"] for r in bounded) / sum(r["seconds"] for r in full)
        share = sum(r["same_category"] for r in bounded) / sum(r["same_category"] for r in full)
        lines.append(f"| {strategy} | {time_ratio:.2f} | {share:.3f} | {'met' if share >= 0.9 else 'missed'} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--peers", type=int, default=8, help="m of the bounded runs")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--every", type=int, default=10, help="aggregate every this many steps, from this step on")
    p.add_argument("--batch", type=int, default=2, help="sequences per client and step")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategies", nargs="+", default=["dynamic-ref", "dynamic-token"])
    p.add_argument("--quick", action="store_true", help="8 clients, m=2, 6 steps: a smoke run")
    p.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = p.parse_args()
    if args.quick:
        args.clients, args.peers, args.steps, args.every = 8, 2, 6, 3
    torch.set_num_threads(1)
    flush_denormals()
    folder = prepare_recipe(RECIPE, num_clients=args.clients, seed=args.seed, progress=False)
    results = {}
    for strategy in args.strategies:
        for peers in (0, args.peers):
            results[(strategy, peers)] = run(args, folder, strategy, peers)
            print(strategy, peers, results[(strategy, peers)], flush=True)
    text = report(args, results, uniform_share(folder))
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
