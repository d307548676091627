"""LoRA with stacked per-client adapters.

A `LoRALinear` is an `nn.Linear` (so base weights keep their names and a GPT-2 checkpoint loads
as it is) plus N adapters stored as stacked tensors `lora_A: [N, d_in, r]`, `lora_B: [N, r, d_out]`.
An input `[N, ..., d_in]` runs adapter n on slice n:

    y[n] = x[n] @ W.T + bias + (alpha / r) * (dropout(x[n]) @ A[n]) @ B[n]

A call may run a contiguous subset of the adapters (`clients`, a `ClientSlice`); with one
adapter any input shape is accepted. One stacked tensor per layer makes aggregation across
clients a single `einsum`, and the base matmul sees every client's tokens at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .clients import ClientSlice, site_id, zero_dropped
from .kernels import KERNELS, resolve_kernel
from .model import GPT
from .names import is_lora_name
from .options import option, require, require_choice
from .precision import compute_dtype

ModuleT = TypeVar("ModuleT", bound=nn.Module)  # functions that change a model in place return it as given

ATTENTION_TARGETS = ("attn.c_attn", "attn.c_proj")
MLP_TARGETS = ("mlp.c_fc", "mlp.c_proj")
# A's initial distribution (B starts at zero): Kaiming-uniform, as nn.Linear inits, on one of two fan-ins.
# "peft" (LoRA's and PEFT's): U(+-1/sqrt(d_in)), one draw shared by every client, so adapter similarity
# measures what clients learned, not their random starts. "reference" (the reference code's, whose A is
# [d_in, r], so Kaiming takes fan-in r): U(+-1/sqrt(r)), U(+-0.5) at r=4, drawn anew for every client.
INITS = ("peft", "reference")
# This project's own stacked format: [N, ...] tensors under our parameter names. Its names differ
# from PEFT's on purpose (PEFT's single-adapter files: lora_gpt.peft_format).
STACKED_WEIGHTS = "clients.safetensors"
STACKED_CONFIG = "clients.json"
# What save_adapters wrote before the rename: the same contents under PEFT's file names.
LEGACY_WEIGHTS = "adapter_model.safetensors"
LEGACY_CONFIG = "adapter_config.json"
# LoRAConfig fields that change what the saved weights mean; dropout, kernel and the init do not.
MATH_FIELDS = ("rank", "alpha", "targets")


@dataclass(frozen=True)
class LoRAConfig:
    """Which linears get adapters and how they are shaped; the defaults are the paper's runs'."""

    GROUP: ClassVar[str] = "lora"

    rank: int = option(4, "r: the inner dimension of each adapter", alias="lora_rank")
    alpha: float = option(32.0, "the adapter's update is scaled by alpha / r", alias="lora_alpha")
    dropout: float = option(0.1, "dropout on the adapter's input only", alias="lora_dropout")
    targets: tuple[str, ...] = option(
        ATTENTION_TARGETS + MLP_TARGETS,
        "suffixes of the linear layers to adapt (GPT-2's: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)",
        alias="lora_targets",
    )
    kernel: str = option(
        "auto",
        "LoRA matmul: auto (the fused Triton kernel on CUDA, else PyTorch), triton or torch",
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
        require(self, "alpha", self.alpha > 0, "> 0")
        require(self, "dropout", 0.0 <= self.dropout < 1.0, "in [0, 1)")
        require(
            self,
            "targets",
            bool(self.targets),
            "at least one layer",
            f"adapt some of {ATTENTION_TARGETS + MLP_TARGETS}",
        )
        require_choice(self, "kernel")
        require_choice(self, "init")

    @classmethod
    def for_paper(cls, attention: bool = True, mlp: bool = True, **kwargs) -> LoRAConfig:
        """Targets as the paper's `--lora_causal_self_attention` / `--lora_mlp` flags choose."""
        targets = (ATTENTION_TARGETS if attention else ()) + (MLP_TARGETS if mlp else ())
        return cls(targets=targets, **kwargs)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
        return d


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
    if resolve_kernel(config.kernel, x.device) == "triton":
        from .kernels.triton_lora import fused_lora_linear

        seeds = None
        if p > 0 and clients is not None and clients.dropout_seeds is not None:
            seeds = torch.tensor(clients.site_seeds(site), dtype=torch.int64, device=x.device)
        return fused_lora_linear(x, weight, bias, A, B, config.scale, p, seeds)
    x = x.to(compute_dtype(x))  # cast once for both paths (autocast would cast it for each)
    dropped, factor = zero_dropped(x, p, training, clients, site)
    # y = x W^T + b + s * (dropout(x) A) B, with the add and both scales inside the last matmul
    return torch.baddbmm(F.linear(x, weight, bias), torch.bmm(dropped, A), B, alpha=config.scale * factor)


