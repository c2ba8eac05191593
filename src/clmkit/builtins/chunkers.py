"""Built-in chunkers: ``overflow`` (the course's) and ``concat`` (the default)."""

from __future__ import annotations

from typing import Any

from clmkit.chunking import Chunker
from clmkit.hookspecs import Register, hookimpl


class Overflow(Chunker):
    """The course's ``tokenize()``: each document cut into consecutive pieces, only full ones kept.

    Equivalent to ``tokenizer(truncation=True, max_length=L, return_overflowing_tokens=True)``
    keeping chunks of length ``L``: every document loses its tail, and documents shorter than
    ``L`` are dropped whole.
    """

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        size = self.context_length
        out = [ids[start : start + size] for ids in batch["input_ids"] for start in range(0, len(ids) - size + 1, size)]
        return {"input_ids": out}


class Concat(Chunker):
    """Join documents with EOS and cut full-length blocks across document boundaries.

    Only the tail of the stream (one per ``datasets.map`` batch) is dropped, never a tail per
    document. Examples may span documents; the EOS between them tells the model where one ends.
    """

    adds_eos = True

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        eos = self.eos_token_id
        stream: list[int] = []
        for ids in batch["input_ids"]:
            stream.extend(ids)
            stream.append(eos)
        size = self.context_length
        usable = len(stream) - len(stream) % size
        return {"input_ids": [stream[i : i + size] for i in range(0, usable, size)]}


@hookimpl
def clmkit_register_chunkers(register: Register) -> None:
    register("overflow", Overflow)
    register("concat", Concat)
