"""What a LoRA adapter is: which linears get one, its shape, scale, dropout, initialisation and kernel."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

from ..kernels import KERNELS, MAX_RANK
from ..options import option, require, require_choice

ATTENTION_TARGETS = ("attn.c_attn", "attn.c_proj")
MLP_TARGETS = ("mlp.c_fc", "mlp.c_proj")
# What a target may say: a GPT-2 linear LoRA adapts, with its parent or alone (`c_proj` alone is both
# projections). Not lm_head: the loss reads its weight directly (tied to the token embedding).
TARGET_NAMES = ATTENTION_TARGETS + MLP_TARGETS + ("c_attn", "c_proj", "c_fc")
UNADAPTED = ("lm_head",)
# A's initial distribution (B starts at zero): Kaiming-uniform, as nn.Linear inits, on one of two fan-ins.
# "peft" (LoRA's and PEFT's): U(+-1/sqrt(d_in)), one draw shared by every client, so adapter similarity
# measures what clients learned, not their random starts. "reference" (the reference code's, whose A is
# [d_in, r], so Kaiming takes fan-in r): U(+-1/sqrt(r)), U(+-0.5) at r=4, drawn anew for every client.
INITS = ("peft", "reference")


@dataclass(frozen=True)
class LoRAConfig:
    """Which linears get adapters and how they are shaped; the defaults are the paper's runs'."""

    GROUP: ClassVar[str] = "lora"

    rank: int = option(4, "r: the inner dimension of each adapter", alias="lora_rank")
    alpha: float = option(32.0, "the adapter's update is scaled by alpha / r", alias="lora_alpha")
    dropout: float = option(0.1, "dropout on the adapter's input only", alias="lora_dropout")
    targets: tuple[str, ...] = option(
        ATTENTION_TARGETS + MLP_TARGETS,
        "the linear layers to adapt: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj (or c_attn, c_proj, c_fc "
        "alone; c_proj is both projections)",
        alias="lora_targets",
    )
    kernel: str = option(
        "auto",
        f"LoRA matmul: auto (the fused Triton kernel on CUDA up to rank {MAX_RANK}, else PyTorch), triton "
        f"(ranks up to {MAX_RANK}) or torch",
        choices=KERNELS,
    )
    init_seed: int | None = option(
        None,
        "seed of A's initialisation, one A shared by every adapter (None: torch's "
        "global generator; python -m collab.fit: the run's --seed)",
        alias="lora_init_seed",
    )
    init: str = option(
        "peft",
        "A's initialisation (B starts at zero): LoRA's and PEFT's U(+-1/sqrt(d_in)), one draw "
        "shared by all clients (peft), or the reference code's U(+-1/sqrt(r)), drawn per "
        "client (reference)",
        alias="lora_init",
        choices=INITS,
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        require(self, "rank", self.rank >= 1, ">= 1")
        require(self, "alpha", 0 < self.alpha < math.inf, "a finite number > 0")
        require(self, "dropout", 0.0 <= self.dropout < 1.0, "in [0, 1)")
        require(
            self,
            "targets",
            bool(self.targets),
            "at least one layer",
            f"adapt some of {ATTENTION_TARGETS + MLP_TARGETS}",
        )
        unknown = [t for t in self.targets if t not in TARGET_NAMES]
        require(
            self,
            "targets",
            not unknown,
            f"names of GPT-2's linear layers that LoRA adapts: {', '.join(ATTENTION_TARGETS + MLP_TARGETS)} "
            "(or c_attn, c_proj, c_fc alone)",
            f"correct or drop {', '.join(map(repr, unknown))}.",
        )
        require_choice(self, "kernel")
        require(
            self,
            "rank",
            self.kernel != "triton" or self.rank <= MAX_RANK,
            f"<= {MAX_RANK} with --lora.kernel triton (the fused kernel's largest)",
            f"--lora.kernel auto or torch (PyTorch's matmuls take any rank), or --lora.rank {MAX_RANK} or less",
        )
        require_choice(self, "init")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
        return d
