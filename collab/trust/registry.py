"""Trust strategies by name: the registry of families, strategy names and their aliases, and the
plugin files that add a user's own family.

A strategy name is a family's name, optionally with a variant suffix (`dynamic-ref-top-k`). The
registry knows families only as classes with a few class attributes (`name`, `variants`,
`scores_pairs`), so the settings that validate names need not import the families themselves.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from lora_gpt.errors import ConfigError

FAMILIES: dict[str, type] = {}  # family name -> its class (a `collab.trust.TrustFamily`)
ALIASES = {
    "ref": "dynamic-ref",
    "token": "dynamic-token",
    "local": "none",
    "fedavg": "naive",
    # the reference code's spellings
    "dynamic-thresh-ref": "dynamic-ref-thresh",
    "dynamic-top-k-ref": "dynamic-ref-top-k",
    "dynamic-thresh-token": "dynamic-token-thresh",
    "dynamic-top-k-token": "dynamic-token-top-k",
}
Family = TypeVar("Family", bound=type)


def register_family(cls: Family) -> Family:
    """Make a trust family available by its `name` (and its `variants` as `NAME-VARIANT`) to
    `--trust`, `collab.fit` and the Flower server. Use it as a class decorator."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a class attribute `name` (the --trust name) to be registered.")
    known = FAMILIES.get(name)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"a trust family named {name!r} is registered already ({known.__qualname__}).")
    FAMILIES[name] = cls
    return cls


def strategy_names() -> tuple[str, ...]:
    """Every strategy name: each family's, and with each of its variants."""
    return tuple(
        name + (f"-{v}" if v else "") for name, family in FAMILIES.items() for v in getattr(family, "variants", ("",))
    )


@dataclass(frozen=True)
class Strategy:
    """A parsed strategy name: the family `base`, filtered by `variant` before the softmax."""

    base: str
    variant: str = ""  # "", "thresh" or "top-k"

    @classmethod
    def parse(cls, name: str) -> Strategy:
        name = ALIASES.get(name, name)
        if name not in strategy_names():
            raise ValueError(
                f"unknown trust strategy {name!r}; choose one of {', '.join(strategy_names())} "
                f"(other names: {', '.join(f'{k}={v}' for k, v in ALIASES.items())}; a strategy of "
                "your own: --trust_plugins FILE.py)."
            )
        base = max((b for b in FAMILIES if name.startswith(b)), key=len)
        return cls(base, name[len(base) :].lstrip("-"))

    @property
    def name(self) -> str:
        return self.base + (f"-{self.variant}" if self.variant else "")


def load_plugins(specs: Sequence[str]) -> None:
    """Import the modules that register a user's trust families: a `.py` file path or a module
    name each. A module already imported is not run again."""
    for spec in specs:
        if spec.endswith(".py"):
            path = Path(spec).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"--trust_plugins: {spec} is not a file. Fix: give the path of a .py file.")
            name = f"collab_trust_plugin_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
            if name in sys.modules:
                continue
            module_spec = importlib.util.spec_from_file_location(name, path)
            if module_spec is None or module_spec.loader is None:
                raise ConfigError(f"--trust_plugins: {spec} cannot be imported as a Python file.")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except Exception:
                del sys.modules[name]
                raise
        else:
            try:
                importlib.import_module(spec)
            except ModuleNotFoundError as err:
                raise ConfigError(
                    f"--trust_plugins: no module {spec!r} ({err}). Fix: a module name importable here, or a .py path."
                ) from None
