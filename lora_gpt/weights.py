"""GPT-2 weights in Hugging Face's layout: `config.json` + `model.safetensors`.

Hugging Face's GPT-2 stores its linears as `Conv1D` with weights shaped `[in, out]`; ours are
`nn.Linear` `[out, in]`, so those four weights per block are transposed on the way in and out.
The project saves its own models in the same layout, so one loader reads GPT-2, a fine-tuned
export, and this project's pretrained bases alike (and `transformers` can read ours).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import GPTConfig
from .errors import FixableError
from .names import is_lora_name

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Causal-mask buffers that old checkpoints carry; our attention builds the mask itself.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# config.json's `activation_function` -> our `GPTConfig.gelu` (`gelu_pytorch_tanh` is the same tanh form)
ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact"}


class PretrainedNotFoundError(FixableError, FileNotFoundError):
    """GPT-2 weights were asked for but are neither on disk nor reachable."""


class WeightsFileError(FixableError, ValueError):
    """A GPT-2 folder's files are unreadable (cut short, corrupt) or do not match its config.json."""


def config_from_hf(hf: dict, dropout: float = 0.0) -> GPTConfig:
    """Our config from a Hugging Face GPT-2 `config.json` dict."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise WeightsFileError(
            f"expected a GPT-2 checkpoint, config.json says model_type={hf['model_type']!r}. "
            "Fix: pass a GPT-2 folder or hub name."
        )
    activation = hf.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise WeightsFileError(
            f"config.json's activation_function {activation!r} is not one this GPT-2 computes "
            f"({', '.join(ACTIVATIONS)}). Fix: pass a GPT-2 checkpoint with one of them."
        )
    return GPTConfig(
        block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
        vocab_size=hf["vocab_size"],
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=hf["n_embd"],
        dropout=dropout,
        bias=hf.get("bias", True),
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        gelu=ACTIVATIONS[activation],
    )


def config_to_hf(config: GPTConfig) -> dict:
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "vocab_size": config.vocab_size,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_embd": config.n_embd,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "activation_function": "gelu_new" if config.gelu == "tanh" else "gelu",
        "bias": config.bias,
        "tie_word_embeddings": True,
    }


def _resolve_folder(name_or_path: str | Path, allow_download: bool) -> Path:
    """A local folder holding config.json and model.safetensors, from disk, cache or hub."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (path / n).is_file()]
        if missing:
            raise PretrainedNotFoundError(
                f"{path} has no {' and no '.join(missing)}; a GPT-2 folder needs both "
                f"(save one with `GPT.save_pretrained` or `transformers`' `save_pretrained`)."
            )
        return path
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError as err:  # pragma: no cover - huggingface_hub ships with `datasets`
        raise PretrainedNotFoundError(
            f"{name_or_path!r} is not a local folder and huggingface_hub is not installed; "
            "`pip install huggingface_hub` or pass a folder path."
        ) from err
    attempts = [True, False] if allow_download else [True]
    last_error: Exception | None = None
    for local_only in attempts:
        try:
            files = [
                hf_hub_download(str(name_or_path), n, local_files_only=local_only) for n in (CONFIG_NAME, WEIGHTS_NAME)
            ]
            return Path(files[0]).parent
        except Exception as err:  # the hub client raises many kinds of errors offline
            last_error = err
    raise PretrainedNotFoundError(
        f"GPT-2 weights {name_or_path!r} were found neither as a local folder ({path.resolve()}) "
        f"nor in the Hugging Face cache ({HF_HUB_CACHE})"
        + (" and the hub could not be reached" if allow_download else "")
        + f" [{type(last_error).__name__}]. Fix: connect once to download them, or copy a folder "
        "with config.json and model.safetensors (e.g. from `huggingface-cli download gpt2`) here "
        "and pass its path, or start from this project's offline base (`python -m data.offline_base`)."
    )


def read_pretrained(
    name_or_path: str | Path, dropout: float = 0.0, allow_download: bool = True
) -> tuple[GPTConfig, dict[str, torch.Tensor], Path]:
    """`(config, state_dict in this project's naming and layout, weights file)` of a GPT-2 folder
    or hub name."""
    folder = _resolve_folder(name_or_path, allow_download)
    try:
        config = config_from_hf(json.loads((folder / CONFIG_NAME).read_text()), dropout=dropout)
    except (json.JSONDecodeError, KeyError) as err:
        raise WeightsFileError(
            f"{folder / CONFIG_NAME} is not a GPT-2 config.json ({type(err).__name__}: {err}). "
            "Fix: save the model again, or download it again."
        ) from err
    try:
        raw = load_file(str(folder / WEIGHTS_NAME))
    except SafetensorError as err:
        raise WeightsFileError(
            f"{folder / WEIGHTS_NAME} cannot be read ({err}): it is cut short or corrupt. "
            "Fix: save the model again, or download it again."
        ) from err
    state = {}
    for key, tensor in raw.items():
        if key.endswith(IGNORED_SUFFIXES):
            continue
        key = key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"
        state[key] = tensor.t() if key.endswith(CONV1D_SUFFIXES) else tensor
    if "lm_head.weight" not in state and "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]  # tied: GPT-2 checkpoints leave it out
    return config, state, folder / WEIGHTS_NAME


def check_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: Path) -> None:
    """Refuse weights whose names or shapes differ from the model their config.json describes."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightsFileError(
            f"{source} does not match a GPT-2 of its config.json: missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise WeightsFileError(
                f"{source}: {key} has shape {tuple(tensor.shape)}, config.json implies {tuple(expected[key].shape)}."
            )


def hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A model's own weights (no adapters) in Hugging Face's GPT-2 naming and layout."""
    out = {}
    for key, tensor in state.items():
        if is_lora_name(key) or key == "lm_head.weight":  # lm_head is tied to wte
            continue
        tensor = tensor.t() if key.endswith(CONV1D_SUFFIXES) else tensor
        out[key] = tensor.detach().contiguous().cpu()
    return out


def write_pretrained(config: GPTConfig, state: dict[str, torch.Tensor], folder: str | Path) -> Path:
    """Write config.json and model.safetensors (atomically, weights first)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (WEIGHTS_NAME + ".tmp")
    save_file(hf_state_dict(state), str(tmp), metadata={"format": "pt"})
    tmp.replace(folder / WEIGHTS_NAME)
    (folder / CONFIG_NAME).write_text(json.dumps(config_to_hf(config), indent=2))
    return folder
