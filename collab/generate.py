"""`python -m collab.generate RUN --client N --prompt "..."`: text from one client's model of a run.

Loads the run's base with client N's final adapter (`collab.client_model`) and continues the
prompt, sampling with a temperature and top-k from a fixed seed (the same command gives the same
text), or greedily with --greedy.

    python -m collab.generate runs/offline_multi_specific-n8/dynamic/seed0 --client 2 --prompt "Le paquet"
    python -m collab.generate RUN --client 0 --prompt "The kernel" --greedy --max_new_tokens 20
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from lora_gpt import GPT, get_tokenizer
from lora_gpt.errors import ConfigError, FixableError
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m collab.generate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="a finished run folder written by python -m collab.fit")
    parser.add_argument("--client", type=int, required=True, help="whose model continues the prompt")
    parser.add_argument("--prompt", default="", help="the text to continue (default: a new document)")
    parser.add_argument("--max_new_tokens", type=int, default=50, help="tokens to generate (default 50)")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default 0.8)")
    parser.add_argument("--top_k", type=int, default=50, help="sample among the k likeliest tokens (default 50)")
    parser.add_argument("--greedy", action="store_true", help="always the likeliest token (temperature 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")
    args = parser.parse_args(argv)
    try:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is visible here. Fix: --device cpu.")
        model = client_model(args.run, args.client).to(args.device)
        text = generate_text(
            model,
            args.prompt,
            args.max_new_tokens,
            temperature=0.0 if args.greedy else args.temperature,
            top_k=args.top_k,
            seed=args.seed,
        )
    except FixableError as err:
        parser.exit(2, f"error: {err}\n")
    print(args.prompt + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
