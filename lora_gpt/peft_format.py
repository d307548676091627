"""One client's adapter as a Hugging Face PEFT LoRA adapter for `transformers`' GPT-2, and back.

PEFT saves an adapter as `adapter_model.safetensors` + `adapter_config.json`, one tensor pair per
adapted module: `base_model.model.<module>.lora_A.weight` `[r, d_in]` and `...lora_B.weight`
`[d_out, r]`, with `y = base(x) + (lora_alpha / r) * B(A(x))`. Our stacked adapter n holds the
same two matrices transposed (`A[n]: [d_in, r]`, `B[n]: [r, d_out]`) under the same module
names, since ours are GPT-2's. GPT-2's `Conv1D` stores weights `[d_in, d_out]`, which PEFT
records as `fan_in_fan_out: true`; it changes how PEFT merges, not the adapter tensors.
Nothing here imports `peft`: the files are written and read directly, and the tests check them
with `peft` itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .hf_tokenizer import save_hf_tokenizer
from .lora import (
    ATTENTION_TARGETS,
    MLP_TARGETS,
    LoRAConfig,
    export_base,
    lora_layers,
    model_lora_config,
    write_adapters,
)
from .model import GPT
from .weights import config_from_hf

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
BASE_FOLDER = "base"  # export_peft writes the base model here, beside the adapter
PREFIX = "base_model.model."
KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight")
# adapter_config.json fields whose set values change the math in ways plain LoRA cannot express.
UNSUPPORTED = (
    "use_dora",
    "use_rslora",
    "lora_bias",
    "modules_to_save",
    "rank_pattern",
    "alpha_pattern",
    "layers_to_transform",
    "layer_replication",
    "target_parameters",
    "trainable_token_indices",
    "use_qalora",
    "use_bdlora",
    "alora_invocation_tokens",
)


def peft_config(lora: LoRAConfig, targets: list[str], base: str) -> dict:
    """`adapter_config.json` for a plain LoRA adapter on `transformers`' GPT2LMHeadModel."""
    alpha = int(lora.alpha) if float(lora.alpha).is_integer() else lora.alpha
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": lora.rank,
        "lora_alpha": alpha,
        "lora_dropout": lora.dropout,
        "target_modules": targets,
        "fan_in_fan_out": True,  # GPT-2's Conv1D layers store [d_in, d_out]
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }


def _target(module: str) -> str:
    """`transformer.h.3.attn.c_attn` -> `attn.c_attn`: the target a module name answers to."""
    return ".".join(module.split(".")[-2:])


def _targets(modules: Iterable[str]) -> tuple[str, ...]:
    """The targets that the modules answer to, in GPT-2's order."""
    found = {_target(m) for m in modules}
    return tuple(t for t in ATTENTION_TARGETS + MLP_TARGETS if t in found)


def export_peft(model: GPT, client: int, folder: str | Path) -> Path:
    """Write client `client`'s adapter as a PEFT adapter in `folder`, and its base in `folder/base`,
    both with GPT-2's tokenizer files.

    `PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(folder/base), folder)` then computes
    what our model computes with adapter `client`. The base is saved without any adapter's update
    (even while one is merged), and `base_model_name_or_path` names it by its absolute path.
    """
    lora = model_lora_config(model)
    layers = dict(lora_layers(model))
    num = next(iter(layers.values())).num_adapters
    if not 0 <= client < num:
        raise IndexError(f"client {client} out of range: the model has {num} adapters.")
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = layer.lora_A[client].detach().t().contiguous().cpu()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = layer.lora_B[client].detach().t().contiguous().cpu()
    folder = Path(folder)
    base = export_base(model).save_pretrained(folder / BASE_FOLDER)
    save_file(tensors, str(folder / PEFT_WEIGHTS), metadata={"format": "pt"})
    config = peft_config(lora, list(_targets(layers)), str(base.resolve()))
    (folder / PEFT_CONFIG).write_text(json.dumps(config, indent=2))
    for where in (folder, base):  # AutoTokenizer.from_pretrained reads either, offline
        save_hf_tokenizer(where, model.config)
    return folder


