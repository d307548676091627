"""`collab.fit`'s command line and config files, generated from the `FitConfig` dataclasses.

Every field of every group becomes one option (`--FIELD`, or the name its `option` gives), with
the field's help and the defaults of both profiles. A value comes from, last one winning: the
field's default, the `--profile`, the `--config` file (grouped as the run folder's
`config.yaml`), the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lora_gpt.errors import ConfigError
from lora_gpt.lora import ATTENTION_TARGETS, MLP_TARGETS
from lora_gpt.options import help_text

from .config import PROFILES, FitConfig

# The paper's switches for LoRA's targets, kept as shorthands for `--lora_targets`.
TARGET_SWITCHES = {"lora_causal_self_attention": ATTENTION_TARGETS, "lora_mlp": MLP_TARGETS}


class HelpFormatter(argparse.HelpFormatter):
    """Wraps text at spaces only, so a name such as `dynamic-top-k` stays whole and can be copied
    (a name longer than the line overflows it), and keeps a description's paragraphs apart."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n\n".join(
            textwrap.fill(
                " ".join(paragraph.split()),
                width,
                initial_indent=indent,
                subsequent_indent=indent,
                break_on_hyphens=False,
                break_long_words=False,
            )
            for paragraph in text.strip().split("\n\n")
        )


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or f.name


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """`(type, optional)`: `int | None` -> `(int, True)`."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def coerce(tp: Any, value: Any, where: str) -> Any:
    """`value` (from a config file) as the field type `tp` wants it, or a `ConfigError` naming `where`."""
    base, optional = _unwrap(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where} cannot be empty (null).")
    try:
        if typing.get_origin(base) is tuple:
            item = typing.get_args(base)[0]
            if not isinstance(value, (list, tuple)):
                raise TypeError(f"a list, got {value!r}")
            return tuple(coerce(item, v, where) for v in value)
        if base is bool:
            if not isinstance(value, bool):
                raise TypeError(f"true or false, got {value!r}")
            return value
        if base is int and (isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())):
            raise TypeError(f"a whole number, got {value!r}")
        return base(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where} must be {getattr(base, '__name__', base)}: {err}") from None


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _help(group: str, f: dataclasses.Field) -> str:
    """The field's help, then its default (where the help does not already say it) and the paper's."""
    paper = PROFILES["paper"].get(group, {}).get(f.name, f.default)
    said = [f"default {_shown(f.default)}"] if f.default is not None else []
    said += [] if paper == f.default else [f"--profile paper: {_shown(paper)}"]
    return help_text(f) + (f" ({'; '.join(said)})" if said else "")


def build_parser(prog: str = "python -m collab.fit", description: str | None = None) -> argparse.ArgumentParser:
    """The parser of every `FitConfig` field; an option left out stays out of the namespace, so
    `fit_config` knows what was given (`dest` is `GROUP.FIELD`)."""
    p = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=HelpFormatter,
        usage="%(prog)s [--config FILE] [--profile {cpu,paper}] [--OPTION VALUE ...]",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="a YAML or JSON file of options, grouped as a run folder's "
        "config.yaml; options on the command line override it",
    )
    p.add_argument(
        "--profile",
        choices=tuple(PROFILES),
        help="a named set of defaults: cpu (the default: small and "
        "quick on a CPU) or paper (everything the paper's runs "
        "used); options given explicitly override it",
    )
    for group, cls in FitConfig.groups().items():
        g = p.add_argument_group(group, (cls.__doc__ or "").strip())
        for f, tp in _fields(cls):
            base, _ = _unwrap(tp)
            kwargs: dict[str, Any] = {"dest": f"{group}.{f.name}", "help": _help(group, f)}
            if base is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            elif typing.get_origin(base) is tuple:
                args = typing.get_args(base)
                kwargs.update(type=args[0], nargs="+" if args[-1] is Ellipsis else len(args))
            else:
                kwargs["type"] = base
            if base is not bool:
                kwargs["metavar"] = _flag(f).upper()
            if f.metadata.get("choices"):
                kwargs.update(choices=f.metadata["choices"], metavar=None)
            g.add_argument(f"--{_flag(f)}", **kwargs)
        if cls.__name__ == "LoRAConfig":
            for switch, targets in TARGET_SWITCHES.items():
                g.add_argument(
                    f"--{switch}",
                    dest=f"switch.{switch}",
                    action=argparse.BooleanOptionalAction,
                    help=f"adapt {', '.join(targets)} (the paper's switch; shorthand for --lora_targets)",
                )
    return p


def read_config_file(path: Path) -> dict[str, Any]:
    """A config file's grouped options (YAML, or JSON, which YAML reads too)."""
    import yaml

    try:
        values = yaml.safe_load(Path(path).read_bytes().decode("utf-8"))
    except OSError as err:
        raise ConfigError(f"--config {path}: {err.strerror}. Fix: give an existing YAML or JSON file.") from None
    except UnicodeDecodeError as err:
        line = err.object[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"--config {path}: line {line} is not UTF-8 text (byte {err.object[err.start : err.start + 1]!r}). "
            "Fix: save it as UTF-8."
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path} is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path} must hold a mapping of groups ({', '.join(FitConfig.groups())}).")
    return values


