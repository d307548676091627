"""The LoRA layer: an `nn.Linear` with N stacked per-client adapters, and the matmul it runs.

A `LoRALinear` is an `nn.Linear` (so base weights keep their names and a GPT-2 checkpoint loads
as it is) plus N adapters stored as stacked tensors `lora_A: [N, d_in, r]`, `lora_B: [N, r, d_out]`.
An input `[N, ..., d_in]` runs adapter n on slice n:

    y[n] = x[n] @ W.T + bias + (alpha / r) * (dropout(x[n]) @ A[n]) @ B[n]

A call may run a contiguous subset of the adapters (`clients`, a `ClientSlice`); with one
adapter any input shape is accepted. One stacked tensor per layer makes aggregation across
clients a single `einsum`, and the base matmul sees every client's tokens at once.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..clients import ClientSlice, zero_dropped
from ..kernels import resolve_kernel
from ..precision import compute_dtype
from .config import LoRAConfig


class LoRALinear(nn.Linear):
    """`nn.Linear` plus N stacked low-rank adapters (see the module docstring)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        config: LoRAConfig,
        num_adapters: int = 1,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.lora_config = config
        self.num_adapters = num_adapters
        self.lora_A = nn.Parameter(torch.empty(num_adapters, in_features, config.rank, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(num_adapters, config.rank, out_features, device=device, dtype=dtype))
        self.merged_adapter: int | None = None
        self.site = 0  # the adapter dropout's stream id, set from the module name by inject_lora
        self.reset_lora_parameters()

    def reset_lora_parameters(self, generator: torch.Generator | None = None) -> None:
        """B zero, so every update starts at 0; A uniform as `lora_config.init` says (`INITS`)."""
        rank, shared = self.lora_config.rank, self.lora_config.init == "peft"
        bound = 1.0 / math.sqrt(self.in_features if shared else rank)  # kaiming_uniform_(a=sqrt(5)) on the fan-in
        shape = (self.in_features, rank) if shared else (self.num_adapters, self.in_features, rank)
        with torch.no_grad():
            a = torch.empty(shape).uniform_(-bound, bound, generator=generator)
            self.lora_A.copy_(a.expand_as(self.lora_A))
            self.lora_B.zero_()

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: LoRAConfig, num_adapters: int) -> LoRALinear:
        layer = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            config,
            num_adapters,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        layer.weight = linear.weight
        layer.bias = linear.bias
        return layer

    def forward(self, x: torch.Tensor, clients: ClientSlice | None = None) -> torch.Tensor:
        if self.merged_adapter is not None:
            return super().forward(x)
        adapters = clients.adapters if clients is not None else slice(None)
        if clients is not None and clients.stop > self.num_adapters:
            raise IndexError(
                f"clients {clients.start}..{clients.stop - 1} asked of a layer with {self.num_adapters} adapters."
            )
        A, B = self.lora_A[adapters], self.lora_B[adapters]
        n = A.shape[0]
        if n == 1:
            x3 = x.reshape(1, -1, self.in_features)
        elif x.shape[0] == n:
            x3 = x.reshape(n, -1, self.in_features)
        else:
            raise ValueError(
                f"input has leading dim {x.shape[0]} but {n} adapters are active; feed a batch "
                f"shaped [num_adapters, ..., {self.in_features}] (one slice per client)."
            )
        y = lora_linear(x3, self.weight, self.bias, A, B, self.lora_config, self.training, clients, self.site)
        return y.reshape(*x.shape[:-1], self.out_features)

    def delta_weight(self, adapter: int) -> torch.Tensor:
        """Adapter `adapter`'s update to the base weight, in `nn.Linear`'s `[out, in]` layout."""
        return self.lora_config.scale * (self.lora_A[adapter] @ self.lora_B[adapter]).t()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.lora_config.rank}, num_adapters={self.num_adapters}"


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    A: torch.Tensor,
    B: torch.Tensor,
    config: LoRAConfig,
    training: bool,
    clients: ClientSlice | None = None,
    site: int = 0,
) -> torch.Tensor:
    """`x: [N, M, d_in]` -> `[N, M, d_out]` through the fused kernel or plain PyTorch; the adapter
    dropout draws from each client's stream when `clients` carries seeds."""
    p = config.dropout if training else 0.0
    if resolve_kernel(config.kernel, x.device, config.rank) == "triton":
        from ..kernels.triton_lora import fused_lora_linear

        seeds = None
        if p > 0 and clients is not None and clients.dropout_seeds is not None:
            seeds = torch.tensor(clients.site_seeds(site), dtype=torch.int64, device=x.device)
        return fused_lora_linear(x, weight, bias, A, B, config.scale, p, seeds)
    x = x.to(compute_dtype(x))  # cast once for both paths (autocast would cast it for each)
    dropped, factor = zero_dropped(x, p, training, clients, site)
    # y = x W^T + b + s * (dropout(x) A) B, with the add and both scales inside the last matmul
    return torch.baddbmm(F.linear(x, weight, bias), torch.bmm(dropped, A), B, alpha=config.scale * factor)
