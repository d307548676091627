"""lora_gpt: a hand-written GPT-2 with injectable, stackable LoRA adapters."""
from .clients import ClientSlice, client_seeds
from .config import GPTConfig
from .lora import (
    LoRAConfig,
    LoRALinear,
    export_merged,
    inject_lora,
    load_adapters,
    lora_parameters,
    mark_only_lora_as_trainable,
    merge_lora,
    save_adapters,
    unmerge_lora,
)
from .model import GPT
from .tokenizer import get_tokenizer

__all__ = [
    "ClientSlice", "GPT", "GPTConfig", "client_seeds", "LoRAConfig", "LoRALinear", "export_merged", "get_tokenizer",
    "inject_lora", "load_adapters", "lora_parameters", "mark_only_lora_as_trainable",
    "merge_lora", "save_adapters", "unmerge_lora",
]
