"""Configuration fields that carry their own help and command-line name, and checks that name them.

A run is described by frozen dataclasses whose fields are made with `option`: the default, the
help text and (where it is not `--FIELD`) the command-line name sit next to the field, so the
CLI built from them (`collab.cli`) and every error about a field use the one definition.
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
    flag: str | None = None,
    choices: Iterable[Any] | None = None,
    resume_free: bool = False,
) -> Any:
    """A dataclass field with its `--help` text (or a function that says it when the help is shown,
    for text that depends on what is registered by then). `flag`: the option's name where it is not
    the field's; `choices`: the values it may take; `resume_free`: a resumed run may change it, as
    it changes how a run goes (device, memory, output), not what it computes."""
    return dataclasses.field(
        default=default,
        metadata={
            "help": help,
            "flag": flag,
            "choices": tuple(choices) if choices is not None else None,
            "resume_free": resume_free,
        },
    )


def help_text(field: dataclasses.Field) -> str:
    """The help of a field made with `option`."""
    text = field.metadata["help"]
    return text() if callable(text) else text


def flag_name(config: Any, name: str) -> str:
    """The command-line name of field `name` of a config dataclass (or instance): `--lora_rank`."""
    field = {f.name: f for f in dataclasses.fields(config)}[name]
    return "--" + (field.metadata.get("flag") or name)


def require(config: Any, name: str, ok: bool, rule: str, fix: str | None = None) -> None:
    """Raise a `ConfigError` naming field `name`'s option, its value and `rule`, unless `ok`."""
    if not ok:
        value = getattr(config, name)
        said = f"{flag_name(config, name)} must be {rule}, got {value!r}"
        raise ConfigError(said + (f". Fix: {fix}" if fix else "."))


def require_choice(config: Any, name: str) -> None:
    """Refuse a value of field `name` outside the choices its `option` lists."""
    choices = {f.name: f for f in dataclasses.fields(config)}[name].metadata["choices"]
    require(config, name, getattr(config, name) in choices, f"one of {', '.join(map(str, choices))}")
