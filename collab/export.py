"""`python -m collab.export RUN --client N|all --format peft|merged|stacked`: clients' models out of a run.

peft: `adapter_model.safetensors` + `adapter_config.json` that `peft` loads onto `transformers`' GPT-2,
with that base model in `OUT/base`. merged: client N's whole model in Hugging Face's GPT-2 layout
(`config.json` + `model.safetensors`). Both carry GPT-2's tokenizer files, so
`AutoTokenizer.from_pretrained(OUT)` works offline. stacked: this project's own format
(`clients.safetensors` + `clients.json`), which also converts an adapter folder written before that
rename. `--client all` writes every client, one folder each (OUT/client_NN with --out).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lora_gpt import (
    GPT,
    export_merged,
    export_peft,
    inject_lora,
    load_adapters,
    save_adapters,
    save_hf_tokenizer,
    saved_lora_config,
)
from lora_gpt.errors import ConfigError, FixableError

from .cli import load_config
from .fit import base_source
from .run_folder import RunFolder, RunFolderError

FORMATS = ("peft", "merged", "stacked")
PEFT_USAGE = """load it with:
    from transformers import GPT2LMHeadModel
    from peft import PeftModel
    model = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained("{out}/base"), "{out}")"""


def run_init(run: Path) -> str:
    """The base model the run started from (its `--init`), read from the run's saved configuration."""
    config = RunFolder(run).config
    if not config.is_file():
        raise RunFolderError(f"{config} not found; pass a run folder written by python -m collab.fit.")
    return load_config(config).run.init


def client_model(run: str | Path, client: int) -> GPT:
    """Client `client`'s model from a finished run folder, in eval mode: the run's base (its `--init`)
    with that client's final adapter as its one adapter. `lora_gpt.export_merged(model, 0)` folds the
    adapter in; `collab.generate_text(model, prompt)` continues a prompt with it."""
    run = Path(run)
    init = run_init(run)
    folder = RunFolder(run).adapters(client)
    if not folder.is_dir():
        saved = sorted(p.name for p in (run / "adapters").glob("client_*"))
        raise RunFolderError(
            f"{folder} not found; "
            + (
                f"the run saved {saved[0]} to {saved[-1]}."
                if saved
                else "adapters are saved when a run finishes: rerun its python -m collab.fit command to finish it."
            )
        )
    model = GPT.from_pretrained(base_source(init))
    inject_lora(model, saved_lora_config(folder))
    return load_adapters(model, folder).eval()


def export(run: Path, client: int, fmt: str, out: Path | None = None) -> Path:
    """Write client `client` of `run` in format `fmt` to `out` (default `RUN/export/client_NN_FORMAT`)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {FORMATS}, got {fmt!r}.")
    out = out or run / "export" / f"client_{client:02d}_{fmt}"
    model = client_model(run, client)
    if fmt == "peft":
        export_peft(model, 0, out)
    elif fmt == "merged":
        merged = export_merged(model, 0)
        save_hf_tokenizer(merged.save_pretrained(out), merged.config)
    else:
        save_adapters(model, out)
    return out


def saved_clients(run: Path) -> list[int]:
    """The clients whose final adapter the run saved."""
    return sorted(int(p.name.removeprefix("client_")) for p in (Path(run) / "adapters").glob("client_*"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m collab.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="a run folder written by python -m collab.fit")
    parser.add_argument("--client", required=True, help="which client's model to export (a number), or all")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default RUN/export/client_NN_FORMAT; with --client all, OUT/client_NN)",
    )
    args = parser.parse_args(argv)
    try:
        if args.client == "all":
            clients = saved_clients(args.run) or [0]  # none saved: client 0's export says why
            outs = [export(args.run, n, args.format, args.out and args.out / f"client_{n:02d}") for n in clients]
        elif args.client.isdigit():
            outs = [export(args.run, int(args.client), args.format, args.out)]
        else:
            raise ConfigError(f"--client {args.client}: give a client's number (0, 1, ...) or all.")
    except FixableError as err:
        parser.exit(2, f"error: {err}\n")
    for out in outs:
        print(f"{out} ({args.format})")
    print(f"{len(outs)} client(s) of {args.run} written")
    if args.format == "peft":
        print(PEFT_USAGE.format(out=outs[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
