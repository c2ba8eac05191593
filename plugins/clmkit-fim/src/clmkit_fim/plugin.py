"""The clmkit plugin (entry point ``fim``): the ``fim`` chunker, and the sentinels it needs in tokenizer and model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from clmkit import hookimpl
from clmkit_fim.fim import FillInTheMiddle, prepare


@hookimpl
def clmkit_register_chunkers(register: Any) -> None:
    register("fim", FillInTheMiddle)


@hookimpl
def clmkit_prepare_model(model: Any, tokenizer: Any, chunkers: Sequence[str]) -> None:
    """When the run uses ``fim``: the sentinels join the tokenizer, and the model's embeddings grow to match."""
    if "fim" in chunkers:
        prepare(tokenizer, model)
