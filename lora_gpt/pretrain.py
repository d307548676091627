"""`python -m lora_gpt.pretrain --corpus FOLDER`: a small GPT-2-shaped base, pretrained from scratch.

No pretrained GPT-2 can be fetched without the network, so the embedded default brings its own
base: a GPT-2-shaped model (GPT-2's tokenizer and vocabulary) trained on a corpus folder holding
`train.bin` and `val.bin` (uint16 GPT-2 tokens). Which text that is, is the caller's business
(`data.offline_base` builds the offline one). The result is cached under `cache_dir()/bases/<key>`,
keyed by the configuration and the corpus's manifest, and reused after.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from .cache import cache_dir
from .cli import Command, fail
from .config import PRESETS, GPTConfig
from .console import StepProgressBar, plain_warnings, quiet_third_party
from .errors import ConfigError, FixableError
from .lightning import LitGPT
from .options import option, require, require_choice
from .precision import PRECISIONS, resolve_precision
from .training import random_windows

REPORT_NAME = "pretrain_report.json"


@dataclass(frozen=True)
class PretrainConfig:
    """The base model's shape and how it is pretrained; the cache key of the result."""

    GROUP: ClassVar[str] = "pretrain"

    preset: str = option("gpt2-micro", "model shape", choices=PRESETS)
    steps: int = option(400, "optimizer steps")
    batch_size: int = option(16, "sequences per step")
    sequence_length: int = option(128, "tokens per sequence")
    lr: float = option(3e-3, "peak learning rate of the OneCycle schedule")
    weight_decay: float = option(0.1, "AdamW's weight decay")
    warmup: float = option(0.02, "share of the steps spent warming up")
    seed: int = option(0, "seed of the initialisation and the batches")
    eval_batches: int = option(16, "validation batches at the end")
    precision: str = option(
        "auto",
        "auto: bf16-mixed where bfloat16 is native (GPUs, CPUs with avx512_bf16/amx), else 32-true",
        choices=PRECISIONS,
    )

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "sequence_length", "eval_batches"):
            require(self, name, getattr(self, name) >= 1, ">= 1")
        require(self, "lr", self.lr > 0, "> 0")
        require(self, "weight_decay", self.weight_decay >= 0, ">= 0")
        require(self, "warmup", 0 <= self.warmup < 1, "in [0, 1)")
        require_choice(self, "precision")
        require_choice(self, "preset")

    def key(self, corpus_id: str) -> str:
        blob = json.dumps({"config": dataclasses.asdict(self), "corpus": corpus_id}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _tokens(path: Path) -> np.memmap:
    return np.memmap(path, dtype=np.uint16, mode="r")


class RandomWindows(IterableDataset):
    """Endless `[b, T+1]` batches; batch t is a pure function of (seed, t)."""

    def __init__(self, path: Path, batch_size: int, sequence_length: int, seed: int) -> None:
        self.path, self.b, self.T, self.seed = path, batch_size, sequence_length, seed

    def __iter__(self) -> Iterator[torch.Tensor]:
        tokens, t = _tokens(self.path), 0
        while True:
            yield torch.from_numpy(random_windows(tokens, self.b, self.T + 1, (self.seed, t)))
            t += 1


def fixed_windows(path: Path, batch_size: int, sequence_length: int, num_batches: int) -> list[torch.Tensor]:
    """Non-overlapping windows from the start of a token file: the same every evaluation."""
    tokens = _tokens(path)
    span = sequence_length + 1
    count = min(num_batches * batch_size, len(tokens) // span)
    if count < 1:
        raise ConfigError(
            f"{path} holds {len(tokens)} tokens, fewer than one window of {span}. Fix: a smaller "
            "--pretrain.sequence_length, or a corpus with more validation text."
        )
    windows = np.asarray(tokens[: count * span], dtype=np.int64).reshape(count, span)
    return list(torch.from_numpy(windows).split(batch_size))


def unigram_loss(train: Path, val: Path, vocab_size: int, alpha: float = 0.01) -> float:
    """Cross-entropy (nats/token) on `val` of the unigram model of `train` (add-`alpha` smoothed,
    small so the baseline stays close to the maximum-likelihood fit): the loss a model gets by
    knowing only how often each token occurs."""
    counts = np.bincount(_tokens(train), minlength=vocab_size).astype(np.float64) + alpha
    logp = np.log(counts / counts.sum())
    return float(-logp[_tokens(val)].mean())


def pretrain(config: PretrainConfig, corpus: Path, out: Path, progress: bool = True) -> dict:
    """Train from scratch on `corpus/train.bin`, evaluate on `corpus/val.bin`, save to `out`."""
    L.seed_everything(config.seed, verbose=False)
    model_config = GPTConfig.from_name(config.preset)
    if config.sequence_length > model_config.block_size:
        raise ConfigError(
            f"--pretrain.sequence_length {config.sequence_length} exceeds {config.preset}'s block_size "
            f"{model_config.block_size}. Fix: --pretrain.sequence_length {model_config.block_size} or less."
        )
    for name in ("train.bin", "val.bin"):
        if not (corpus / name).is_file():
            raise ConfigError(
                f"{corpus / name} not found: a pretraining corpus folder holds train.bin and "
                "val.bin (uint16 GPT-2 tokens); `python -m data.offline_base` builds the offline one."
            )
    module = LitGPT(
        model_config, lr=config.lr, weight_decay=config.weight_decay, max_steps=config.steps, warmup=config.warmup
    )
    train = DataLoader(
        RandomWindows(corpus / "train.bin", config.batch_size, config.sequence_length, config.seed), batch_size=None
    )
    val_batches = fixed_windows(corpus / "val.bin", config.batch_size, config.sequence_length, config.eval_batches)
    precision = resolve_precision(config.precision, "cuda" if torch.cuda.is_available() else "cpu")
    quiet_third_party()
    trainer = L.Trainer(
        max_steps=config.steps,
        accelerator="auto",
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        callbacks=[StepProgressBar()] if progress else [],
        enable_model_summary=False,
        val_check_interval=config.steps,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
    )
    start = time.time()
    # A list of batches is a map-style dataset, though torch annotates DataLoader's dataset as Dataset.
    val: DataLoader[torch.Tensor] = DataLoader(val_batches, batch_size=None)  # type: ignore[arg-type]
    trainer.fit(module, train_dataloaders=train, val_dataloaders=val)
    seconds = time.time() - start
    tokens = config.steps * config.batch_size * config.sequence_length
    report = {
        "config": dataclasses.asdict(config),
        "precision": precision,
        "corpus": str(corpus),
        "val_loss": float(trainer.callback_metrics["val/loss"]),
        "unigram_val_loss": unigram_loss(corpus / "train.bin", corpus / "val.bin", model_config.vocab_size),
        "train_tokens_seen": tokens,
        "corpus_train_tokens": len(_tokens(corpus / "train.bin")),
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
    }
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    module.model.save_pretrained(tmp)
    (tmp / REPORT_NAME).write_text(json.dumps(report, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)  # the folder appears complete or not at all
    return report


def _corpus_id(corpus: Path) -> str:
    manifest = corpus / "manifest.json"
    return hashlib.sha256(manifest.read_bytes()).hexdigest()[:12] if manifest.exists() else str(corpus.resolve())


def base_folder(config: PretrainConfig, corpus: Path) -> Path:
    """Where the base for `config` on `corpus` is cached."""
    return cache_dir() / "bases" / f"{config.preset}-{config.key(_corpus_id(corpus))}"


def ensure_base(config: PretrainConfig, corpus: Path, progress: bool = True) -> Path:
    """The folder of the base for `config` on `corpus`, pretraining it first if it is not cached."""
    out = base_folder(config, corpus)
    if (out / REPORT_NAME).exists():
        return out
    print(
        f"Pretraining a base model ({config.preset}, {config.steps} steps; once, cached in {out}) ...", file=sys.stderr
    )
    report = pretrain(config, corpus, out, progress)
    print(format_report(report), file=sys.stderr)
    return out


def format_report(report: dict) -> str:
    return (
        f"validation loss {report['val_loss']:.3f} nats/token (perplexity {math.exp(report['val_loss']):.1f}) "
        f"vs unigram {report['unigram_val_loss']:.3f} (perplexity {math.exp(report['unigram_val_loss']):.1f}); "
        f"{report['train_tokens_seen']:,} tokens in {report['seconds'] / 60:.1f} min "
        f"({report['tokens_per_second']:,.0f} tokens/s, {report['precision']})"
    )


@dataclass(frozen=True)
class CorpusConfig:
    """The text to pretrain on."""

    GROUP: ClassVar[str] = "corpus"

    folder: Path | None = option(None, "folder holding train.bin and val.bin (uint16 GPT-2 tokens)", alias="corpus")

    def __post_init__(self) -> None:
        if self.folder is not None:
            object.__setattr__(self, "folder", Path(self.folder))


def command() -> Command[tuple[PretrainConfig, Path]]:
    """`python -m lora_gpt.pretrain`'s command: the pretraining options and the corpus."""

    def build(groups: dict) -> tuple[PretrainConfig, Path]:
        corpus = groups["corpus"].folder
        if corpus is None:
            raise ConfigError("give the corpus: --corpus.folder FOLDER (or --corpus FOLDER).")
        return groups["pretrain"], corpus

    return Command("python -m lora_gpt.pretrain", __doc__, [PretrainConfig, CorpusConfig], build)


def main(argv: Sequence[str] | None = None) -> int:
    plain_warnings()
    try:
        config, corpus = command().parse(argv)
        folder = ensure_base(config, corpus)
    except FixableError as err:
        fail(err)
    print(format_report(json.loads((folder / REPORT_NAME).read_text())))
    print(f"base model: {folder}  (use it with: python -m collab.fit --init {folder})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
