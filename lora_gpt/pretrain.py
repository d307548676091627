"""`python -m lora_gpt.pretrain`: a small GPT-2-shaped base, pretrained from scratch offline.

No pretrained GPT-2 can be fetched without the network, so the embedded default brings its
own base: a GPT-2-shaped model (GPT-2's tokenizer and vocabulary) trained on the union of the
offline corpora, on documents that no client ever sees. The result is cached under
`cache_dir()/bases/<key>`, keyed by the configuration and the corpus, and reused after.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from .config import GPTConfig
from .lightning import LitGPT
from .tokenizer import cache_dir

REPORT_NAME = "pretrain_report.json"


@dataclass(frozen=True)
class PretrainConfig:
    preset: str = "gpt2-micro"  # model shape (lora_gpt.config.PRESETS)
    steps: int = 250  # optimizer steps; the default takes about 7 minutes on 2 CPU cores
    batch_size: int = 16  # sequences per step
    sequence_length: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup: float = 0.02
    seed: int = 0
    eval_batches: int = 16

    def key(self, corpus_id: str) -> str:
        blob = json.dumps({"config": dataclasses.asdict(self), "corpus": corpus_id}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _tokens(path: Path) -> np.memmap:
    return np.memmap(path, dtype=np.uint16, mode="r")


class RandomWindows(IterableDataset):
    """Endless `[b, T+1]` windows; window set t is a pure function of (seed, t)."""

    def __init__(self, path: Path, batch_size: int, sequence_length: int, seed: int) -> None:
        self.path, self.b, self.T, self.seed = path, batch_size, sequence_length, seed

    def __iter__(self):
        tokens = _tokens(self.path)
        t = 0
        while True:
            starts = np.random.default_rng([self.seed, t]).integers(0, len(tokens) - self.T - 1, self.b)
            yield torch.from_numpy(np.stack([tokens[s:s + self.T + 1] for s in starts]).astype(np.int64))
            t += 1


def fixed_windows(path: Path, batch_size: int, sequence_length: int, num_batches: int) -> list[torch.Tensor]:
    """Non-overlapping windows from the start of a token file: the same every evaluation."""
    tokens = _tokens(path)
    span = sequence_length + 1
    count = min(num_batches * batch_size, len(tokens) // span)
    if count < 1:
        raise ValueError(f"{path} holds {len(tokens)} tokens, fewer than one window of {span}.")
    windows = np.asarray(tokens[:count * span], dtype=np.int64).reshape(count, span)
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
        raise ValueError(f"sequence_length {config.sequence_length} exceeds {config.preset}'s block_size "
                         f"{model_config.block_size}.")
    module = LitGPT(model_config, lr=config.lr, weight_decay=config.weight_decay,
                    max_steps=config.steps, warmup=config.warmup)
    train = DataLoader(RandomWindows(corpus / "train.bin", config.batch_size, config.sequence_length, config.seed),
                       batch_size=None)
    val_batches = fixed_windows(corpus / "val.bin", config.batch_size, config.sequence_length, config.eval_batches)
    trainer = L.Trainer(max_steps=config.steps, accelerator="auto", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
                        val_check_interval=config.steps, check_val_every_n_epoch=None, num_sanity_val_steps=0)
    start = time.time()
    trainer.fit(module, train_dataloaders=train, val_dataloaders=DataLoader(val_batches, batch_size=None))
    seconds = time.time() - start
    report = {
        "config": dataclasses.asdict(config),
        "corpus": str(corpus),
        "val_loss": float(trainer.callback_metrics["val/loss"]),
        "unigram_val_loss": unigram_loss(corpus / "train.bin", corpus / "val.bin", model_config.vocab_size),
        "train_tokens_seen": config.steps * config.batch_size * config.sequence_length,
        "seconds": seconds,
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
    return hashlib.sha256(manifest.read_bytes()).hexdigest()[:12] if manifest.exists() else str(corpus)


def ensure_base(config: PretrainConfig | None = None, corpus: Path | None = None, progress: bool = True) -> Path:
    """The folder of the offline base for `config`, pretraining it first if it is not cached."""
    config = config or PretrainConfig()
    if corpus is None:
        from data import pretraining_corpus

        corpus = pretraining_corpus()
    out = cache_dir() / "bases" / f"{config.preset}-{config.key(_corpus_id(corpus))}"
    if (out / REPORT_NAME).exists():
        return out
    print(f"Building the offline base model ({config.preset}, {config.steps} steps; first use only, "
          f"cached in {out}) ...", file=sys.stderr)
    report = pretrain(config, corpus, out, progress)
    print(format_report(report), file=sys.stderr)
    return out


def format_report(report: dict) -> str:
    return (f"validation loss {report['val_loss']:.3f} nats/token (perplexity {math.exp(report['val_loss']):.1f}) "
            f"vs unigram {report['unigram_val_loss']:.3f} (perplexity {math.exp(report['unigram_val_loss']):.1f}); "
            f"{report['train_tokens_seen']:,} tokens in {report['seconds'] / 60:.1f} min")


def main(argv: Sequence[str] | None = None) -> int:
    defaults = PretrainConfig()
    p = argparse.ArgumentParser(prog="python -m lora_gpt.pretrain", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for field in dataclasses.fields(PretrainConfig):
        p.add_argument(f"--{field.name}", type=type(getattr(defaults, field.name)), default=getattr(defaults, field.name))
    p.add_argument("--corpus", type=Path, default=None, help="folder with train.bin/val.bin (default: the offline corpora)")
    args = vars(p.parse_args(argv))
    corpus = args.pop("corpus")
    for name in ("steps", "batch_size", "sequence_length", "eval_batches"):
        if args[name] < 1:
            p.exit(2, f"error: --{name} must be >= 1, got {args[name]}.\n")
    try:
        config = PretrainConfig(**args)
        folder = ensure_base(config, corpus)
    except ValueError as err:
        p.exit(2, f"error: {err}\n")
    print(format_report(json.loads((folder / REPORT_NAME).read_text())))
    print(f"base model: {folder}  (use it with: python -m collab.fit --init {folder})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
