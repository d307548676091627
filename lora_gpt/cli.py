"""Every entry point's command line, config files and profiles, generated from its typed config groups.

A `Command` takes the groups an entry point is configured by (frozen dataclasses of
`lora_gpt.options.option` fields, each named by its `GROUP`) and gives:

- its parser: one option per field, named as YAML names it (`--lora.rank`, `lora: {rank: 4}`),
  with the field's short name (`--lora_rank`, `--iterations`) accepted as an alias; the help lists
  every option with its default and the value each profile gives it;
- `--config FILE`: options from YAML (or JSON) grouped as a run folder's `config.yaml`;
- `--profile NAME`: `NAME.yaml` of the command's profile folder, holding only what differs from
  the defaults, so a new profile is a new file;
- `--print_config`: the resolved configuration as YAML, which `--config` reads back; then exit 0;
- the resolved, typed configuration.

A value comes from, last one winning: the field's default, the profile, the config file, the
command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, NoReturn, TypeVar

from .errors import ConfigError
from .options import group_name, help_text, short_name

T = TypeVar("T")
Values = dict[str, dict[str, Any]]  # group -> field -> value
BUILT_IN = ("h", "help", "config", "print_config")  # and "profile" where a command has profiles


class HelpFormatter(argparse.HelpFormatter):
    """Wraps text at spaces only, so a name such as `dynamic-top-k` stays whole and can be copied
    (a word longer than the line, too),
    keeps paragraphs (of a description or an option's help) apart, and writes an option's names once
    before its value (`--lora.rank, --lora_rank RANK`)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        paragraphs = [
            textwrap.wrap(" ".join(p.split()), width, break_on_hyphens=False, break_long_words=False)
            for p in text.split("\n\n")
        ]
        return [line for i, lines in enumerate(paragraphs) for line in ([""] if i else []) + lines]

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        """Paragraphs filled to the width; an indented one (commands to copy) kept as it is."""
        return "\n\n".join(
            textwrap.indent(paragraph, indent)
            if paragraph.startswith("    ")
            else textwrap.fill(
                " ".join(paragraph.split()),
                width,
                initial_indent=indent,
                subsequent_indent=indent,
                break_on_hyphens=False,
                break_long_words=False,
            )
            for paragraph in textwrap.dedent(text).strip().split("\n\n")
        )

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings:
            return super()._format_action_invocation(action)
        if isinstance(action, argparse.BooleanOptionalAction):  # the names, then their --no- forms
            return ", ".join(sorted(action.option_strings, key=lambda s: s.startswith("--no-")))
        names = ", ".join(action.option_strings)
        if action.nargs == 0:
            return names
        return f"{names} {self._format_args(action, self._get_default_metavar_for_optional(action))}"


def fail(err: Exception) -> NoReturn:
    """What every entry point does with a problem the user can fix (a `FixableError`): one line,
    exit status 2."""
    sys.stderr.write(f"error: {err}\n")
    raise SystemExit(2)


def fields_of(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """A config dataclass's fields with their resolved types."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


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


def plain(value: Any) -> Any:
    """A field's value as YAML holds it: paths as text, tuples as lists."""
    return str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value


def shown(value: Any) -> str:
    """A value as it is written on the command line (quoted where it holds a space)."""
    return " ".join(shlex.quote(str(v)) for v in (value if isinstance(value, (tuple, list)) else [value]))


def to_yaml(values: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(dict(values), sort_keys=False)


def read_config_file(path: Path, where: str | None = None) -> dict[str, Any]:
    """A config file's grouped options (YAML, or JSON, which YAML reads too); errors name it as `where`
    (default `--config PATH`)."""
    import yaml

    where = where or f"--config {path}"
    try:
        values = yaml.safe_load(Path(path).read_bytes().decode("utf-8"))
    except OSError as err:
        raise ConfigError(f"{where}: {err.strerror}. Fix: give an existing YAML or JSON file.") from None
    except UnicodeDecodeError as err:
        line = err.object[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"{where}: line {line} is not UTF-8 text (byte {err.object[err.start : err.start + 1]!r}). "
            "Fix: save it as UTF-8."
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must hold a mapping of groups to their options (e.g. lora: {{rank: 8}}).")
    return values


@dataclass(frozen=True)
class Switches:
    """Boolean shorthands that edit one group's values, such as the paper's `--lora_mlp`, which adds
    (or, as `--no-lora_mlp`, drops) the MLP layers of `lora.targets`. `apply` gets the group's values
    set so far and the switches given (name -> on), and edits the values."""

    group: str
    helps: Mapping[str, str]  # switch name -> help
    apply: Callable[[dict[str, Any], dict[str, bool]], None]


@dataclass(frozen=True)
class Profiles:
    """A folder of named option sets, one YAML file each (`paper.yaml` is `--profile paper`), grouped
    as `config.yaml` and holding only what differs from the defaults; the file's leading comment
    says what it is for."""

    folder: Path

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(p.stem for p in self.folder.glob("*.yaml")))

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.yaml"

    def read(self, name: str) -> dict[str, Any]:
        return read_config_file(self.path(name), f"--profile {name} ({self.path(name)})")

    def description(self, name: str) -> str:
        """The file's leading comment lines, joined."""
        lines = []
        for line in self.path(name).read_text().splitlines():
            if not line.startswith("#"):
                break
            lines.append(line.lstrip("#").strip())
        return " ".join(lines)


class Command(Generic[T]):
    """One entry point's command line and config files, from its config `groups`; `build` makes the
    entry point's configuration from the groups' values (group name -> instance), and is where checks
    across groups happen. `only` shows a group's listed fields only (the others keep their defaults);
    `positional` lets a field be given without its flag (`python -m data.prepare RECIPE`)."""

    def __init__(
        self,
        prog: str,
        description: str | None,
        groups: Sequence[type],
        build: Callable[[dict[str, Any]], T],
        *,
        profiles: Path | None = None,
        only: Mapping[str, Sequence[str]] | None = None,
        positional: tuple[str, str] | None = None,
        switches: Sequence[Switches] = (),
    ) -> None:
        self.prog, self.description, self.build = prog, description, build
        self.groups: dict[str, type] = {}
        for cls in groups:
            name = group_name(cls)
            if not name:
                raise TypeError(f"{cls.__name__} names no GROUP: every config group says how YAML and flags name it.")
            self.groups[name] = cls
        only = only or {}
        self.options = {
            g: [(f, tp) for f, tp in fields_of(cls) if g not in only or f.name in only[g]]
            for g, cls in self.groups.items()
        }
        self.profiles = Profiles(profiles) if profiles is not None else None
        self.positional, self.switches = positional, tuple(switches)
        short = [short_name(f) for fields in self.options.values() for f, _ in fields]
        short += [name for s in self.switches for name in s.helps]
        taken = BUILT_IN + (("profile",) if self.profiles else ())
        clash = sorted({n for n in short if short.count(n) > 1 or n in taken})
        if clash:
            raise ValueError(f"{prog}: options share the short names {clash}; give the fields distinct aliases.")

    # --- values ---

    def _merge(self, into: Values, values: dict[str, Any], where: str) -> None:
        """Copy grouped `values` into `into`, coerced to the fields' types; unknown names are refused."""
        for group, items in values.items():
            if group not in self.groups:
                raise ConfigError(f"{where}: unknown group {group!r}; the groups are {', '.join(self.groups)}.")
            if not isinstance(items, dict):
                raise ConfigError(
                    f"{where}: {group!r} must be a mapping of its options (e.g. {group}: {{...}}), got {items!r}."
                )
            fields = {f.name: tp for f, tp in self.options[group]}
            for name, value in items.items():
                if name not in fields:
                    raise ConfigError(f"{where}: unknown option {group}.{name}; {group} has {', '.join(fields)}.")
                into[group][name] = coerce(fields[name], value, f"{where}: {group}.{name}")

    def profile_values(self, name: str) -> Values:
        """What profile `name` sets, by group and field, as the fields' types."""
        assert self.profiles is not None
        values: Values = {g: {} for g in self.groups}
        self._merge(values, self.profiles.read(name), f"--profile {name} ({self.profiles.path(name)})")
        return values

    def instances(self, given: dict[str, Any]) -> dict[str, Any]:
        """Each group's instance from parsed options (`dest` `GROUP.FIELD`; `profile`, `config` and
        `switch.NAME` too): the defaults, then the profile, the config file, the command line."""
        values: Values = {g: {} for g in self.groups}
        if given.get("profile") is not None:
            for group, items in self.profile_values(given["profile"]).items():
                values[group].update(items)
        if given.get("config") is not None:
            self._merge(values, read_config_file(given["config"]), f"--config {given['config']}")
        switched: dict[str, bool] = {}
        for dest, value in given.items():
            group, _, name = dest.partition(".")
            if group == "switch":
                switched[name] = value
            elif group in values:
                values[group][name] = value
        for s in self.switches:
            on = {name: switched[name] for name in s.helps if name in switched}
            if on:
                s.apply(values[s.group], on)
        return {g: cls(**values[g]) for g, cls in self.groups.items()}

    def dump(self, instances: Mapping[str, Any]) -> str:
        """The groups' values as YAML, grouped as `--config` reads them."""
        return to_yaml(
            {g: {f.name: plain(getattr(instances[g], f.name)) for f, _ in fields} for g, fields in self.options.items()}
        )

    def load(self, path: Path) -> T:
        """A grouped config file (a run folder's `config.yaml`) as this command's configuration."""
        values: Values = {g: {} for g in self.groups}
        self._merge(values, read_config_file(path, str(path)), str(path))
        return self.build({g: cls(**values[g]) for g, cls in self.groups.items()})

    # --- the command line ---

    def parser(self) -> argparse.ArgumentParser:
        """The parser of every option; an option left out stays out of the namespace, so `resolve`
        knows what was given (`dest` is `GROUP.FIELD`)."""
        profiles = self.profiles.names() if self.profiles else ()
        usage = "%(prog)s" + (f" [{self.positional[1]}]" if self.positional else "")
        usage += " [--config FILE]" + (f" [--profile {{{','.join(profiles)}}}]" if profiles else "")
        p = argparse.ArgumentParser(
            prog=self.prog,
            description=self.description,
            formatter_class=HelpFormatter,
            usage=usage + " [--print_config] [--OPTION VALUE ...]",
            argument_default=argparse.SUPPRESS,
        )
        group, fields = next(iter(self.options.items()))
        p.add_argument(
            "--config",
            type=Path,
            metavar="FILE",
            help=f"a YAML or JSON file of options by group ({group}: {{{fields[0][0].name}: ...}}), as "
            "--print_config writes them (and a run folder's config.yaml holds them); options on the command "
            "line override it",
        )
        if self.profiles:
            p.add_argument("--profile", choices=profiles, help=self._profile_help())
        p.add_argument(
            "--print_config",
            action="store_true",
            help="print the resolved configuration as YAML (to save, and give back with --config) and exit",
        )
        if self.positional:
            dest, metavar = self.positional
            p.add_argument(dest, nargs="?", metavar=metavar, help=f"the same as --{dest}")
        annotations = self._profile_annotations()
        for group, fields in self.options.items():
            doc = (self.groups[group].__doc__ or "").strip().split("\n\n")[0]
            g = p.add_argument_group(group, doc)
            for f, tp in fields:
                g.add_argument(f"--{group}.{f.name}", f"--{short_name(f)}", **self._argument(group, f, tp, annotations))
            for s in self.switches:
                if s.group == group:
                    for name, text in s.helps.items():
                        g.add_argument(
                            f"--{name}", dest=f"switch.{name}", action=argparse.BooleanOptionalAction, help=text
                        )
        return p

    def _argument(self, group: str, f: dataclasses.Field, tp: Any, annotations: dict) -> dict[str, Any]:
        base, _ = _unwrap(tp)
        said = [f"default {shown(f.default)}"] if f.default is not None else []
        said += [f"{profile}: {shown(v)}" for profile, v in annotations.get((group, f.name), [])]
        text = help_text(f) + (f" ({'; '.join(said)})" if said else "")
        kwargs: dict[str, Any] = {"dest": f"{group}.{f.name}", "help": text.replace("%", "%%")}
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            return kwargs
        if typing.get_origin(base) is tuple:
            args = typing.get_args(base)
            kwargs.update(type=args[0], nargs="+" if args[-1] is Ellipsis else len(args))
        else:
            kwargs["type"] = base
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        else:
            kwargs["metavar"] = f.name.upper()
        return kwargs

    def _profile_annotations(self) -> dict[tuple[str, str], list[tuple[str, Any]]]:
        """(group, field) -> [(profile, value)] for every value a profile sets."""
        said: dict[tuple[str, str], list[tuple[str, Any]]] = {}
        for profile in self.profiles.names() if self.profiles else ():
            for group, items in self.profile_values(profile).items():
                for name, value in items.items():
                    said.setdefault((group, name), []).append((profile, value))
        return said

    def profile_settings(self, name: str) -> str:
        """What profile `name` sets, as options: `--optim.iterations 500 --run.init gpt2 ...` (a switch
        as `--data.eval_overlap` or `--no-data.eval_overlap`)."""
        values = self.profile_values(name)
        return " ".join(
            (f"--{g}.{k}" if v else f"--no-{g}.{k}") if isinstance(v, bool) else f"--{g}.{k} {shown(v)}"
            for g, items in values.items()
            for k, v in items.items()
        )

    def _profile_help(self) -> str:
        assert self.profiles is not None
        folder = self.profiles.folder
        each = [
            f"{name}: {self.profiles.description(name)} Sets {self.profile_settings(name) or 'nothing'}."
            for name in self.profiles.names()
        ]
        return "\n\n".join(
            [
                f"a named set of options, read from {folder.parent.name}/{folder.name}/NAME.yaml before "
                "--config and the command line, which override it:",
                *each,
            ]
        )

    def resolve(self, namespace: argparse.Namespace) -> T:
        """The configuration from parsed options; with `--print_config`, print it and exit 0."""
        given = dict(vars(namespace))
        instances = self.instances(given)
        config = self.build(instances)
        if given.get("print_config"):
            sys.stdout.write(self.dump(instances))
            raise SystemExit(0)
        return config

    def parse(self, argv: Sequence[str] | None = None) -> T:
        """`argv` as this command's configuration; argparse's own errors exit 2, a `ConfigError` propagates."""
        return self.resolve(self.parser().parse_args(argv))

    def parse_known(self, argv: Sequence[str] | None = None) -> tuple[T, list[str]]:
        """`parse`, leaving the arguments it does not know for another command."""
        namespace, rest = self.parser().parse_known_args(argv)
        return self.resolve(namespace), rest
