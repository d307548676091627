"""`python -m collab.fit`'s command line, and the commands that extend it (the Flower launchers,
`traffic`, the demo): the `FitConfig` groups through `lora_gpt.cli`'s one mechanism, with the
profiles of `collab/configs/` and the paper's switches for LoRA's targets. `load_config` and
`dump_config` read and write a run folder's `config.yaml`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from lora_gpt import LoRAConfig
from lora_gpt.cli import Command, Profiles, Switches, to_yaml
from lora_gpt.errors import ConfigError
from lora_gpt.lora import ATTENTION_TARGETS, MLP_TARGETS

from .config import FitConfig

T = TypeVar("T")
PROFILES = Path(__file__).parent / "configs"  # --profile NAME reads NAME.yaml here
# The paper's switches for LoRA's targets, kept as shorthands for `--lora.targets`.
TARGET_SWITCHES = {"lora_causal_self_attention": ATTENTION_TARGETS, "lora_mlp": MLP_TARGETS}


def _switch_targets(lora: dict[str, Any], switches: dict[str, bool]) -> None:
    """`--lora_mlp` / `--lora_causal_self_attention` (or their `--no-` forms) add or drop their layers."""
    current = tuple(lora.get("targets", LoRAConfig().targets))
    targets = tuple(t for t in current if not any(t in TARGET_SWITCHES[s] for s in switches))
    for switch, on in switches.items():
        targets += TARGET_SWITCHES[switch] if on else ()
    if not targets:
        raise ConfigError(
            "no LoRA targets: keep --lora_causal_self_attention or --lora_mlp on (or give --lora.targets)."
        )
    known = ATTENTION_TARGETS + MLP_TARGETS
    lora["targets"] = tuple(t for t in known if t in targets) + tuple(t for t in targets if t not in known)


LORA_SWITCHES = Switches(
    "lora",
    {
        name: f"adapt {', '.join(targets)} (the paper's switch; shorthand for --lora.targets)"
        for name, targets in TARGET_SWITCHES.items()
    },
    _switch_targets,
)


def fit_part(groups: Mapping[str, Any]) -> FitConfig:
    """The `FitConfig` of a command's groups (which may hold more, such as the Flower options)."""
    return FitConfig(**{name: groups[name] for name in FitConfig.groups()})


def command_with_fit_options(
    prog: str,
    description: str | None,
    build: Callable[[dict[str, Any]], T],
    extra: Sequence[type] = (),
    only: Mapping[str, Sequence[str]] | None = None,
) -> Command[T]:
    """A command taking `collab.fit`'s options, its profiles and switches, and the groups `extra`."""
    return Command(
        prog,
        description,
        [*FitConfig.groups().values(), *extra],
        build,
        profiles=PROFILES,
        only=only,
        switches=[LORA_SWITCHES],
    )


def fit_command(description: str | None = None) -> Command[FitConfig]:
    """`python -m collab.fit`'s command."""
    return command_with_fit_options("python -m collab.fit", description, fit_part)


def profile_names() -> tuple[str, ...]:
    """The profiles `--profile` takes: the YAML files of `collab/configs/`."""
    return Profiles(PROFILES).names()


def parse(argv: Sequence[str] | None = None, description: str | None = None) -> FitConfig:
    """Parse `argv` as `collab.fit` does; argparse's own errors exit 2, a `ConfigError` propagates."""
    return fit_command(description).parse(argv)


def load_config(path: Path) -> FitConfig:
    """A saved `config.yaml` (or any grouped config file) as a `FitConfig`."""
    return fit_command().load(path)


def dump_config(config: FitConfig) -> str:
    """`config.yaml`'s text: every option by group."""
    return to_yaml(config.to_dict())
