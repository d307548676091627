"""One typed configuration per run: grouped, frozen dataclasses, each field with its default, help
and command-line name (`lora_gpt.options.option`), validated where it is built.

`FitConfig` holds the groups (the trust group is `collab.trust.TrustSettings`, the LoRA group
`lora_gpt.LoRAConfig`, the data group `data.DataConfig`); `python -m collab.fit`'s options are
generated from them (`collab.cli`), the run folder keeps them whole (`config.yaml`), and the
module, the aggregation callback and the data module take their groups as they are. A new option
is a new field of its group: its names, its help, its default and its check are written once.
Profiles, named sets of options (the paper's runs: `--profile paper`), are YAML files in
`collab/configs/`; options given explicitly override them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, get_type_hints

from data.config import DataConfig
from lora_gpt import LoRAConfig
from lora_gpt.cli import plain
from lora_gpt.config import GELUS
from lora_gpt.errors import ConfigError
from lora_gpt.options import option, require, require_choice
from lora_gpt.precision import PRECISIONS

from .attacks import AttackConfig
from .trust import TrustSettings

ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
LOGGERS = ("csv", "tensorboard", "wandb")


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer and its schedule: AdamW over the stacked adapters, OneCycle learning rate."""

    GROUP: ClassVar[str] = "optim"

    iterations: int = option(100, "optimizer steps")
    acc_steps: int = option(1, "micro-steps accumulated per optimizer step")
    lr: float = option(2e-3, "peak learning rate of the OneCycle schedule")
    betas: tuple[float, float] = option((0.9, 0.95), "AdamW's betas")
    weight_decay: float = option(1e-3, "AdamW's weight decay of the adapter matrices")
    warmup_percent: float = option(0.02, "share of the steps over which the rate warms up from --lr/100 to --lr")
    final_div: float = option(10.0, "the schedule ends at --lr / this, after a cosine from --lr")
    grad_clip: float = option(0.0, "clip each client's gradient norm to this (0: off)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        require(self, "iterations", self.iterations >= 1, ">= 1")
        require(self, "acc_steps", self.acc_steps >= 1, ">= 1")
        require(self, "lr", self.lr > 0, "> 0")
        require(self, "betas", len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "two numbers in [0, 1)")
        require(self, "weight_decay", self.weight_decay >= 0, ">= 0")
        require(self, "warmup_percent", 0 <= self.warmup_percent < 1, "in [0, 1)")
        require(self, "final_div", self.final_div > 0, "> 0")
        require(self, "grad_clip", self.grad_clip >= 0, ">= 0")


@dataclass(frozen=True)
class MemoryConfig:
    """How much goes through the model at once: exact either way, only memory and speed change."""

    GROUP: ClassVar[str] = "memory"

    client_chunk: int | None = option(
        None, "clients per forward/backward pass (default all): lower it to cap memory", resume_free=True
    )
    loss_chunk: int | None = option(
        None, "tokens whose full-vocabulary logits exist at once in the loss (default: ~16M logits)", resume_free=True
    )

    def __post_init__(self) -> None:
        for name in ("client_chunk", "loss_chunk"):
            require(self, name, getattr(self, name) is None or getattr(self, name) >= 1, ">= 1")


@dataclass(frozen=True)
class RunConfig:
    """The base model, the seed, when to evaluate and checkpoint, where and on what it runs."""

    GROUP: ClassVar[str] = "run"

    seed: int = option(
        0,
        "seed of the batches, the adapters' initialisation, every dropout stream and (unless "
        "--data.split_seed) the data split",
    )
    init: str = option(
        "offline",
        "base model: 'offline' (this project's pretrained base, built on first use), a "
        "GPT-2 hub name (gpt2, gpt2-medium, ...) or a folder with config.json + "
        "model.safetensors",
    )
    dropout: float = option(0.0, "dropout in the frozen base while training")
    gelu: str | None = option(
        None,
        "the base's GELU: tanh (the approximation GPT-2 was trained with, which transformers' GPT-2 "
        "computes) or exact (erf: the reference code's nn.GELU()); default: the one the base's "
        "config.json names (GPT-2's: tanh)",
        choices=GELUS,
    )
    eval_freq: int = option(20, "evaluate every client every this many steps (and at step 0, before training)")
    ckpt_freq: int | None = option(None, "checkpoint every this many steps (default --eval_freq)", resume_free=True)
    out: Path | None = option(None, "run folder (default runs/DATASET[-nCLIENTS]/TRUST/seedSEED)", resume_free=True)
    accelerator: str = option("auto", "cpu, gpu (cuda) or auto", choices=ACCELERATORS, resume_free=True)
    devices: int = option(1, "devices to run on", resume_free=True)
    precision: str = option(
        "auto",
        "auto: bf16-mixed where bfloat16 is native (GPUs, CPUs with avx512_bf16/amx), else 32-true",
        choices=PRECISIONS,
    )
    logger: str = option(
        "csv",
        "where metrics go: metrics.csv in the run folder, tensorboard or wandb",
        choices=LOGGERS,
        resume_free=True,
    )
    progress: bool = option(True, "progress bar", resume_free=True)

    def __post_init__(self) -> None:
        if self.out is not None:
            object.__setattr__(self, "out", Path(self.out))
        require(self, "seed", self.seed >= 0, ">= 0")
        require(self, "dropout", 0 <= self.dropout < 1, "in [0, 1)")
        if self.gelu is not None:
            require_choice(self, "gelu")
        require(self, "eval_freq", self.eval_freq >= 1, ">= 1")
        require(self, "ckpt_freq", self.ckpt_freq is None or self.ckpt_freq >= 1, ">= 1")
        require(self, "devices", self.devices >= 1, ">= 1")
        for name in ("accelerator", "precision", "logger"):
            require_choice(self, name)


@dataclass(frozen=True)
class FitConfig:
    """Everything one run of `python -m collab.fit` depends on, by group."""

    trust: TrustSettings = field(default_factory=TrustSettings)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    run: RunConfig = field(default_factory=RunConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)

    def __post_init__(self) -> None:
        for group in dataclasses.fields(self):  # inf or nan in any number: a run of NaNs, or silently no filter
            config = getattr(self, group.name)
            for f in dataclasses.fields(config):
                value = getattr(config, f.name)
                numbers = value if isinstance(value, tuple) else (value,)
                finite = all(math.isfinite(v) for v in numbers if isinstance(v, float))
                require(config, f.name, finite, "a finite number" if len(numbers) == 1 else "finite numbers")
        if self.data.num_clients is not None:
            self.check_clients(self.data.num_clients)

    def check_clients(self, num_clients: int) -> None:
        """Refuse options that cannot hold for `num_clients` clients."""
        if self.trust.variant == "top-k" and self.trust.k > num_clients:
            raise ConfigError(
                f"--k {self.trust.k} exceeds the {num_clients} clients: {self.trust.strategy} keeps "
                f"each client's k best peers. Fix: --k {num_clients} or less."
            )

    def warnings(self) -> list[str]:
        """What is allowed but probably not meant, said once at the start and kept in summary.json."""
        said = []
        steps = range(1, self.optim.iterations + 1)
        if self.trust.strategy != "none" and not any(map(self.trust.aggregates_at, steps)):
            said.append(
                f"no aggregation happens in {self.optim.iterations} steps (--pretraining_rounds "
                f"{self.trust.pretraining_rounds}, --trust_freq {self.trust.trust_freq}): every client "
                f"trains alone, as with --trust none. Fix: --pretraining_rounds below --iterations, or a "
                f"smaller --trust_freq."
            )
        return said

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain values by group, as `config.yaml` holds them (paths as text, tuples as lists)."""
        return {
            g.name: {
                f.name: plain(getattr(getattr(self, g.name), f.name)) for f in dataclasses.fields(getattr(self, g.name))
            }
            for g in dataclasses.fields(self)
        }

    @classmethod
    def groups(cls) -> dict[str, type]:
        """Group name -> its dataclass, in the order the help lists them."""
        hints = get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}
