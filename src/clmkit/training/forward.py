"""Reaching the output embedding of a causal LM, and running it without its B x T x V logits."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn

from clmkit.data.packing import model_inputs as packed_model_inputs
from clmkit.training.losses import LossInputs


def output_linear(model: nn.Module) -> nn.Linear | None:
    """The model's output embedding when it is an ``nn.Linear`` (GPT-2, Llama, ...), else ``None``."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    return head if isinstance(head, nn.Linear) else None


@contextmanager
def hidden_states_only(head: nn.Linear) -> Iterator[dict[str, Tensor]]:
    """While active, ``head`` records its input (the final hidden states) and projects nothing.

    A forward pre-hook keeps the hidden states and hands the head an empty slice, so the model's
    own forward (through DDP or any wrapper) runs unchanged but yields B x 0 x V logits. Under
    autocast (which accelerate applies inside the model's forward only) the hidden states are kept
    in the autocast dtype, the dtype the head would have multiplied them in, so a loss computed
    after the forward still runs its matmuls in bf16/fp16 rather than fp32.
    """
    captured: dict[str, Tensor] = {}

    def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        hidden = args[0]
        device = hidden.device.type
        if torch.is_autocast_enabled(device):
            hidden = hidden.to(torch.get_autocast_dtype(device))
        captured["hidden_states"] = hidden
        return (args[0][..., :0, :], *args[1:])

    handle = head.register_forward_pre_hook(pre_hook)
    try:
        yield captured
    finally:
        handle.remove()


def forward_for_loss(
    model: nn.Module, batch: Mapping[str, Tensor], hidden_states: bool, chunk_size: int | None = None
) -> tuple[LossInputs, Any]:
    """Run ``model`` on ``batch`` without labels and return what a loss needs, plus the model output.

    With ``hidden_states`` and a ``Linear`` output embedding, the final hidden states are captured
    and no logits are computed (``LossInputs.hidden_states`` and ``lm_head`` are set, for the
    chunked primitive); otherwise ``LossInputs.logits`` holds the model's B x T x V logits. Shared by
    ``ClmTrainer`` and any manual loop, so both score tokens the same way.
    """
    model_inputs = packed_model_inputs(batch)  # all but labels; packed documents isolated
    head = output_linear(extract_model_from_parallel(model)) if hidden_states else None
    if head is None:
        outputs = model(**model_inputs)
        return LossInputs(batch, logits=outputs.logits), outputs
    with hidden_states_only(head) as captured:
        outputs = model(**model_inputs)
    return LossInputs(batch, hidden_states=captured["hidden_states"], lm_head=head, chunk_size=chunk_size), outputs
