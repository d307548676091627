"""The inputs of a real `python -m collab.fit` run small enough for the tests: a two-category corpus,
a tiny base, and the data options that fit them."""

from pathlib import Path

import torch

from lora_gpt import GPT, GPTConfig

# Batch shapes that the base below holds, and the machine to run on.
TINY_RUN = [
    "--batch_size",
    "2",
    "--sequence_length",
    "16",
    "--eval_batches",
    "1",
    "--accelerator",
    "cpu",
    "--no-progress",
]
# Token budgets that the corpus below holds, then the batch shapes.
TINY_DATA = ["--train_tokens", "400", "--val_tokens", "100", "--trust_tokens", "40", "--ref_tokens", "100", *TINY_RUN]


def tiny_inputs(folder: Path) -> tuple[Path, Path]:
    """`(corpus, base)` under `folder`: 20 documents in each of two categories, and a gpt2-tiny base."""
    corpus = folder / "corpus"
    for cat in ("red", "blue"):
        (corpus / cat).mkdir(parents=True)
        for d in range(20):
            (corpus / cat / f"{d}.txt").write_text(" ".join(f"{cat} item {d} {i}" for i in range(40)))
    torch.manual_seed(0)
    GPT(GPTConfig.from_name("gpt2-tiny")).save_pretrained(folder / "base")
    return corpus, folder / "base"
