"""Putting adapters into a model and taking them out: inject, freeze the rest, merge into the base
weights and back, and export a client's model (or the base) as a plain GPT."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import torch
import torch.nn as nn

from ..clients import site_id
from ..model import GPT
from ..names import is_lora_name
from .config import UNADAPTED, LoRAConfig
from .layer import LoRALinear

ModuleT = TypeVar("ModuleT", bound=nn.Module)  # functions that change a model in place return it as given


def _answers_to(name: str, target: str) -> bool:
    """Whether module `name` answers to `target`: `transformer.h.0.attn.c_attn` to `attn.c_attn` or
    `c_attn` (whole names only, as PEFT's `target_modules`; not to `_attn`)."""
    return name == target or name.endswith("." + target)


def inject_lora(model: ModuleT, config: LoRAConfig, num_adapters: int = 1) -> ModuleT:
    """Swap every `nn.Linear` whose name ends in one of `config.targets` for a `LoRALinear`; every
    target must match one.

    A is drawn as `config.init` says (seeded by `config.init_seed` when given): by default every
    adapter starts from the same A, so adapter similarity later measures what clients learned, not
    their random starts. Everything is
    checked before the first layer is swapped, so a refused call leaves the model as it was.
    """
    if num_adapters < 1:
        raise ValueError(f"num_adapters must be >= 1, got {num_adapters}.")
    existing = [name for name, _ in lora_layers(model)]
    if existing:
        raise ValueError(f"{existing[0]} already has LoRA adapters; inject all targets at once into a fresh model.")
    linears = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rpartition(".")[2] not in UNADAPTED
    }
    matches = {name: linear for name, linear in linears.items() if any(_answers_to(name, t) for t in config.targets)}
    unmatched = [t for t in config.targets if not any(_answers_to(name, t) for name in matches)]
    if unmatched:
        has = sorted({".".join(name.split(".")[-2:]) for name in linears})
        raise ValueError(
            f"no nn.Linear of the model matches the LoRA target {unmatched[0]!r}; its linears that LoRA adapts "
            f"answer to {', '.join(has) or 'nothing'}."
        )
    generator = None
    if config.init_seed is not None:
        generator = torch.Generator().manual_seed(config.init_seed)
    for name, linear in matches.items():
        parent_name, _, child = name.rpartition(".")
        layer = LoRALinear.from_linear(linear, config, num_adapters)
        layer.reset_lora_parameters(generator)
        layer.site = site_id(f"{name}.lora_dropout")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    return model


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The stacked adapter tensors by parameter name (`...lora_A`, `...lora_B`)."""
    return {name: p for name, p in model.named_parameters() if is_lora_name(name)}


def mark_only_lora_as_trainable(model: ModuleT, bias: str = "none") -> ModuleT:
    """Freeze everything but the adapters (`bias="lora_only"` also trains the adapted linears' biases)."""
    if bias not in ("none", "lora_only", "all"):
        raise ValueError(f"bias must be 'none', 'lora_only' or 'all', got {bias!r}.")
    for name, p in model.named_parameters():
        p.requires_grad = is_lora_name(name) or (bias == "all" and name.endswith(".bias"))
    if bias == "lora_only":
        for _, layer in lora_layers(model):
            if layer.bias is not None:
                layer.bias.requires_grad = True
    return model


def model_lora_config(model: nn.Module) -> LoRAConfig:
    """The LoRAConfig every LoRA layer of `model` shares (`inject_lora` gives them one)."""
    layers = lora_layers(model)
    first = next(layers, None)
    if first is None:
        raise ValueError("the model has no LoRA layers; call inject_lora first.")
    return first[1].lora_config


def _check_adapter_index(layer: LoRALinear, adapter: int) -> None:
    if not 0 <= adapter < layer.num_adapters:
        raise IndexError(f"adapter {adapter} out of range: the model has {layer.num_adapters}.")


@torch.no_grad()
def merge_lora(model: ModuleT, adapter: int = 0) -> ModuleT:
    """Fold adapter `adapter` into the base weights; the model then runs as a plain GPT.

    Merging touches the frozen base, so it happens only when asked (never on `eval()`), and
    `unmerge_lora` restores the base before another adapter can be used.
    """
    for name, layer in lora_layers(model):
        if layer.merged_adapter is not None:
            raise RuntimeError(f"{name} already has adapter {layer.merged_adapter} merged; unmerge first.")
        _check_adapter_index(layer, adapter)
        layer.weight += layer.delta_weight(adapter).to(layer.weight.dtype)
        layer.merged_adapter = adapter
    return model


@torch.no_grad()
def unmerge_lora(model: ModuleT) -> ModuleT:
    """Subtract the merged adapter from the base weights again."""
    for _, layer in lora_layers(model):
        if layer.merged_adapter is not None:
            layer.weight -= layer.delta_weight(layer.merged_adapter).to(layer.weight.dtype)
            layer.merged_adapter = None
    return model


@torch.no_grad()
def _plain_gpt(model: nn.Module, adapter: int | None) -> GPT:
    """A plain GPT: the base weights plus adapter `adapter`'s update (None: the base alone).

    Built from the unmerged base whatever adapter is merged, so a merged model never gets an
    update twice; where `adapter` is the merged one, its weights are taken as they are.
    """
    if not isinstance(model, GPT):
        raise TypeError("expected a lora_gpt.GPT.")
    plain = GPT(model.config)
    state = {k: v for k, v in model.state_dict().items() if not is_lora_name(k)}
    for name, layer in lora_layers(model):
        if adapter is not None:
            _check_adapter_index(layer, adapter)
        if layer.merged_adapter == adapter:
            continue
        weight = layer.weight
        if layer.merged_adapter is not None:
            weight = weight - layer.delta_weight(layer.merged_adapter).to(weight.dtype)
        if adapter is not None:
            weight = weight + layer.delta_weight(adapter).to(weight.dtype)
        state[f"{name}.weight"] = weight
    plain.load_state_dict(state)
    return plain


def export_merged(model: nn.Module, adapter: int) -> GPT:
    """A plain GPT (no LoRA layers) whose weights include adapter `adapter`: client n's model."""
    return _plain_gpt(model, adapter)


def export_base(model: nn.Module) -> GPT:
    """The frozen base as a plain GPT, without any adapter's update even while one is merged."""
    return _plain_gpt(model, None)