def _read_peft(folder: Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """A PEFT GPT-2 LoRA adapter's config and its `{module: {"A": [r, d_in], "B": [d_out, r]}}`."""
    if not (folder / PEFT_CONFIG).is_file():
        raise FileNotFoundError(
            f"{folder / PEFT_CONFIG} not found; a PEFT adapter folder holds {PEFT_CONFIG} "
            f"and {PEFT_WEIGHTS} (PeftModel.save_pretrained writes both)."
        )
    config = json.loads((folder / PEFT_CONFIG).read_text())
    if "peft_type" not in config and "lora" in config:
        raise ValueError(
            f"{folder} holds this project's stacked adapters (old file names), not a PEFT adapter; "
            "load them with lora_gpt.load_adapters(model, folder)."
        )
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{folder}: peft_type is {config.get('peft_type')!r}; only LORA adapters can be imported.")
    used = {key: config[key] for key in UNSUPPORTED if config.get(key)}
    if config.get("bias", "none") != "none":
        used["bias"] = config["bias"]
    if used:
        raise ValueError(
            f"{folder}: adapter_config.json sets {used}, which plain LoRA cannot express; "
            "use the adapter with peft itself, or retrain it without these options."
        )
    if not config.get("fan_in_fan_out"):
        raise ValueError(
            f"{folder}: fan_in_fan_out is false, so the adapter was made for a base whose layers "
            "are nn.Linear, not transformers' GPT-2 (whose Conv1D layers PEFT adapts with "
            "fan_in_fan_out true). Import only adapters made for GPT-2; if this one was, set "
            '"fan_in_fan_out": true in its adapter_config.json.'
        )
    if not (folder / PEFT_WEIGHTS).is_file():
        raise FileNotFoundError(
            f"{folder / PEFT_WEIGHTS} not found (an adapter_model.bin is not read); save the "
            "adapter with PeftModel.save_pretrained(folder, safe_serialization=True)."
        )
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(folder / PEFT_WEIGHTS)).items():
        match = KEY.fullmatch(key)
        if match is None:
            raise ValueError(
                f"{folder / PEFT_WEIGHTS} holds {key}, which is not a LoRA A or B matrix; "
                "only plain LoRA adapters can be imported."
            )
        modules.setdefault(match["module"], {})[match["ab"]] = tensor
    foreign = sorted(m for m in modules if _target(m) not in ATTENTION_TARGETS + MLP_TARGETS)
    if foreign:
        raise ValueError(
            f"{folder}: the adapter adapts {foreign[:3]}; this project adapts only GPT-2's "
            f"{ATTENTION_TARGETS + MLP_TARGETS}, so use this adapter with peft itself."
        )
    incomplete = sorted(m for m, ab in modules.items() if set(ab) != {"A", "B"})
    if incomplete or not modules:
        raise ValueError(f"{folder / PEFT_WEIGHTS}: LoRA A and B matrices missing for {incomplete or 'every module'}.")
    return config, modules


def lora_config_from_peft(folder: str | Path) -> LoRAConfig:
    """The LoRAConfig a PEFT GPT-2 adapter needs: `inject_lora` with it, then `import_peft`."""
    config, modules = _read_peft(Path(folder))
    return LoRAConfig(
        rank=config["r"],
        alpha=float(config["lora_alpha"]),
        dropout=config.get("lora_dropout", 0.0),
        targets=_targets(modules),
    )


def _check_base(folder: Path, config: dict, model: GPT) -> None:
    """Where the adapter names its base by a local folder, that base's config must be the model's."""
    base = Path(str(config.get("base_model_name_or_path") or "")).expanduser()
    if not (base.name and (base / "config.json").is_file()):
        return
    theirs = config_from_hf(json.loads((base / "config.json").read_text())).to_dict()
    ours = model.config.to_dict()
    diff = {k: (v, ours[k]) for k, v in theirs.items() if k != "dropout" and ours[k] != v}
    if diff:
        raise ValueError(
            f"{folder}: the adapter was made for the base {base}, whose config differs from this "
            f"model's in (adapter's base, this) {diff}; load it into GPT.from_pretrained({str(base)!r})."
        )


def import_peft(model: GPT, folder: str | Path, into: int) -> GPT:
    """Load a PEFT GPT-2 LoRA adapter into slot `into` of `model`'s stacked adapters.

    A client can so start from an adapter trained elsewhere. Which modules it adapts is read from
    its tensors' names, which say it exactly (`target_modules` may be a pattern). Refuses, naming
    the fix, an adapter whose base, targets, rank, alpha or layout differ from the model's; LoRA
    dropout may differ, as it does not change what the weights mean.
    """
    folder = Path(folder)
    config, modules = _read_peft(folder)
    _check_base(folder, config, model)
    layers = dict(lora_layers(model))
    lora = model_lora_config(model)
    fix = "inject LoRA with lora_gpt.lora_config_from_peft(folder)"
    theirs, mine = _targets(modules), _targets(layers)
    if theirs != mine:
        raise ValueError(f"{folder}: the adapter adapts {theirs}, the model's LoRA {mine}; {fix}.")
    if set(modules) != set(layers):
        extra = sorted(set(modules) ^ set(layers))
        raise ValueError(
            f"{folder}: the adapter's modules differ from the model's LoRA layers (e.g. {extra[:2]}): "
            "it was made for a base of another depth; load it into a model of that base."
        )
    for key, saved, model_value in (("r", config["r"], lora.rank), ("lora_alpha", config["lora_alpha"], lora.alpha)):
        if saved != model_value:
            raise ValueError(f"{folder}: the adapter has {key}={saved}, the model's LoRA {model_value}; {fix}.")
    stacked = {}
    for name, layer in layers.items():
        A, B = modules[name]["A"], modules[name]["B"]
        if A.shape != (lora.rank, layer.in_features) or B.shape != (layer.out_features, lora.rank):
            raise ValueError(
                f"{folder}: {name}'s A {tuple(A.shape)} and B {tuple(B.shape)} do not fit the layer "
                f"({layer.in_features} -> {layer.out_features}, rank {lora.rank}): the adapter was made "
                "for another base; load it into a model of that base."
            )
        stacked[f"{name}.lora_A"], stacked[f"{name}.lora_B"] = A.t()[None], B.t()[None]
    return write_adapters(model, stacked, into, folder)
