"""Model configuration: one dataclass of scalars, with GPT-2's sizes and small CPU presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

GPT2_VOCAB_SIZE = 50_257  # GPT-2's byte-pair encoding: 50,000 merges, 256 bytes, <|endoftext|>
# The MLP's GELU: "tanh", the approximation GPT-2 was trained with (Hugging Face's "gelu_new"), or
# "exact", the erf form (`nn.GELU()`, Hugging Face's "gelu"), which the reference code runs GPT-2 with.
GELUS = ("tanh", "exact")


@dataclass(frozen=True)
class GPTConfig:
    block_size: int = 1024  # longest sequence the position table covers
    vocab_size: int = GPT2_VOCAB_SIZE
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # embedding, attention and residual dropout
    bias: bool = True  # biases in linears and LayerNorms, as GPT-2 has them
    layer_norm_epsilon: float = 1e-5
    gelu: str = "tanh"  # the MLP's activation (GELUS)

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}; "
                "pick a head count that divides the width."
            )
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")
        if self.gelu not in GELUS:
            raise ValueError(f"gelu must be one of {', '.join(GELUS)}, got {self.gelu!r}.")

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> GPTConfig:
        """Build a preset by name (`gpt2`, ..., `gpt2-xl`, or a small CPU preset)."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> GPTConfig:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, dict[str, Any]] = {
    # GPT-2 as released (124M, 350M, 774M, 1558M parameters).
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
    # Small GPT-2-shaped models for CPU work and tests.
    "gpt2-mini": dict(n_layer=4, n_head=4, n_embd=256, block_size=256),
    "gpt2-micro": dict(n_layer=4, n_head=4, n_embd=128, block_size=256),
    "gpt2-tiny": dict(n_layer=2, n_head=2, n_embd=32, block_size=64),
}
