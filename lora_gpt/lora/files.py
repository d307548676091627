"""This project's own adapter files: every client's adapter, stacked, in `clients.safetensors` +
`clients.json` (PEFT's single-adapter files are `lora_gpt.peft_format`'s)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import FixableError
from .config import LoRAConfig
from .inject import ModuleT, lora_layers, lora_parameters, model_lora_config

# [N, ...] tensors under our parameter names. Its names differ from PEFT's on purpose.
STACKED_WEIGHTS = "clients.safetensors"
STACKED_CONFIG = "clients.json"
# What save_adapters wrote before the rename: the same contents under PEFT's file names.
LEGACY_WEIGHTS = "adapter_model.safetensors"
LEGACY_CONFIG = "adapter_config.json"
# LoRAConfig fields that change what the saved weights mean; dropout, kernel and the init do not.
MATH_FIELDS = ("rank", "alpha", "targets")


def _model_signature(model: nn.Module) -> dict:
    to_dict = getattr(getattr(model, "config", None), "to_dict", None)
    return to_dict() if callable(to_dict) else {}


def _select(adapters: slice | int | None) -> slice:
    return slice(adapters, adapters + 1) if isinstance(adapters, int) else (adapters or slice(None))


def save_adapters(model: nn.Module, folder: str | Path, adapters: slice | int | None = None) -> Path:
    """Save stacked adapters (all, or `adapters`) as `clients.safetensors` + `clients.json`.

    This project's own format, `[N, ...]` tensors under our parameter names; to hand one client's
    adapter to other tools, use `export_peft` (PEFT's format) or `export_merged`.
    """
    config = model_lora_config(model)
    select = _select(adapters)
    tensors = {name: p.detach()[select].contiguous().cpu() for name, p in lora_parameters(model).items()}
    num = next(iter(tensors.values())).shape[0]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (STACKED_WEIGHTS + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(folder / STACKED_WEIGHTS)
    meta = {"lora": config.to_dict(), "num_adapters": num, "model": _model_signature(model)}
    (folder / STACKED_CONFIG).write_text(json.dumps(meta, indent=2))
    return folder


class AdapterFileError(FixableError, ValueError):
    """An adapter folder's files are cut short, corrupt, or not what `save_adapters` writes."""


class AdapterNotFoundError(FixableError, FileNotFoundError):
    """An adapter folder lacks a file that `save_adapters` writes."""


def _stacked_files(folder: Path) -> tuple[dict, Path]:
    """The metadata and weights file of a stacked-adapter folder, new names or the old ones."""
    if (folder / STACKED_CONFIG).is_file():
        config, weights = folder / STACKED_CONFIG, folder / STACKED_WEIGHTS
    elif (folder / LEGACY_CONFIG).is_file():
        config, weights = folder / LEGACY_CONFIG, folder / LEGACY_WEIGHTS
    else:
        raise AdapterNotFoundError(
            f"{folder} holds neither {STACKED_CONFIG} nor {LEGACY_CONFIG}; save adapters with save_adapters()."
        )
    try:
        meta = json.loads(config.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterFileError(
            f"{config} is not valid JSON ({err}): it is cut short or corrupt. Fix: save the adapters again."
        ) from None
    if isinstance(meta, dict) and "peft_type" in meta:
        raise AdapterFileError(
            f"{folder} holds a PEFT adapter, not this project's stacked adapters; load it with "
            "lora_gpt.import_peft(model, folder, into=n)."
        )
    if not isinstance(meta, dict) or not isinstance(meta.get("lora"), dict):
        raise AdapterFileError(
            f"{config} holds no 'lora' settings: it is not what save_adapters writes, or it was overwritten. "
            "Fix: save the adapters again."
        )
    if not weights.is_file():
        raise AdapterNotFoundError(f"{weights} not found beside {config.name}; save the adapters again.")
    return meta, weights


def saved_lora_config(folder: str | Path) -> LoRAConfig:
    """The LoRAConfig adapters saved by `save_adapters` were made with: inject it to load them."""
    meta, _ = _stacked_files(Path(folder))
    try:
        return LoRAConfig(**meta["lora"])
    except TypeError as err:  # a setting LoRAConfig lacks, or of the wrong type
        raise AdapterFileError(
            f"{folder}: its 'lora' settings are not a LoRAConfig ({err}). Fix: save the adapters again."
        ) from None


@torch.no_grad()
def write_adapters(
    model: ModuleT, tensors: dict[str, torch.Tensor], into: slice | int | None, source: str | Path
) -> ModuleT:
    """Copy stacked tensors, named as `lora_parameters` names them, into slots `into` of every layer.

    Checks every name, shape and slot before the first copy. A slot whose adapter is merged is
    refused: `unmerge_lora` would subtract the new adapter from a base that holds the old one.
    """
    select = _select(into)
    params = lora_parameters(model)
    slots = next(lora_layers(model))[1].num_adapters if params else 0
    if isinstance(into, int) and not 0 <= into < slots:
        raise IndexError(f"{source}: slot {into} out of range 0-{slots - 1}: the model has {slots} adapter slots.")
    if set(tensors) != set(params):
        raise ValueError(
            f"{source}: adapter tensors do not match the model's LoRA layers "
            f"(missing {sorted(set(params) - set(tensors))[:3]}, "
            f"unexpected {sorted(set(tensors) - set(params))[:3]})."
        )
    for name, layer in lora_layers(model):
        merged = layer.merged_adapter
        if merged is not None and merged in range(layer.num_adapters)[select]:
            raise RuntimeError(
                f"{source}: adapter {merged} is merged into {name}'s base weights; "
                "call unmerge_lora(model) first, then load."
            )
    for name, p in params.items():
        if tensors[name].shape != p[select].shape:
            raise ValueError(
                f"{source}: {name} has shape {tuple(tensors[name].shape)}, "
                f"the model slots take {tuple(p[select].shape)}."
            )
    for name, p in params.items():
        p[select] = tensors[name].to(p.dtype)
    return model


def load_adapters(model: ModuleT, folder: str | Path, into: slice | int | None = None) -> ModuleT:
    """Load adapters saved by `save_adapters` into `model`'s stack (all, or slots `into`).

    Refuses adapters made for another model configuration or another rank, alpha or target set
    (`MATH_FIELDS`), naming the difference, rather than loading weights that cannot mean the same
    thing; LoRA dropout, kernel and init seed may differ, as they do not change the weights'
    meaning. Folders written before the rename (`adapter_model.safetensors` + `adapter_config.json`
    in this format) load as they are.
    """
    folder = Path(folder)
    meta, weights = _stacked_files(folder)
    ours = model_lora_config(model).to_dict()
    for key in MATH_FIELDS:
        if meta["lora"][key] != ours[key]:
            raise ValueError(
                f"{folder}: adapters have {key}={meta['lora'][key]}, the model has {ours[key]}; "
                "inject LoRA with lora_gpt.saved_lora_config(folder)."
            )
    signature = _model_signature(model)
    if meta.get("model") and signature:
        diff = {k: (v, signature.get(k)) for k, v in meta["model"].items() if k != "dropout" and signature.get(k) != v}
        if diff:
            raise ValueError(f"{folder}: adapters were made for another model; (saved, this) differ in {diff}.")
    try:
        tensors = load_file(str(weights))
    except SafetensorError as err:
        raise AdapterFileError(
            f"{weights} cannot be read ({err}): it is cut short or corrupt. Fix: save the adapters again."
        ) from None
    return write_adapters(model, tensors, into, folder)
