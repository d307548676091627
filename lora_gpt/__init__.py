"""lora_gpt: a hand-written GPT-2 with injectable, stackable LoRA adapters."""

from .clients import ClientSlice, client_seeds, client_slices
from .config import GPTConfig
from .hf_tokenizer import save_hf_tokenizer
from .lora import (
    LoRAConfig,
    LoRALinear,
    export_base,
    export_merged,
    inject_lora,
    load_adapters,
    lora_parameters,
    mark_only_lora_as_trainable,
    merge_lora,
    save_adapters,
    saved_lora_config,
    unmerge_lora,
)
from .model import GPT
from .names import is_lora_name
from .peft_format import export_peft, import_peft, lora_config_from_peft
from .tokenizer import get_tokenizer

__all__ = [
    "ClientSlice",
    "GPT",
    "GPTConfig",
    "LoRAConfig",
    "LoRALinear",
    "client_seeds",
    "client_slices",
    "export_base",
    "export_merged",
    "export_peft",
    "get_tokenizer",
    "import_peft",
    "inject_lora",
    "is_lora_name",
    "load_adapters",
    "lora_config_from_peft",
    "lora_parameters",
    "mark_only_lora_as_trainable",
    "merge_lora",
    "save_adapters",
    "save_hf_tokenizer",
    "saved_lora_config",
    "unmerge_lora",
]
