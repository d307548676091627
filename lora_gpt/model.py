"""A hand-written GPT-2, built bottom-up: LayerNorm -> attention -> MLP -> Block -> GPT.

Every module accepts any leading batch shape. A collaborative batch `[N, b, T]` (b sequences
for each of N clients) therefore flows through unchanged, so that a LoRA linear can run
adapter n on slice n while the frozen base sees all N*b*T tokens in one matmul. Which clients
the slices belong to is an argument of the call (`clients`), passed down to every linear and
dropout, never state left on the layers.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .clients import ClientSlice, client_dropout, site_id
from .config import GPTConfig
from .weights import check_state, read_pretrained, write_pretrained


class Linear(nn.Linear):
    """`nn.Linear` that accepts (and ignores) the call's clients, like `LoRALinear` uses them."""

    def forward(self, x: torch.Tensor, clients: ClientSlice | None = None) -> torch.Tensor:
        return super().forward(x)


class Dropout(nn.Dropout):
    """Dropout that draws each client's mask from that client's own stream (see `clients.py`)."""

    site = 0  # set from the module name by GPT

    def forward(self, x: torch.Tensor, clients: ClientSlice | None = None) -> torch.Tensor:
        return client_dropout(x, self.p, self.training, clients, self.site)


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no `bias=False` before 2.1)."""

    def __init__(self, dim: int, bias: bool, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = Dropout(config.dropout)  # on the attention weights
        self.resid_dropout = Dropout(config.dropout)
        self.n_head = config.n_head

    def forward(self, x: torch.Tensor, clients: ClientSlice | None = None) -> torch.Tensor:
        *lead, T, C = x.shape
        q, k, v = self.c_attn(x, clients).split(C, dim=-1)
        # [..., T, C] -> [prod(lead), H, T, C/H] for the fused attention kernel
        q, k, v = (t.reshape(-1, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        p = self.attn_dropout.p if self.training else 0.0
        streams = p > 0 and clients is not None and clients.dropout_seeds is not None
        # The fused kernel draws dropout from the global generator, and on a CPU it is slower in
        # bfloat16 than the three plain ops (measured 3x at T=128); elsewhere it is the better one.
        if streams or (q.device.type == "cpu" and q.dtype == torch.bfloat16):
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.shape[-1]))
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
            y = self.attn_dropout(att.view(*lead, *att.shape[1:]), clients).view(att.shape) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        y = y.transpose(1, 2).reshape(*lead, T, C)
        return self.resid_dropout(self.c_proj(y, clients), clients)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)
        # GPT-2 was trained with the tanh approximation of GELU ("gelu_new"); "exact" is the erf form.
        self.approximate = "tanh" if config.gelu == "tanh" else "none"

    def forward(self, x: torch.Tensor, clients: ClientSlice | None = None) -> torch.Tensor:
        hidden = F.gelu(self.c_fc(x, clients), approximate=self.approximate)
        return self.dropout(self.c_proj(hidden, clients), clients)


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.bias, config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, config.bias, config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, clients: ClientSlice | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), clients)
        return x + self.mlp(self.ln_2(x), clients)


class Transformer(nn.Module):
    """GPT-2's trunk, its modules under the names GPT-2 checkpoints give them (`transformer.h.0...`)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = LayerNorm(config.n_embd, config.bias, config.layer_norm_epsilon)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = Transformer(config)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the output projection reuses the token embedding, as in GPT-2.
        self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections keeps the residual stream's
        # variance from growing with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        for name, module in self.named_modules():
            if isinstance(module, Dropout):
                module.site = site_id(name)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; position embeddings excluded by default, as GPT-2 reports it."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def hidden_states(self, idx: torch.Tensor, clients: ClientSlice | None = None) -> torch.Tensor:
        """Final-LayerNorm activations `[..., T, C]` for token ids `[..., T]` (see `forward`)."""
        T = idx.shape[-1]
        if T > self.config.block_size:
            raise ValueError(
                f"sequence length {T} exceeds the model's block_size {self.config.block_size}; "
                "use shorter sequences or a model with a longer position table."
            )
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos), clients)
        for block in self.transformer.h:
            x = block(x, clients)
        return self.transformer.ln_f(x)

    def forward(self, idx: torch.Tensor, clients: ClientSlice | None = None) -> torch.Tensor:
        """Logits `[..., T, vocab]` for token ids `[..., T]` (e.g. `[b, T]` or `[N, b, T]`).

        With LoRA adapters, `clients` says which adapters the leading slices run (default: all,
        one slice each; any shape with a single adapter) and gives each client its dropout stream.
        """
        return self.lm_head(self.hidden_states(idx, clients))

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
    ) -> torch.Tensor:
        """Sample `max_new_tokens` continuations of `idx` `[..., T]` (temperature 0 = greedy)."""
        for _ in range(max_new_tokens):
            context = idx[..., -self.config.block_size :]
            logits = self(context)[..., -1, :]
            if temperature == 0:
                next_token = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                next_token = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1)
                next_token = next_token.reshape(*probs.shape[:-1], 1)
            idx = torch.cat([idx, next_token], dim=-1)
        return idx

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, dropout: float = 0.0, allow_download: bool = True, gelu: str | None = None
    ) -> GPT:
        """Load Hugging Face GPT-2 weights (a hub name such as `gpt2`, or a local folder), checking
        every tensor's name and shape; `gelu` (`GELUS`) replaces the activation its config.json names."""
        config, state, source = read_pretrained(name_or_path, dropout=dropout, allow_download=allow_download)
        model = cls(config if gelu is None else config.replace(gelu=gelu))
        check_state(state, model.state_dict(), source)
        model.load_state_dict(state)
        return model

    def save_pretrained(self, folder: str | Path) -> Path:
        """Save in Hugging Face's GPT-2 layout, so `from_pretrained` and `transformers` read it."""
        return write_pretrained(self.config, self.state_dict(), folder)
