"""How adapter tensors are told apart from base weights: by their parameter names."""

from __future__ import annotations

ADAPTER_PARAMETERS = ("lora_A", "lora_B")


def is_lora_name(name: str) -> bool:
    """Whether a parameter or state-dict name is an adapter tensor (`...lora_A`, `...lora_B`)."""
    return name.rpartition(".")[2] in ADAPTER_PARAMETERS
