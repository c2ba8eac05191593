"""The clmkit plugin (entry point ``fim``): the ``fim`` chunker, and the callback that sizes the model for it."""

from __future__ import annotations

from typing import Any

from clmkit import hookimpl
from clmkit_fim.fim import FillInTheMiddle, ResizeEmbeddings


@hookimpl
def clmkit_register_chunkers(register: Any) -> None:
    register("fim", FillInTheMiddle)


@hookimpl
def clmkit_callbacks(args: Any) -> list[ResizeEmbeddings] | None:
    return [ResizeEmbeddings()] if args.chunker == "fim" else None
