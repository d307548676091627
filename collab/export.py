"""`python -m collab.export RUN --client n --format peft|merged|stacked`: one client's model out of a run.

peft: `adapter_model.safetensors` + `adapter_config.json` that `peft` loads onto `transformers`' GPT-2,
with that base model in `OUT/base`. merged: client n's whole model in Hugging Face's GPT-2 layout
(`config.json` + `model.safetensors`). stacked: this project's own format (`clients.safetensors` +
`clients.json`), which also converts an adapter folder written before that rename.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from lora_gpt import GPT, export_merged, export_peft, inject_lora, load_adapters, save_adapters, saved_lora_config
from lora_gpt.cli import Command, fail
from lora_gpt.errors import ConfigError, FixableError
from lora_gpt.lora import AdapterFileError, AdapterNotFoundError
from lora_gpt.options import option, require, require_choice

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


def client_model(run: Path, client: int) -> GPT:
    """The run's base model with client `client`'s final adapter as its one adapter."""
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
    try:
        inject_lora(model, saved_lora_config(folder))
        return load_adapters(model, folder)
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
            export_merged(model, 0).save_pretrained(out)
        else:
            save_adapters(model, out)
    except OSError as err:  # a file on the way, no permission, a full disk
        raise ConfigError(
            f"--out {out}: the export cannot be written there ({err.strerror}: {err.filename}). Fix: choose another "
            "--out, a folder you can write to."
        ) from None
    return out


@dataclass(frozen=True)
class ExportConfig:
    """Which client's model leaves which run, in which format, and where it goes."""

    GROUP: ClassVar[str] = "export"

    run: Path | None = option(None, "a run folder written by python -m collab.fit")
    client: int | None = option(None, "which client's model to export")
    format: str | None = option(None, "peft, merged or stacked (see above)", choices=FORMATS)
    out: Path | None = option(None, "output folder (default RUN/export/client_NN_FORMAT)")

    def __post_init__(self) -> None:
        for name in ("run", "out"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        require(self, "client", self.client is None or self.client >= 0, ">= 0")
        if self.format is not None:
            require_choice(self, "format")


def _request(groups: dict) -> tuple[Path, int, str, Path | None]:
    """`(run, client, format, out)`, refusing a request that leaves one of the first three out."""
    config: ExportConfig = groups["export"]
    if config.run is None or config.client is None or config.format is None:
        missing = [name for name in ("run", "client", "format") if getattr(config, name) is None]
        raise ConfigError(f"give {', '.join(f'--export.{name}' for name in missing)} (the run as RUN works too).")
    return config.run, config.client, config.format, config.out


def command() -> Command[tuple[Path, int, str, Path | None]]:
    """`python -m collab.export`'s command."""
    return Command("python -m collab.export", __doc__, [ExportConfig], _request, positional=("export.run", "RUN"))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run, client, fmt, out = command().parse(argv)
        out = export(run, client, fmt, out)
    except FixableError as err:
        fail(err)
    print(f"client {client} of {run} written to {out} ({fmt})")
    if fmt == "peft":
        print(PEFT_USAGE.format(out=out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
