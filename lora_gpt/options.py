"""Configuration fields that carry their own help and command-line names, and checks that name them.

A run is described by groups: frozen dataclasses whose `GROUP` class attribute names them and whose
fields are made with `option`, so the default, the help text and the names of a field sit next to
it. Every entry point's command line and config files are generated from them (`lora_gpt.cli`):
field `rank` of group `lora` is `--lora.rank` on the command line, as it is `lora: {rank: ...}` in
YAML, and its short name (`--lora_rank`, the `alias` or else the field's name) is accepted too. Every
error about a field names it by its canonical flag.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from .errors import ConfigError


def option(
    default: Any,
    help: str | Callable[[], str],
    *,
    alias: str | None = None,
    choices: Iterable[Any] | None = None,
    resume_free: bool = False,
) -> Any:
    """A dataclass field with its `--help` text (or a function that says it when the help is shown,
    for text that depends on what is registered by then). `alias`: the option's short name where it
    is not the field's (`--lora_rank` for `lora.rank`: the names the paper's code used); `choices`:
    the values it may take; `resume_free`: a resumed run may change it, as it changes how a run goes
    (device, memory, output), not what it computes."""
    return dataclasses.field(
        default=default,
        metadata={
            "help": help,
            "alias": alias,
            "choices": tuple(choices) if choices is not None else None,
            "resume_free": resume_free,
        },
    )


def help_text(field: dataclasses.Field) -> str:
    """The help of a field made with `option`."""
    text = field.metadata["help"]
    return text() if callable(text) else text


def _field(config: Any, name: str) -> dataclasses.Field:
    return {f.name: f for f in dataclasses.fields(config)}[name]


def group_name(config: Any) -> str | None:
    """The group a config dataclass (or instance) is, as YAML and the flags name it (`lora`)."""
    return getattr(config, "GROUP", None)


def short_name(field: dataclasses.Field) -> str:
    """A field's short command-line name, without dashes: its `alias`, else its own name."""
    return field.metadata.get("alias") or field.name


def flag_name(config: Any, name: str) -> str:
    """The canonical command-line name of field `name` of a config dataclass (or instance):
    `--lora.rank` (a dataclass without a `GROUP`: its short name)."""
    group = group_name(config)
    return f"--{group}.{name}" if group else f"--{short_name(_field(config, name))}"


def require(config: Any, name: str, ok: bool, rule: str, fix: str | None = None) -> None:
    """Raise a `ConfigError` naming field `name`'s option, its value and `rule`, unless `ok`."""
    if not ok:
        value = getattr(config, name)
        said = f"{flag_name(config, name)} must be {rule}, got {value!r}"
        raise ConfigError(said + (f". Fix: {fix}" if fix else "."))


def require_choice(config: Any, name: str) -> None:
    """Refuse a value of field `name` outside the choices its `option` lists."""
    choices = _field(config, name).metadata["choices"]
    require(config, name, getattr(config, name) in choices, f"one of {', '.join(map(str, choices))}")
