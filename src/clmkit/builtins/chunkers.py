"""Built-in chunkers: ``overflow`` (the course's), ``concat`` (the default) and ``packed`` (whole documents)."""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np

from clmkit.data.chunking import Chunker
from clmkit.data.packing import best_fit_decreasing
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
    numpy_batches = True  # documents may arrive as numpy arrays: a long one never becomes Python ints

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        eos = self.eos_token_id
        documents = batch["input_ids"]
        if any(isinstance(ids, np.ndarray) for ids in documents):
            return self._concat_arrays(documents)
        stream: list[int] = []
        for ids in batch["input_ids"]:
            stream.extend(ids)
            stream.append(eos)
        size = self.context_length
        usable = len(stream) - len(stream) % size
        return {"input_ids": [stream[i : i + size] for i in range(0, usable, size)]}

    def _concat_arrays(self, documents: list[Any]) -> dict[str, list[Any]]:
        eos = np.array([self.eos_token_id], dtype=np.int64)
        parts = [part for ids in documents for part in (np.asarray(ids, dtype=np.int64), eos)]
        stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        if len(stream) == 0 or int(stream.max()) < 2**31:
            stream = stream.astype(np.int32)
        size = self.context_length
        usable = len(stream) - len(stream) % size
        return {"input_ids": list(stream[:usable].reshape(-1, size))}


class Packed(Chunker):
    """Whole documents (each + EOS) packed into rows of at most ``context_length`` by best-fit-decreasing.

    A document longer than the context is cut into context-length pieces (the last one shorter),
    each packed like a document: no token is dropped. ``position_ids`` restart at 0 at every
    document or piece, so with a boundary-aware collator a document attends only to itself and
    its first token is not a target. Packing sees one ``datasets.map`` batch (1,000 documents) at
    a time, which bounds its memory on streams. Rows may be shorter than the context: the fill
    rate (real tokens / slots) is logged and reported by ``clmkit.data.preparation.compare_chunkers``.
    """

    adds_eos = True
    emits_document_boundaries = True

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        size = self.context_length
        full_positions = list(range(size))
        rows: dict[str, list[Any]] = {"input_ids": [], "position_ids": []}
        tails = []
        for ids in batch["input_ids"]:
            document = [*ids, self.eos_token_id]
            cut = len(document) - len(document) % size
            for start in range(0, cut, size):  # a full piece fills a row alone, as best-fit would put it
                rows["input_ids"].append(document[start : start + size])
                rows["position_ids"].append(full_positions.copy())
            if cut < len(document):
                tails.append(document[cut:])
        for members in best_fit_decreasing([len(t) for t in tails], size):
            rows["input_ids"].append(list(chain.from_iterable(tails[i] for i in members)))
            rows["position_ids"].append(list(chain.from_iterable(range(len(tails[i])) for i in members)))
        return rows


@hookimpl
def clmkit_register_chunkers(register: Register) -> None:
    register("overflow", Overflow)
    register("concat", Concat)
    register("packed", Packed)
