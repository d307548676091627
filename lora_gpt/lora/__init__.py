"""LoRA with stacked per-client adapters, split by job as peft splits its LoRA tuner: what an
adapter is (`config`), the layer (`layer`), putting adapters into a model and merging or exporting
them (`inject`), and this project's adapter files (`files`)."""

from .config import ATTENTION_TARGETS, INITS, MLP_TARGETS, LoRAConfig
from .files import (
    AdapterFileError,
    AdapterNotFoundError,
    load_adapters,
    save_adapters,
    saved_lora_config,
    write_adapters,
)
from .inject import (
    export_base,
    export_merged,
    inject_lora,
    lora_layers,
    lora_parameters,
    mark_only_lora_as_trainable,
    merge_lora,
    model_lora_config,
    unmerge_lora,
)
from .layer import LoRALinear

__all__ = [
    "ATTENTION_TARGETS",
    "AdapterFileError",
    "AdapterNotFoundError",
    "INITS",
    "MLP_TARGETS",
    "LoRAConfig",
    "LoRALinear",
    "export_base",
    "export_merged",
    "inject_lora",
    "load_adapters",
    "lora_layers",
    "lora_parameters",
    "mark_only_lora_as_trainable",
    "merge_lora",
    "model_lora_config",
    "save_adapters",
    "saved_lora_config",
    "unmerge_lora",
    "write_adapters",
]
