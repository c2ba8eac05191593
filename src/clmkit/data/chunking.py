"""Turning raw documents into training examples: tokenization, the Chunker base, and its statistics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow.compute as pc
from datasets import Dataset, IterableDataset

from clmkit.errors import DataError


class Chunker:
    """Base class of chunkers: a batched ``datasets.map`` function over tokenized documents.

    ``__call__`` receives ``{"input_ids": [[int, ...], ...]}`` (one token list per document, no
    special tokens) and returns examples. ``adds_eos`` says whether it appends one EOS per
    document, which token accounting needs. ``emits_document_boundaries`` says that it packs
    several documents per row and marks them with ``position_ids`` restarting at 0 (see
    ``clmkit.data.packing``): clmkit then refuses a collator that cannot keep them apart.
    """

    adds_eos: bool = False
    emits_document_boundaries: bool = False

    def __init__(self, tokenizer: Any, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.eos_token_id = tokenizer.eos_token_id

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        raise NotImplementedError


@dataclass(frozen=True)
class ChunkStats:
    """How a corpus became examples; ``tokens`` counts the separators a chunker adds."""

    documents: int
    tokens: int
    examples: int
    tokens_kept: int
    tokens_dropped: int
    documents_too_short: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def column_names(dataset: Dataset | IterableDataset) -> list[str]:
    """The columns of a dataset; a stream without a schema (``from_generator``) is asked for its first row."""
    if dataset.column_names is not None:
        return list(dataset.column_names)
    return list(next(iter(dataset), {}))


def _map_options(dataset: Dataset | IterableDataset, num_proc: int | None, desc: str) -> dict[str, Any]:
    """``map`` options: a stream is mapped lazily, one batch at a time, and takes neither."""
    return {} if isinstance(dataset, IterableDataset) else {"num_proc": num_proc, "desc": desc}


def tokenize_documents(
    dataset: Dataset | IterableDataset, tokenizer: Any, text_column: str, num_proc: int | None = None
) -> Dataset | IterableDataset:
    """One row per document: ``input_ids`` (no special tokens added), every other column removed."""
    columns = column_names(dataset)
    if text_column not in columns:
        raise DataError(
            f"the dataset has no text column {text_column!r}; its columns are {columns}. "
            "Set text_column (--text_column) to the column that holds the text."
        )

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        texts = [t if isinstance(t, str) else "" for t in batch[text_column]]
        return {"input_ids": tokenizer(texts, add_special_tokens=False)["input_ids"]}

    return dataset.map(encode, batched=True, remove_columns=columns, **_map_options(dataset, num_proc, "Tokenizing"))


def chunk_dataset(
    tokenized: Dataset | IterableDataset,
    chunker: Callable[[dict[str, list[Any]]], dict[str, list[Any]]],
    num_proc: int | None = None,
) -> Dataset | IterableDataset:
    """Apply a chunker to tokenized documents with a batched ``map`` (lazily, for a stream)."""
    return tokenized.map(
        chunker,
        batched=True,
        remove_columns=tokenized.column_names or ["input_ids"],  # a mapped stream has no schema: tokens only
        **_map_options(tokenized, num_proc, "Chunking"),
    )


def chunk_stats(tokenized: Dataset, chunked: Dataset, chunker: Chunker) -> ChunkStats:
    """Count documents, tokens, examples, tokens kept and dropped, straight from the Arrow columns."""
    doc_lengths = pc.list_value_length(tokenized.data.column("input_ids"))
    tokens = int(pc.sum(doc_lengths).as_py() or 0)
    if getattr(chunker, "adds_eos", False):
        tokens += len(tokenized)
    kept = int(pc.sum(pc.list_value_length(chunked.data.column("input_ids"))).as_py() or 0)
    too_short = int(pc.sum(pc.less(doc_lengths, chunker.context_length)).as_py() or 0)
    return ChunkStats(len(tokenized), tokens, len(chunked), kept, max(tokens - kept, 0), too_short)
