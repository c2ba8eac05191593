"""Streaming data: corpora read lazily as ``datasets.IterableDataset``, in bounded memory.

Filters, tokenization and chunking are lazy ``map``/``filter`` steps over batches of 1,000
documents, so memory depends on that batch, never on the corpus size (``bench/stream_memory.py``
measures it). A stream has no length: a training run on one needs ``max_steps``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from datasets import IterableDataset

from clmkit.data.filters import FilterChain
from clmkit.errors import ConfigError, DataError


def check_streaming_steps(train_examples: Any, max_steps: int, max_tokens: int | None = None) -> None:
    """A streamed train split has no length, so the run must be told how long to train: steps or a token budget."""
    if isinstance(train_examples, IterableDataset) and max_steps <= 0 and max_tokens is None:
        raise ConfigError(
            "the train dataset is streamed (an IterableDataset has no length), so the number of steps is unknown. "
            "Set max_steps (--max_steps N) or a token budget (--max_tokens N)."
        )


def check_stream_not_empty(examples: IterableDataset, filters: FilterChain, split: str, chunker: str) -> None:
    """Read a prepared stream up to its first example; an empty stream is a ``DataError`` naming its cause.

    Costs one batch of documents when the stream is fine; when it is empty, the whole stream is
    read to learn which filter (if any) removed everything.
    """
    if next(iter(examples), None) is None:
        filters.check_not_empty(split)
        raise DataError(
            f"the {split} stream yields no training example with chunker {chunker!r}. "
            "Use chunker 'concat' or 'packed' (they keep short documents), a smaller context_length, or more text."
        )


def _read_files(paths: Sequence[str], text_column: str) -> Iterator[dict[str, str]]:
    from clmkit.data.corpus import decode_document

    for path in paths:
        text, _ = decode_document(Path(path).read_bytes())
        if text is not None:  # binary or garbage files are skipped, as when the corpus is read whole
            yield {"path": path, text_column: text}


def stream_files(paths: Sequence[str | Path], text_column: str = "content") -> IterableDataset:
    """One document per file (``path`` and ``text_column`` columns), read only when iterated.

    The file list is the stream's shards, so ``dataloader_num_workers`` workers read disjoint files.
    Invalid UTF-8 is decoded with replacement characters; binary or garbage files are skipped.
    """
    files = [str(p) for p in paths]
    if not files:
        raise DataError("stream_files got no file to read. Pass the paths of text files.")
    return IterableDataset.from_generator(_read_files, gen_kwargs={"paths": files, "text_column": text_column})
