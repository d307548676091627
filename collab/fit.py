"""`python -m collab.fit`: collaborative LoRA fine-tuning of N simulated clients.

Every client fine-tunes its own adapter on its own data over one shared frozen base, and every
`--trust_freq` steps (after `--pretraining_rounds` local steps) each client's adapter becomes a
trust-weighted average of all adapters. Option names follow the paper's code. Defaults suit
the embedded offline default on a CPU; README.md gives the paper's GPU settings.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch

from lora_gpt import LoRAConfig, save_adapters
from lora_gpt.lora import INITS, KERNELS
from lora_gpt.precision import PRECISIONS, resolve_precision

from .aggregation import TrustAggregation
from .module import CollabLoRAModule
from .report import SUMMARY_FILE
from .trust import (ALIASES, PEER_LOSS_SCORES, SIMILARITIES, STATIC_RULES, STRATEGIES, TOKEN_DISTANCES, Strategy,
                    TrustSettings)

DEFAULT_DATASET = "offline_multi_specific"
RUN_OPTIONS_FILE = "options.json"
# Options that may differ between a run and its resume without changing what it computes.
RESUME_FREE = {"out", "accelerator", "devices", "logger", "progress", "client_chunk", "eval_chunk", "loss_chunk"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m collab.fit", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("collaboration")
    g.add_argument("--trust", default="dynamic",
                   help=f"trust strategy: {', '.join(STRATEGIES)}; short names "
                        f"{', '.join(f'{k}={v}' for k, v in ALIASES.items())}")
    g.add_argument("--num_clients", type=int, default=None, help="clients (default: the dataset's own count)")
    g.add_argument("--trust_freq", type=int, default=10, help="aggregate every this many steps")
    g.add_argument("--pretraining_rounds", type=int, default=20, help="local-only steps before the first aggregation")
    g.add_argument("--k", type=int, default=3, help="peers kept by the -top-k variants")
    g.add_argument("--thresh", type=float, default=None,
                   help="score threshold of the -thresh variants (default: the strategy's own)")
    g.add_argument("--trust_temperature", type=float, default=1.0, help=trust_help("temperature"))
    g.add_argument("--similarity", choices=tuple(SIMILARITIES), default="peft-rows", help=trust_help("similarity"))
    g.add_argument("--ref_score", choices=tuple(PEER_LOSS_SCORES), default="perplexity", help=trust_help("ref_score"))
    g.add_argument("--token_distance", choices=tuple(TOKEN_DISTANCES), default="top-probs",
                   help=trust_help("token_distance"))
    g.add_argument("--token_top_k", type=int, default=None, help=trust_help("token_top_k"))
    g.add_argument("--static_rule", choices=tuple(STATIC_RULES), default="overlap", help=trust_help("static_rule"))

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=DEFAULT_DATASET, help="recipe name, or a folder / CSV / JSONL of your own")
    g.add_argument("--data_dir", type=Path, default=None, help="an already prepared dataset folder (skips preparation)")
    for split in ("train", "val", "trust", "ref"):
        g.add_argument(f"--{split}_tokens", type=int, default=None,
                       help=f"{split} tokens per client{' (per category for ref)' if split == 'ref' else ''} "
                            "when preparing the dataset (default: the recipe's)")
    g.add_argument("--batch_size", type=int, default=4, help="sequences per client per micro-step")
    g.add_argument("--acc_steps", type=int, default=1, help="micro-steps accumulated per optimizer step")
    g.add_argument("--sequence_length", type=int, default=128, help="tokens per training sequence")
    g.add_argument("--eval_batches", type=int, default=4, help="validation batches per client per evaluation")

    g = p.add_argument_group("model")
    g.add_argument("--init", default="offline",
                   help="base model: 'offline' (this project's pretrained base, built on first use), "
                        "a GPT-2 hub name (gpt2, gpt2-medium, ...) or a folder with config.json + model.safetensors")
    g.add_argument("--dropout", type=float, default=0.0, help="dropout in the frozen base while training")
    g.add_argument("--lora_rank", type=int, default=4)
    g.add_argument("--lora_alpha", type=float, default=32.0)
    g.add_argument("--lora_dropout", type=float, default=0.1)
    g.add_argument("--lora_init", choices=INITS, default="peft",
                   help="A's init: LoRA's and PEFT's U(+-1/sqrt(d_in)), shared by all clients, or the reference "
                        "code's U(+-1/sqrt(r)), drawn per client")
    g.add_argument("--lora_mlp", action=argparse.BooleanOptionalAction, default=True, help="adapt the MLP")
    g.add_argument("--lora_causal_self_attention", action=argparse.BooleanOptionalAction, default=True,
                   help="adapt the attention projections")
    g.add_argument("--kernel", choices=KERNELS, default="auto", help="LoRA matmul: fused Triton kernel or PyTorch")

    g = p.add_argument_group("optimisation")
    g.add_argument("--iterations", type=int, default=100, help="optimizer steps")
    g.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the OneCycle schedule")
    g.add_argument("--warmup_percent", type=float, default=0.02)
    g.add_argument("--weight_decay", type=float, default=1e-3)
    g.add_argument("--grad_clip", type=float, default=0.0, help="clip each client's gradient norm (0: off)")
    g.add_argument("--seed", type=int, default=0)

    g = p.add_argument_group("run")
    g.add_argument("--eval_freq", type=int, default=20, help="evaluate every client every this many steps")
    g.add_argument("--out", type=Path, default=None, help="output folder (default runs/DATASET/TRUST/seedSEED)")
    g.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    g.add_argument("--devices", default="1")
    g.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16-mixed where bfloat16 is native (GPUs, CPUs with avx512_bf16/amx), else 32-true")
    g.add_argument("--client_chunk", type=int, default=None,
                   help="clients per forward/backward pass (default all): lower it to cap memory")
    g.add_argument("--loss_chunk", type=int, default=None,
                   help="tokens whose full-vocabulary logits exist at once in the loss (default: ~16M logits)")
    g.add_argument("--eval_chunk", type=int, default=None, help="adapters per pass when scoring trust (default client_chunk)")
    g.add_argument("--logger", choices=("csv", "tensorboard", "wandb"), default="csv")
    g.add_argument("--ckpt_freq", type=int, default=None, help="checkpoint every this many steps (default eval_freq)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    return p


def trust_help(name: str) -> str:
    """The help of a trust option, written once beside its field in `TrustSettings`."""
    return TrustSettings.__dataclass_fields__[name].metadata["help"]


def trust_settings(args: argparse.Namespace) -> TrustSettings:
    return TrustSettings(strategy=args.trust, trust_freq=args.trust_freq, pretraining_rounds=args.pretraining_rounds,
                         k=args.k, threshold=args.thresh, temperature=args.trust_temperature,
                         similarity=args.similarity, ref_score=args.ref_score, token_distance=args.token_distance,
                         token_top_k=args.token_top_k, static_rule=args.static_rule, eval_chunk=args.eval_chunk)


def validate(args: argparse.Namespace) -> None:
    """Fail before any work, naming the option and the fix."""
    resolve_precision(args.precision, device_type(args.accelerator))
    positive = ["trust_freq", "k", "batch_size", "acc_steps", "eval_batches", "lora_rank",
                "iterations", "eval_freq"]
    for name in positive:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}.")
    for name in ("num_clients", "client_chunk", "eval_chunk", "ckpt_freq", "loss_chunk", "token_top_k"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}.")
    if args.pretraining_rounds < 0:
        raise ValueError(f"--pretraining_rounds must be >= 0, got {args.pretraining_rounds}.")
    if args.sequence_length < 2:
        raise ValueError(f"--sequence_length must be >= 2, got {args.sequence_length}.")
    for name in ("dropout", "lora_dropout"):
        if not 0.0 <= getattr(args, name) < 1.0:
            raise ValueError(f"--{name} must be in [0, 1), got {getattr(args, name)}.")
    for name in ("lr", "lora_alpha"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name} must be > 0, got {getattr(args, name)}.")
    if not 0.0 <= args.warmup_percent < 1.0:
        raise ValueError(f"--warmup_percent must be in [0, 1), got {args.warmup_percent}.")
    if args.weight_decay < 0 or args.grad_clip < 0:
        raise ValueError("--weight_decay and --grad_clip must be >= 0.")
    if not (args.lora_mlp or args.lora_causal_self_attention):
        raise ValueError("no LoRA targets: keep --lora_causal_self_attention or --lora_mlp on.")
    if args.num_clients is not None and args.k > args.num_clients:
        raise ValueError(f"--k {args.k} exceeds --num_clients {args.num_clients}.")
    trust_settings(args)


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    opts = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    opts["trust"] = Strategy.parse(args.trust).name
    return opts


def base_source(init: str) -> str | Path:
    """What `--init` names, as `GPT.from_pretrained` takes it: 'offline' is the cached offline base."""
    if init == "offline":
        from data.offline_base import offline_base

        return offline_base()
    return init


def client_adapters(out: Path, client: int) -> Path:
    """The folder of a finished run that holds client `client`'s adapter (`save_adapters`' format)."""
    return out / "adapters" / f"client_{client:02d}"


def load_base(init: str, dropout: float, sequence_length: int):
    """The frozen base every client shares."""
    from lora_gpt import GPT

    base = GPT.from_pretrained(base_source(init), dropout=dropout)
    if sequence_length > base.config.block_size:
        raise ValueError(f"--sequence_length {sequence_length} exceeds the base model's block_size "
                         f"{base.config.block_size}; use --sequence_length {base.config.block_size} or less.")
    return base


def prepare_data(args: argparse.Namespace):
    from data import ClientDataModule, prepare_recipe

    folder = args.data_dir or prepare_recipe(args.dataset, num_clients=args.num_clients, seed=args.seed,
                                             train=args.train_tokens, val=args.val_tokens,
                                             trust=args.trust_tokens, ref=args.ref_tokens)
    return ClientDataModule(folder, batch_size=args.batch_size, sequence_length=args.sequence_length,
                            seed=args.seed, eval_batches=args.eval_batches, accumulate=args.acc_steps)


def make_logger(kind: str, out: Path):
    from lightning.pytorch import loggers

    if kind == "tensorboard":
        return loggers.TensorBoardLogger(save_dir=out, name="", version="")
    if kind == "wandb":
        return loggers.WandbLogger(save_dir=out, project="collab-lora", name=out.name)
    return loggers.CSVLogger(save_dir=out, name="", version="")


def device_type(accelerator: str) -> str:
    """The torch device type an `--accelerator` choice runs on."""
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "cuda" if on_gpu else "cpu"


def check_resume(out: Path, options: dict[str, Any]) -> Path | None:
    """The checkpoint to resume from, after checking it belongs to the same configuration."""
    last = out / "checkpoints" / "last.ckpt"
    saved_file = out / RUN_OPTIONS_FILE
    if not last.exists():
        return None
    if saved_file.exists():
        saved = json.loads(saved_file.read_text())
        diff = {k: (saved.get(k), v) for k, v in options.items()
                if k not in RESUME_FREE and saved.get(k) != v}
        if diff:
            raise ValueError(f"{out} holds a run with other options (saved, now): {diff}; "
                             "resume with the same options or choose another --out.")
    return last


def write_summary(out: Path, options: dict[str, Any], module: CollabLoRAModule, aggregation: TrustAggregation,
                  datamodule, seconds: float) -> dict[str, Any]:
    final = module.curves[-1]
    summary = {
        "options": options,
        "dataset": {"folder": str(datamodule.data_dir), "categories": list(datamodule.categories),
                    "mixture": [list(map(float, row)) for row in datamodule.mixture],
                    "client_categories": list(map(int, datamodule.client_categories))},
        "final": {"step": final["step"], "clients": final["clients"], "mean": final["mean"]},
        "curves": module.curves,
        "train_loss": module.train_curve,
        "trust": [{k: r[k] for k in ("step", "quality", "excluded") if k in r} for r in aggregation.history],
        "seconds": seconds,
    }
    tmp = out / (SUMMARY_FILE + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(out / SUMMARY_FILE)
    return summary


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train, evaluate, and write summary.json, adapters, trust matrices and logs under --out."""
    validate(args)
    options = run_options(args)
    out = args.out or Path("runs") / args.dataset.replace("/", "_") / options["trust"] / f"seed{args.seed}"
    options["out"] = str(out)
    if (out / SUMMARY_FILE).exists():
        raise FileExistsError(f"{out} already holds a finished run ({SUMMARY_FILE}); choose another --out "
                              "or delete the folder to run again.")
    ckpt = check_resume(out, options)
    base = load_base(args.init, args.dropout, args.sequence_length)  # a bad --init fails before data work
    datamodule = prepare_data(args)
    num_clients = datamodule.num_clients
    if args.k > num_clients:
        raise ValueError(f"--k {args.k} exceeds the {num_clients} clients of the dataset.")
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_OPTIONS_FILE).write_text(json.dumps(options, indent=1))

    L.seed_everything(args.seed, verbose=False)
    lora = LoRAConfig.for_paper(attention=args.lora_causal_self_attention, mlp=args.lora_mlp, rank=args.lora_rank,
                                alpha=args.lora_alpha, dropout=args.lora_dropout, kernel=args.kernel,
                                init_seed=args.seed, init=args.lora_init)
    module = CollabLoRAModule(base, lora, num_clients, lr=args.lr, weight_decay=args.weight_decay,
                              iterations=args.iterations, warmup=args.warmup_percent, acc_steps=args.acc_steps,
                              grad_clip=args.grad_clip, client_chunk=args.client_chunk,
                              loss_chunk=args.loss_chunk, seed=args.seed)
    aggregation = TrustAggregation(trust_settings(args), out_dir=out)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=out / "checkpoints", save_last=True, save_top_k=0,
                                                     every_n_train_steps=args.ckpt_freq or args.eval_freq)
    trainer = L.Trainer(max_steps=args.iterations, accelerator=args.accelerator, devices=args.devices,
                        precision=resolve_precision(args.precision, device_type(args.accelerator)),
                        logger=make_logger(args.logger, out), callbacks=[aggregation, checkpoint],
                        val_check_interval=args.eval_freq * args.acc_steps, check_val_every_n_epoch=None,
                        num_sanity_val_steps=0, enable_progress_bar=args.progress,
                        enable_model_summary=False, log_every_n_steps=1, default_root_dir=out)
    start = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    if not module.curves or module.curves[-1]["step"] != trainer.global_step:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    for n in range(num_clients):
        save_adapters(module.model, client_adapters(out, n), adapters=n)
    summary = write_summary(out, options, module, aggregation, datamodule, time.time() - start)
    return summary


def format_final(summary: dict[str, Any]) -> str:
    rows = [f"{'client':>8} {'val loss':>9} {'val ppl':>9} {'val acc':>8}"]
    for n, c in enumerate(summary["final"]["clients"]):
        rows.append(f"{n:>8} {c['loss']:>9.4f} {c['ppl']:>9.2f} {c['acc']:>8.4f}")
    m = summary["final"]["mean"]
    rows.append(f"{'mean':>8} {m['loss']:>9.4f} {m['ppl']:>9.2f} {m['acc']:>8.4f}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        summary = run(args)
    except (ValueError, FileExistsError, FileNotFoundError, RuntimeError) as err:
        parser.exit(2, f"error: {err}\n")
    print(f"\n{summary['options']['trust']} on {args.dataset}, step {summary['final']['step']}:")
    print(format_final(summary))
    print(f"outputs in {summary['options']['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
