"""Model FLOPs utilization (MFU): FLOPs per token of a causal LM and the peak of the device.

FLOPs per trained token follow nanoGPT and the PaLM paper: ``6 N + 12 L H Q T``. ``6 N`` is the
forward and backward pass through every weight matrix (2 FLOPs per multiply-add, backward twice
the forward) and ``12 L H Q T`` the attention scores and their weighted sum over ``T`` positions
(``L`` layers, ``H`` heads of ``Q`` dimensions). ``N`` counts every parameter that multiplies
activations: the output projection (LM head) is included once even when it is tied to the token
embedding, while lookup tables (the token embedding when untied, position embeddings) are not.
``transformers``' own ``floating_point_ops`` drops every embedding, so for a tied model like
GPT-2 it leaves the LM head out, the largest single matrix of a small model.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

# Dense peak TFLOP/s per device from the vendors' datasheets: (bf16/fp16 tensor cores, plain fp32).
# Matched in order against torch.cuda.get_device_name(), so longer names come first.
GPU_PEAK_TFLOPS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989.4, 66.9),
    ("H100 PCIe", 756.0, 51.2),
    ("H100", 989.4, 66.9),
    ("A100", 312.0, 19.5),
    ("L40S", 362.1, 91.6),
    ("L4", 121.0, 30.3),
    ("RTX 4090", 165.2, 82.6),
    ("V100", 125.0, 15.7),
    ("T4", 65.0, 8.1),
)


def matmul_parameters(model: nn.Module) -> int:
    """``N``: parameters that multiply activations, the output projection counted once."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    head_weight = getattr(head, "weight", None)
    lookups = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    lookups.discard(id(head_weight))
    return sum(p.numel() for p in model.parameters() if id(p) not in lookups)


def flops_per_token(model: PreTrainedModel, context_length: int) -> float:
    """Training FLOPs per token, ``6 N + 12 L H Q T``, for sequences of ``context_length`` tokens."""
    config = model.config
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 6 * matmul_parameters(model) + 12 * layers * heads * head_dim * context_length


@functools.cache
def measure_peak_tflops(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 1024) -> float:
    """Best TFLOP/s of a ``size`` x ``size`` matmul on ``device``, measured once per process."""
    rng = torch.Generator(device).manual_seed(0)  # not the global generator: a run's dropout stays reproducible
    a = torch.randn(size, size, device=device, dtype=dtype, generator=rng)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=rng)
    best = float("inf")
    for _ in range(6):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def datasheet_peak_tflops(device_name: str, dtype: torch.dtype = torch.float32) -> float | None:
    """The dense peak of a GPU named like ``torch.cuda.get_device_name()`` returns, if it is in the table."""
    for key, half, single in GPU_PEAK_TFLOPS:
        if key in device_name:
            return half if dtype in (torch.bfloat16, torch.float16) else single
    return None


def peak_tflops(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """Peak TFLOP/s of one device: the datasheet value of a known GPU, else measured with a matmul."""
    known = datasheet_peak_tflops(torch.cuda.get_device_name(device), dtype) if device.type == "cuda" else None
    return known or measure_peak_tflops(device, dtype)


@dataclass(frozen=True)
class MfuMeter:
    """Turns a tokens-per-second figure (all processes together) into model FLOPs utilization."""

    flops_per_token: float
    peak_tflops: float
    devices: int = 1

    def __call__(self, tokens_per_second: float) -> float:
        return self.flops_per_token * tokens_per_second / (self.peak_tflops * 1e12 * self.devices)
