"""The main job on the embedded default: what trust buys clients whose data differ.

Builds (or reuses) the offline three-language dataset and the offline base model, fine-tunes
the same clients with each strategy (same seed, so every strategy sees identical batches),
then prints the final validation perplexity of every client per strategy and writes two
plots: per-client validation perplexity against step, and the last dynamic trust matrix.

    python scripts/demo.py                       # none, naive, static, dynamic
    python scripts/demo.py --strategies none naive static dynamic dynamic-ref
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from collab.cli import build_parser, fit_config
from collab.fit import run
from collab.report import client_table, load_summaries, plot_client_curves, plot_trust_heatmap, run_strategy
from collab.run_folder import RunFolder, run_dir
from collab.trust import Strategy
from lora_gpt.errors import FixableError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", nargs="+", default=["none", "naive", "static", "dynamic"])
    p.add_argument("--dataset", default="offline_multi_specific")
    p.add_argument("--num_clients", type=int, default=6)
    p.add_argument("--iterations", type=int, default=60)
    p.add_argument("--batch_size", type=int, default=2, help="sequences per client per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    args, fit_extra = p.parse_known_args(argv)
    try:
        strategies = [Strategy.parse(s).name for s in args.strategies]
    except ValueError as err:
        p.exit(2, f"error: {err}\n")
    start = time.time()
    folders = [RunFolder(run_dir(args.out, args.dataset, s, args.seed, args.num_clients)) for s in strategies]
    try:
        for strategy, folder in zip(strategies, folders):
            if folder.finished():
                print(f"{strategy}: finished earlier, reusing {folder.path}")
                continue
            print(f"\n=== {strategy} ===", flush=True)
            run(fit_config(build_parser().parse_args(
                ["--trust", strategy, "--dataset", args.dataset, "--num_clients", str(args.num_clients),
                 "--iterations", str(args.iterations), "--batch_size", str(args.batch_size), "--seed", str(args.seed),
                 "--out", str(folder.path), *fit_extra])))
    except FixableError as err:
        p.exit(2, f"error: {err}\n")
    ordered = [load_summaries(folder.path)[0] for folder in folders]
    print(f"\nFinal validation perplexity per client ({args.dataset}, {args.num_clients} clients, "
          f"{args.iterations} steps of {args.batch_size} sequences per client, seed {args.seed}); lower is better:\n")
    print(client_table(ordered))
    curves = plot_client_curves(ordered, args.out / "client_curves.png")
    heat_source = next((r for r in reversed(ordered) if run_strategy(r).startswith("dynamic")), ordered[-1])
    heatmap = plot_trust_heatmap(heat_source, args.out / "trust_heatmap.png")
    print(f"\nplots: {curves}" + (f", {heatmap}" if heatmap else ""))
    print(f"total time {(time.time() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