def _merge(into: dict[str, dict[str, Any]], values: dict[str, Any], where: str) -> None:
    """Copy grouped `values` into `into`, coerced to the fields' types; unknown names are refused."""
    groups = FitConfig.groups()
    for group, items in values.items():
        if group not in groups:
            raise ConfigError(f"{where}: unknown group {group!r}; the groups are {', '.join(groups)}.")
        if not isinstance(items, dict):
            raise ConfigError(
                f"{where}: {group!r} must be a mapping of its options (e.g. {group}: {{...}}), got {items!r}."
            )
        fields = dict((f.name, (f, tp)) for f, tp in _fields(groups[group]))
        for name, value in items.items():
            if name not in fields:
                raise ConfigError(f"{where}: unknown option {group}.{name}; {group} has {', '.join(fields)}.")
            f, tp = fields[name]
            into[group][name] = coerce(tp, value, f"{where}: {group}.{name} (--{_flag(f)})")


def _apply_switches(values: dict[str, dict[str, Any]], switches: dict[str, bool]) -> None:
    """`--lora_mlp` / `--lora_causal_self_attention` (or their `--no-` forms) add or drop their layers."""
    if not switches:
        return
    current = tuple(values["lora"].get("targets", FitConfig().lora.targets))
    targets = tuple(t for t in current if not any(t in TARGET_SWITCHES[s] for s in switches))
    for switch, on in switches.items():
        targets += TARGET_SWITCHES[switch] if on else ()
    if not targets:
        raise ConfigError(
            "no LoRA targets: keep --lora_causal_self_attention or --lora_mlp on (or give --lora_targets)."
        )
    values["lora"]["targets"] = tuple(t for t in ATTENTION_TARGETS + MLP_TARGETS if t in targets) + tuple(
        t for t in targets if t not in ATTENTION_TARGETS + MLP_TARGETS
    )


def fit_config(namespace: argparse.Namespace) -> FitConfig:
    """The run's configuration from parsed options: defaults, then profile, config file, command line."""
    given = vars(namespace)
    profile = given.pop("profile", "cpu")
    file = given.pop("config", None)
    values: dict[str, dict[str, Any]] = {g: {} for g in FitConfig.groups()}
    _merge(values, PROFILES[profile], f"profile {profile}")
    if file is not None:
        _merge(values, read_config_file(file), f"--config {file}")
    switches = {k.partition(".")[2]: v for k, v in given.items() if k.startswith("switch.")}
    for dest, value in given.items():
        group, _, name = dest.partition(".")
        if group != "switch":
            values[group][name] = value
    _apply_switches(values, switches)
    return config_from_dict(values)


def config_from_dict(values: dict[str, dict[str, Any]]) -> FitConfig:
    """A `FitConfig` from grouped values (missing fields keep their defaults); each group checks itself."""
    groups = FitConfig.groups()
    return FitConfig(**{g: groups[g](**values.get(g, {})) for g in groups})


def load_config(path: Path) -> FitConfig:
    """A saved `config.yaml` (or any grouped config file) as a `FitConfig`."""
    values: dict[str, dict[str, Any]] = {g: {} for g in FitConfig.groups()}
    _merge(values, read_config_file(path), str(path))
    return config_from_dict(values)


def dump_config(config: FitConfig) -> str:
    """`config.yaml`'s text: every option by group."""
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def parse(argv: Sequence[str] | None = None, description: str | None = None) -> FitConfig:
    """Parse `argv` into a `FitConfig`; argparse's own errors exit 2, a `ConfigError` propagates."""
    return fit_config(build_parser(description=description).parse_args(argv))
