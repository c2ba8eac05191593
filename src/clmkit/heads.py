"""Reaching the output embedding of a causal LM, and running it without its B x T x V logits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn


def output_linear(model: nn.Module) -> nn.Linear | None:
    """The model's output embedding when it is an ``nn.Linear`` (GPT-2, Llama, ...), else ``None``."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    return head if isinstance(head, nn.Linear) else None


@contextmanager
def hidden_states_only(head: nn.Linear) -> Iterator[dict[str, Tensor]]:
    """While active, ``head`` records its input (the final hidden states) and projects nothing.

    A forward pre-hook keeps the hidden states and hands the head an empty slice, so the model's
    own forward (through DDP or any wrapper) runs unchanged but yields B x 0 x V logits.
    """
    captured: dict[str, Tensor] = {}

    def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        captured["hidden_states"] = args[0]
        return (args[0][..., :0, :], *args[1:])

    handle = head.register_forward_pre_hook(pre_hook)
    try:
        yield captured
    finally:
        handle.remove()