def inject_lora(model: ModuleT, config: LoRAConfig, num_adapters: int = 1) -> ModuleT:
    """Swap every `nn.Linear` whose name ends in one of `config.targets` for a `LoRALinear`.

    A is drawn as `config.init` says (seeded by `config.init_seed` when given): by default every
    adapter starts from the same A, so adapter similarity later measures what clients learned, not
    their random starts. Everything is
    checked before the first layer is swapped, so a refused call leaves the model as it was.
    """
    if num_adapters < 1:
        raise ValueError(f"num_adapters must be >= 1, got {num_adapters}.")
    existing = [name for name, _ in lora_layers(model)]
    if existing:
        raise ValueError(f"{existing[0]} already has LoRA adapters; inject all targets at once into a fresh model.")
    matches = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.endswith(config.targets)
    }
    if not matches:
        raise ValueError(
            f"no nn.Linear matches the LoRA targets {config.targets}; GPT-2's are {ATTENTION_TARGETS + MLP_TARGETS}."
        )
    generator = None
    if config.init_seed is not None:
        generator = torch.Generator().manual_seed(config.init_seed)
    for name, linear in matches.items():
        parent_name, _, child = name.rpartition(".")
        layer = LoRALinear.from_linear(linear, config, num_adapters)
        layer.reset_lora_parameters(generator)
        layer.site = site_id(f"{name}.lora_dropout")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    return model


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The stacked adapter tensors by parameter name (`...lora_A`, `...lora_B`)."""
    return {name: p for name, p in model.named_parameters() if is_lora_name(name)}


def mark_only_lora_as_trainable(model: ModuleT, bias: str = "none") -> ModuleT:
    """Freeze everything but the adapters (`bias="lora_only"` also trains the adapted linears' biases)."""
    if bias not in ("none", "lora_only", "all"):
        raise ValueError(f"bias must be 'none', 'lora_only' or 'all', got {bias!r}.")
    for name, p in model.named_parameters():
        p.requires_grad = is_lora_name(name) or (bias == "all" and name.endswith(".bias"))
    if bias == "lora_only":
        for _, layer in lora_layers(model):
            if layer.bias is not None:
                layer.bias.requires_grad = True
    return model


def model_lora_config(model: nn.Module) -> LoRAConfig:
    """The LoRAConfig every LoRA layer of `model` shares (`inject_lora` gives them one)."""
    layers = lora_layers(model)
    first = next(layers, None)
    if first is None:
        raise ValueError("the model has no LoRA layers; call inject_lora first.")
    return first[1].lora_config


def _check_adapter_index(layer: LoRALinear, adapter: int) -> None:
    if not 0 <= adapter < layer.num_adapters:
        raise IndexError(f"adapter {adapter} out of range: the model has {layer.num_adapters}.")


@torch.no_grad()
def merge_lora(model: ModuleT, adapter: int = 0) -> ModuleT:
    """Fold adapter `adapter` into the base weights; the model then runs as a plain GPT.

    Merging touches the frozen base, so it happens only when asked (never on `eval()`), and
    `unmerge_lora` restores the base before another adapter can be used.
    """
    for name, layer in lora_layers(model):
        if layer.merged_adapter is not None:
            raise RuntimeError(f"{name} already has adapter {layer.merged_adapter} merged; unmerge first.")
        _check_adapter_index(layer, adapter)
        layer.weight += layer.delta_weight(adapter).to(layer.weight.dtype)
        layer.merged_adapter = adapter
    return model


@torch.no_grad()
def unmerge_lora(model: ModuleT) -> ModuleT:
    """Subtract the merged adapter from the base weights again."""
    for _, layer in lora_layers(model):
        if layer.merged_adapter is not None:
            layer.weight -= layer.delta_weight(layer.merged_adapter).to(layer.weight.dtype)
            layer.merged_adapter = None
    return model


@torch.no_grad()
def _plain_gpt(model: nn.Module, adapter: int | None) -> GPT:
    """A plain GPT: the base weights plus adapter `adapter`'s update (None: the base alone).

    Built from the unmerged base whatever adapter is merged, so a merged model never gets an
    update twice; where `adapter` is the merged one, its weights are taken as they are.
    """
    if not isinstance(model, GPT):
        raise TypeError("expected a lora_gpt.GPT.")
    plain = GPT(model.config)
    state = {k: v for k, v in model.state_dict().items() if not is_lora_name(k)}
    for name, layer in lora_layers(model):
        if adapter is not None:
            _check_adapter_index(layer, adapter)
        if layer.merged_adapter == adapter:
            continue
        weight = layer.weight
        if layer.merged_adapter is not None:
            weight = weight - layer.delta_weight(layer.merged_adapter).to(weight.dtype)
        if adapter is not None:
            weight = weight + layer.delta_weight(adapter).to(weight.dtype)
        state[f"{name}.weight"] = weight
    plain.load_state_dict(state)
    return plain


def export_merged(model: nn.Module, adapter: int) -> GPT:
    """A plain GPT (no LoRA layers) whose weights include adapter `adapter`: client n's model."""
    return _plain_gpt(model, adapter)


def export_base(model: nn.Module) -> GPT:
    """The frozen base as a plain GPT, without any adapter's update even while one is merged."""
    return _plain_gpt(model, None)


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


def _stacked_files(folder: Path) -> tuple[dict, Path]:
    """The metadata and weights file of a stacked-adapter folder, new names or the old ones."""
    if (folder / STACKED_CONFIG).is_file():
        config, weights = folder / STACKED_CONFIG, folder / STACKED_WEIGHTS
    elif (folder / LEGACY_CONFIG).is_file():
        config, weights = folder / LEGACY_CONFIG, folder / LEGACY_WEIGHTS
    else:
        raise FileNotFoundError(
            f"{folder} holds neither {STACKED_CONFIG} nor {LEGACY_CONFIG}; save adapters with save_adapters()."
        )
    meta = json.loads(config.read_text())
    if "peft_type" in meta:
        raise ValueError(
            f"{folder} holds a PEFT adapter, not this project's stacked adapters; load it with "
            "lora_gpt.import_peft(model, folder, into=n)."
        )
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found beside {config.name}; save the adapters again.")
    return meta, weights


def saved_lora_config(folder: str | Path) -> LoRAConfig:
    """The LoRAConfig adapters saved by `save_adapters` were made with: inject it to load them."""
    meta, _ = _stacked_files(Path(folder))
    return LoRAConfig(**meta["lora"])


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
    return write_adapters(model, load_file(str(weights)), into, folder)
