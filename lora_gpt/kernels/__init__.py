"""Which LoRA matmul runs: the fused Triton kernel or plain PyTorch.

Triton is imported lazily, so `import lora_gpt` never needs it. On the CPU the kernel runs only
under Triton's interpreter (`TRITON_INTERPRET=1`, for tests); `auto` uses it on CUDA only, and only
up to the kernel's largest rank, `MAX_RANK`: above it `auto` runs PyTorch's matmuls (saying so once),
and `triton` is refused where the configuration is made (`LoRAConfig`), not at the first forward pass.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import warnings

import torch

from ..errors import ConfigError, FixableError

KERNELS = ("auto", "triton", "torch")
MAX_RANK = 64  # the fused kernel pads the rank to a power of two >= 16 in registers; 64 is its largest


class KernelUnavailableError(FixableError, RuntimeError):
    """`kernel='triton'` was asked for where the fused kernel cannot run."""


@functools.cache
def _triton_importable() -> bool:
    """Whether `import triton` works (a broken install counts as missing); asked only when the
    kernel may run, so `import lora_gpt` and the CPU path never import Triton."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means: use the PyTorch path
        return False
    return True


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the fused kernel cannot run on `device`, or None when it can."""
    if not _triton_importable():
        return "Triton is not installed or fails to import (`pip install triton`)"
    if device.type == "cuda":
        return None
    if os.environ.get("TRITON_INTERPRET") == "1":
        module = sys.modules.get(f"{__name__}.triton_lora")
        if module is not None and not module.INTERPRET:
            return "TRITON_INTERPRET=1 was set after the kernel module was imported; set it before starting Python"
        return None
    return (
        f"the fused kernel needs a CUDA device, and the input is on {device.type} "
        "(set TRITON_INTERPRET=1 before starting Python to run it, slowly, on the CPU)"
    )


@functools.cache
def _resolve(kernel: str, device_type: str, too_wide: bool) -> str:
    if kernel not in KERNELS:
        raise ConfigError(f"kernel must be one of {KERNELS}, got {kernel!r}.")
    if kernel == "torch" or (kernel == "auto" and device_type != "cuda"):
        return "torch"  # auto off CUDA: the PyTorch path, silently (the interpreter is for tests)
    if kernel == "auto" and too_wide:
        warnings.warn(
            f"LoRA kernel 'auto' runs PyTorch's matmuls on CUDA: the fused kernel takes ranks up to {MAX_RANK}.",
            stacklevel=3,
        )
        return "torch"
    reason = triton_unavailable_reason(torch.device(device_type))
    if kernel == "triton":
        if reason:
            raise KernelUnavailableError(f"kernel='triton' cannot run: {reason}. Use kernel='auto' or 'torch'.")
        return "triton"
    if reason:
        warnings.warn(f"LoRA kernel 'auto' falls back to PyTorch on CUDA: {reason}.", stacklevel=3)
        return "torch"
    return "triton"


def resolve_kernel(kernel: str, device: torch.device, rank: int) -> str:
    """'triton' or 'torch' for `kernel` ('auto', 'triton' or 'torch') on `device` at LoRA rank `rank`;
    cached, since every LoRA layer asks on every forward (a fallback warning is therefore given once)."""
    return _resolve(kernel, device.type, rank > MAX_RANK)
