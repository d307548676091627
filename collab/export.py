"""`python -m collab.export RUN --client N|all --format peft|merged|stacked`: clients' models out of a run.

peft: `adapter_model.safetensors` + `adapter_config.json` that `peft` loads onto `transformers`' GPT-2,
with that base model in `OUT/base`. merged: client N's whole model in Hugging Face's GPT-2 layout
(`config.json` + `model.safetensors`). Both carry GPT-2's tokenizer files, so
`AutoTokenizer.from_pretrained(OUT)` works offline. stacked: this project's own format
(`clients.safetensors` + `clients.json`), which also converts an adapter folder written before that
rename. `--client all` writes every client, one folder each (OUT/client_NN with --out).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

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
from lora_gpt.cli import Command, fail
from lora_gpt.errors import ConfigError, FixableError
from lora_gpt.lora import AdapterFileError, AdapterNotFoundError
from lora_gpt.options import option, require_choice

from .cli import load_config
from .config import RunConfig
from .fit import base_source
from .run_folder import RunFolder, RunFolderError

FORMATS = ("peft", "merged", "stacked")
PEFT_USAGE = """load it with:
    from transformers import GPT2LMHeadModel
    from peft import PeftModel
    model = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained("{out}/base"), "{out}")"""


def run_settings(run: Path) -> RunConfig:
    """The run's `run` options (its `--init` base and `--gelu`), read from the run's saved configuration."""
    config = RunFolder(run).config
    if not config.is_file():
        raise RunFolderError(f"{config} not found; pass a run folder written by python -m collab.fit.")
    return load_config(config).run


def client_model(run: str | Path, client: int) -> GPT:
    """Client `client`'s model from a finished run folder, in eval mode: the run's base (its `--init`)
    with that client's final adapter as its one adapter. `lora_gpt.export_merged(model, 0)` folds the
    adapter in; `collab.generate_text(model, prompt)` continues a prompt with it."""
    run = Path(run)
    settings = run_settings(run)
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
    model = GPT.from_pretrained(base_source(settings.init), gelu=settings.gelu)
    try:
        inject_lora(model, saved_lora_config(folder))
        return load_adapters(model, folder).eval()
    except (AdapterFileError, AdapterNotFoundError) as err:
        run_folder = RunFolder(run)
        raise RunFolderError(
            f"{err} For a run: delete {run_folder.summary} and run python -m collab.fit --config "
            f"{run_folder.config} --out {run} again; it resumes from the run's last checkpoint and writes every "
            "adapter anew."
        ) from None


def export(run: Path, client: int, fmt: str, out: Path | None = None) -> Path:
    """Write client `client` of `run` in format `fmt` to `out` (default `RUN/export/client_NN_FORMAT`)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {FORMATS}, got {fmt!r}.")
    out = out or run / "export" / f"client_{client:02d}_{fmt}"
    model = client_model(run, client)
    try:
        if fmt == "peft":
            export_peft(model, 0, out)
        elif fmt == "merged":
            merged = export_merged(model, 0)
            save_hf_tokenizer(merged.save_pretrained(out), merged.config)
        else:
            save_adapters(model, out)
    except OSError as err:  # a file on the way, no permission, a full disk
        raise ConfigError(
            f"--out {out}: the export cannot be written there ({err.strerror}: {err.filename}). Fix: choose another "
            "--out, a folder you can write to."
        ) from None
    return out


def saved_clients(run: Path) -> list[int]:
    """The clients whose final adapter the run saved."""
    return sorted(int(p.name.removeprefix("client_")) for p in (Path(run) / "adapters").glob("client_*"))


@dataclass(frozen=True)
class ExportConfig:
    """Which clients' models leave which run, in which format, and where they go."""

    GROUP: ClassVar[str] = "export"

    run: Path | None = option(None, "a run folder written by python -m collab.fit")
    client: str | None = option(None, "which client's model to export (a number), or all")
    format: str | None = option(None, "peft, merged or stacked (see above)", choices=FORMATS)
    out: Path | None = option(
        None, "output folder (default RUN/export/client_NN_FORMAT; with --client all, OUT/client_NN)"
    )

    def __post_init__(self) -> None:
        for name in ("run", "out"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if self.client is not None and self.client != "all" and not self.client.isdigit():
            raise ConfigError(f"--export.client {self.client}: give a client's number (0, 1, ...) or all.")
        if self.format is not None:
            require_choice(self, "format")


def _request(groups: dict) -> ExportConfig:
    """The export asked for, refusing one that leaves out the run, the client or the format."""
    config: ExportConfig = groups["export"]
    missing = [name for name in ("run", "client", "format") if getattr(config, name) is None]
    if missing:
        raise ConfigError(f"give {', '.join(f'--export.{name}' for name in missing)} (the run as RUN works too).")
    return config


def command() -> Command[ExportConfig]:
    """`python -m collab.export`'s command."""
    return Command("python -m collab.export", __doc__, [ExportConfig], _request, positional=("export.run", "RUN"))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        asked = command().parse(argv)
        assert asked.run is not None and asked.client is not None and asked.format is not None  # _request checks
        run, fmt = asked.run, asked.format
        if asked.client == "all":
            clients = saved_clients(run) or [0]  # none saved: client 0's export says why
            outs = [export(run, n, fmt, asked.out and asked.out / f"client_{n:02d}") for n in clients]
        else:
            outs = [export(run, int(asked.client), fmt, asked.out)]
    except FixableError as err:
        fail(err)
    for out in outs:
        print(f"{out} ({fmt})")
    print(f"{len(outs)} client(s) of {run} written")
    if fmt == "peft":
        print(PEFT_USAGE.format(out=outs[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
