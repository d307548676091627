"""Which numeric precision a run uses: bfloat16 mixed precision wherever the hardware has it.

On a CPU with native bfloat16 (x86 `avx512_bf16` or `amx_bf16`, Arm `bf16`) matrix multiplies
run 3-5x faster in bfloat16 than in float32; elsewhere bfloat16 is emulated and slower, so
`auto` picks it only where it is native, and asking for it where it is not is an error.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Literal, cast

import torch

from .errors import ConfigError

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
Precision = Literal["32-true", "bf16-mixed", "16-mixed"]  # what `auto` resolves among, as Lightning names them


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (read from /proc/cpuinfo's flags)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in info.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"}) or (platform.machine() == "aarch64" and "bf16" in flags)


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on `tensor` runs in: autocast's when it is on for the tensor's device,
    else the tensor's own."""
    device = tensor.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return tensor.dtype


def flush_denormals() -> None:
    """Treat float values below 1e-38 as zero on this CPU: denormal arithmetic takes microcode
    assists on x86, and Adam's second moments of near-zero gradients slowed its step 10x here."""
    torch.set_flush_denormal(True)


def native_bf16(device_type: str) -> bool:
    """Whether `device_type` ("cpu" or "cuda") runs bfloat16 natively."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device_type == "cpu" and cpu_has_native_bf16()


def resolve_precision(precision: str, device_type: str) -> Precision:
    """A Lightning precision for `precision` on `device_type`: `auto` is `bf16-mixed` where
    bfloat16 is native, else `32-true`; `bf16-mixed` where it is not native is refused."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if precision == "auto":
        return "bf16-mixed" if native_bf16(device_type) else "32-true"
    if precision == "bf16-mixed" and not native_bf16(device_type):
        what = (
            "this CPU has no native bfloat16 (no avx512_bf16/amx_bf16 flag)"
            if device_type == "cpu"
            else f"the {device_type} device does not support bfloat16"
        )
        raise ConfigError(
            f"--precision bf16-mixed: {what}, so bfloat16 would be emulated and slow. "
            "Fix: --precision 32-true (or auto, which picks it here)."
        )
    if precision == "16-mixed" and device_type != "cuda":
        raise ConfigError("--precision 16-mixed needs a CUDA GPU. Fix: --precision auto or 32-true.")
    return cast(Precision, precision)  # one of PRECISIONS other than auto, checked above
