"""What the device can run natively: decides clmkit's default precision and Muon's iteration dtype.

bfloat16 is the default only where the hardware computes in it: GPUs from Ampere on (compute
capability 8) and CPUs with AMX tiles (``amx_bf16``). Elsewhere bfloat16 is emulated in fp32 and
measured slower (``bench/throughput.py`` prints the ratio on the machine it runs on).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware: a CUDA GPU of compute capability 8 or more,
    or a CPU with AMX (``amx_bf16``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return "amx_bf16" in cpu_flags()
    return False


def training_device(use_cpu: bool = False) -> torch.device:
    """The device a single-process run trains on: the GPU when there is one and ``use_cpu`` is off."""
    return torch.device("cuda" if torch.cuda.is_available() and not use_cpu else "cpu")
