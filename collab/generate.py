"""`python -m collab.generate RUN --client N --prompt "..."`: text from one client's model of a run.

Loads the run's base with client N's final adapter (`collab.client_model`) and continues the
prompt, sampling with a temperature and top-k from a fixed seed (the same command gives the same
text), or greedily with --greedy.

    python -m collab.generate runs/offline_multi_specific-n8/dynamic/seed0 --client 2 --prompt "Le paquet"
    python -m collab.generate RUN --client 0 --prompt "The kernel" --greedy --max_new_tokens 20
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from lora_gpt import GPT, get_tokenizer
from lora_gpt.cli import Command, fail
from lora_gpt.errors import ConfigError, FixableError
from lora_gpt.options import option, require, require_choice
from lora_gpt.tokenizer import EOT_TOKEN

from .export import client_model


@torch.no_grad()
def generate_text(
    model: GPT,
    prompt: str,
    max_new_tokens: int = 50,
    temperature: float = 0.8,
    top_k: int | None = 50,
    seed: int = 0,
) -> str:
    """The continuation of `prompt` by `model` (one adapter, or none), cut at the end-of-text token;
    temperature 0 is greedy. An empty prompt starts a new document (from the end-of-text token)."""
    if max_new_tokens < 1 or temperature < 0 or (top_k is not None and top_k < 1):
        raise ConfigError(
            f"max_new_tokens {max_new_tokens}, temperature {temperature}, top_k {top_k}: "
            "give max_new_tokens >= 1, temperature >= 0 (0: greedy) and top_k >= 1 (or none)."
        )
    enc = get_tokenizer()
    ids = enc.encode(prompt, disallowed_special=()) or [EOT_TOKEN]
    device = next(model.parameters()).device
    idx = torch.tensor([ids], device=device)
    torch.manual_seed(seed)
    out = model.eval().generate(idx, max_new_tokens, temperature=temperature, top_k=top_k)[0, len(ids) :].tolist()
    return enc.decode(out[: out.index(EOT_TOKEN)] if EOT_TOKEN in out else out)


@dataclass(frozen=True)
class GenerateConfig:
    """Whose model continues which prompt, and how it samples."""

    GROUP: ClassVar[str] = "generate"

    run: Path | None = option(None, "a finished run folder written by python -m collab.fit")
    client: int | None = option(None, "whose model continues the prompt")
    prompt: str = option("", "the text to continue (default: a new document)")
    max_new_tokens: int = option(50, "tokens to generate")
    temperature: float = option(0.8, "sampling temperature")
    top_k: int = option(50, "sample among the k likeliest tokens")
    greedy: bool = option(False, "always the likeliest token (temperature 0)")
    seed: int = option(0, "seed of the sampling")
    device: str = option("cpu", "where to run", choices=("cpu", "cuda"))

    def __post_init__(self) -> None:
        if self.run is not None:
            object.__setattr__(self, "run", Path(self.run))
        require(self, "client", self.client is None or self.client >= 0, ">= 0")
        require(self, "max_new_tokens", self.max_new_tokens >= 1, ">= 1")
        require(self, "temperature", self.temperature >= 0, ">= 0 (0: greedy)")
        require(self, "top_k", self.top_k >= 1, ">= 1")
        require_choice(self, "device")


def _request(groups: dict) -> GenerateConfig:
    config: GenerateConfig = groups["generate"]
    missing = [name for name in ("run", "client") if getattr(config, name) is None]
    if missing:
        raise ConfigError(f"give {', '.join(f'--generate.{name}' for name in missing)} (the run as RUN works too).")
    return config


def command() -> Command[GenerateConfig]:
    """`python -m collab.generate`'s command."""
    return Command("python -m collab.generate", __doc__, [GenerateConfig], _request, positional=("generate.run", "RUN"))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        asked = command().parse(argv)
        assert asked.run is not None and asked.client is not None  # _request checks
        if asked.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--generate.device cuda: no CUDA device is visible here. Fix: --device cpu.")
        model = client_model(asked.run, asked.client).to(asked.device)
        text = generate_text(
            model,
            asked.prompt,
            asked.max_new_tokens,
            temperature=0.0 if asked.greedy else asked.temperature,
            top_k=asked.top_k,
            seed=asked.seed,
        )
    except FixableError as err:
        fail(err)
    print(asked.prompt + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
