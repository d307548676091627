"""lora_gpt: a hand-written GPT-2 with injectable, stackable LoRA adapters."""
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
    use_adapters,
)
from .model import GPT
from .tokenizer import get_tokenizer

__all__ = [
    "GPT", "GPTConfig", "LoRAConfig", "LoRALinear", "export_merged", "get_tokenizer",
    "inject_lora", "load_adapters", "lora_parameters", "mark_only_lora_as_trainable",
    "merge_lora", "save_adapters", "unmerge_lora", "use_adapters",
]
