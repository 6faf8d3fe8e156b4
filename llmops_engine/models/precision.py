"""Which compute dtype a quantized model really runs in on a given device.

The spec's `quantization.compute_dtype` says what the author wants; not every device can
do it. bfloat16 on a CPU without native bf16 instructions is emulated (several times
slower than float32), and float16 on CPU is not a fast path at all. Training and
inference resolve the dtype through this one function, so an adapter is always served
in the precision it was trained in on the same kind of device.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with native bf16 math


def compute_dtype_name(requested: str, device: str) -> str:
    """`requested` where the device runs it natively, else the nearest dtype it does."""
    if device.startswith("cuda"):
        import torch

        if requested == "bfloat16" and not torch.cuda.is_bf16_supported():
            return "float16"  # pre-Ampere GPUs: fp16 is the fast half-precision path
        return requested
    if requested == "bfloat16" and cpu_has_native_bf16():
        return requested
    return "float32"


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: assume emulation, which float32 always beats
        return False
    return any(flag in flags for flag in CPU_BF16_FLAGS)
