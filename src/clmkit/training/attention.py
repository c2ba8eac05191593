"""Attention on CPUs under bf16/fp16 autocast: short sequences run torch's SDPA in fp32, which is faster there.

torch's CPU flash-attention kernel in bfloat16 is slower than in fp32 for small (query length x head
size) blocks: forward+backward over 2,048 tokens x 4 heads on a 2-core AMX CPU with torch 2.13, fp32
takes 0.30-0.52x bf16's time at 64-128 tokens with heads of 32-64 dims, 0.89x at 128 x 128, and
1.09-1.88x from 256 x 64 on (``bench/cpu_attention.py`` measures the crossover on the machine at
hand). A model that uses transformers' ``sdpa`` attention and trains on a CPU runs it through
``cpu_sdpa_attention`` (``use_cpu_attention``), which computes those small blocks in fp32
(autocast off) and returns the half-precision dtype: the same attention in a higher precision, so
nothing is lost. The choice depends only on shapes and dtypes, never on timings, so two runs
compute bit-identical results.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "clmkit_cpu_sdpa"
FP32_MAX_BLOCK = 128 * 128  # query length x head size up to which fp32 SDPA beats bf16 on a CPU
HALF = (torch.bfloat16, torch.float16)


def fp32_is_faster(query: Tensor, value: Tensor) -> bool:
    """Whether SDPA over ``query`` (batch, heads, length, head size) runs in half precision on a CPU (under autocast,
    or given half-precision inputs: Qwen3's rotary positions leave the query in fp32 and the value in bf16) for a
    block small enough that fp32 is faster."""
    if query.device.type != "cpu" or query.shape[-2] * query.shape[-1] > FP32_MAX_BLOCK:
        return False
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu") in HALF
    return query.dtype in HALF or value.dtype in HALF


def cpu_sdpa_attention(
    module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None, **kwargs: Any
) -> tuple[Tensor, Any]:
    """transformers' ``sdpa`` attention, run in fp32 where ``fp32_is_faster``; a drop-in attention function."""
    dtype = value.dtype if value.dtype in HALF else query.dtype
    if not fp32_is_faster(query, value):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    query, key, value = query.float(), key.float(), value.float()
    with torch.autocast("cpu", enabled=False):  # autocast would cast SDPA's inputs back to bf16
        output, weights = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return output.to(dtype), weights


AttentionInterface.register(NAME, cpu_sdpa_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def use_cpu_attention(model: nn.Module, device: torch.device) -> bool:
    """Make a model that uses transformers' ``sdpa`` attention run ``cpu_sdpa_attention`` when training on a CPU.

    Both training paths call it once, before the model is wrapped or compiled, so every forward
    (training, evaluation, a recomputation under gradient checkpointing, generation) attends the
    same way. The attention implementation is not part of a saved config, so a saved model loads
    with ``sdpa``. Returns whether it changed the model.
    """
    config = getattr(model, "config", None)
    if device.type != "cpu" or config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    config._attn_implementation = NAME
    return True
