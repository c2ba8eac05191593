"""Turning raw documents into training examples: tokenization, the Chunker base, and its statistics."""

from __future__ import annotations

import re
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow.compute as pc
from datasets import Dataset, Features, IterableDataset, List, Value

from clmkit.errors import DataError


class Chunker:
    """Base class of chunkers: a batched ``datasets.map`` function over tokenized documents.

    ``__call__`` receives ``{"input_ids": [[int, ...], ...]}`` (one token list per document, no
    special tokens) and returns examples of 1 to ``context_length`` tokens, never padded (the
    collator pads and masks padding out of the loss). ``adds_eos`` says whether it appends one EOS
    per document, which token accounting needs. ``emits_document_boundaries`` says that it packs
    several documents per row and marks them with ``position_ids`` restarting at 0 (see
    ``clmkit.data.packing``): clmkit then refuses a collator that cannot keep them apart. A subclass
    with its own ``__init__`` calls ``super().__init__(tokenizer, context_length)``, which sets
    ``tokenizer``, ``context_length`` and ``eos_token_id``. ``clmkit.testing.assert_chunker_contract``
    checks all of this.
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
    """How a corpus became examples, the same for every chunker, built-in or not.

    ``documents``: documents in; ``tokens``: their tokens plus one EOS per document when the chunker
    ``adds_eos``; ``examples``: rows out; ``tokens_kept``: tokens in those rows; ``tokens_dropped``:
    ``tokens - tokens_kept`` (tails a chunker cuts off); ``documents_too_short``: documents with fewer
    tokens than ``context_length`` (what ``overflow`` drops whole; other chunkers may keep them);
    ``fill_rate``: ``tokens_kept`` over the ``examples x context_length`` slots (1.0 for full rows).
    """

    documents: int
    tokens: int
    examples: int
    tokens_kept: int
    tokens_dropped: int
    documents_too_short: int
    fill_rate: float

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)


def column_names(dataset: Dataset | IterableDataset) -> list[str]:
    """The columns of a dataset; a stream without a schema (``from_generator``) is asked for its first row."""
    if dataset.column_names is not None:
        return list(dataset.column_names)
    return list(next(iter(dataset), {}))


def _map_options(dataset: Dataset | IterableDataset, num_proc: int | None, desc: str) -> dict[str, Any]:
    """``map`` options: a stream is mapped lazily, one batch at a time, and takes neither."""
    return {} if isinstance(dataset, IterableDataset) else {"num_proc": num_proc, "desc": desc}


# a document longer than this (in characters) is tokenized piece by piece: a tokenizer holds ~100 bytes per
# token of a text it encodes at once, so one 50 MB line would take gigabytes
MAX_PIECE_CHARS = 1 << 18
TOKENIZED = Features({"input_ids": List(Value("int32"))})  # token ids of any real vocabulary fit in int32
_BOUNDARY = re.compile(r"\s(?=\S)")  # the last whitespace before a non-whitespace: a pre-tokenizer split point


def text_pieces(text: str, size: int = MAX_PIECE_CHARS) -> Iterator[str]:
    """``text`` in pieces of at most about ``size`` characters, each cut before the last whitespace character
    ahead of a word, where GPT-2's byte-level pre-tokenizer splits anyway, so the pieces' tokens joined are
    the text's tokens. Text without such a point within half a piece is cut hard."""
    start = 0
    while len(text) - start > size:
        end = start + size
        last = deque(_BOUNDARY.finditer(text, start + size // 2, end), maxlen=1)
        cut = last[0].start() if last and last[0].start() > start else end
        yield text[start:cut]
        start = cut
    yield text[start:]


def encode_long(tokenizer: Any, text: str, size: int | None = None) -> Any:
    """The token ids of a long text (no special tokens), encoded piece by piece into a compact int array
    (int32, 4 bytes a token, where a Python list takes about 36)."""
    import numpy as np

    backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer: no BatchEncoding lists
    ids = array("q")
    for piece in text_pieces(text, size or MAX_PIECE_CHARS):
        if backend is not None:
            ids.extend(backend.encode(piece, add_special_tokens=False).ids)
        else:
            ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
    wide = np.frombuffer(ids, dtype=np.int64)
    return wide.astype(np.int32) if len(wide) == 0 or int(wide.max()) < 2**31 else wide


def encode_texts(tokenizer: Any, texts: list[str], size: int | None = None) -> list[Any]:
    """``tokenizer(texts)["input_ids"]``, with documents longer than ``size`` characters encoded in pieces; a
    batch holding one returns every row as an int32 array (Arrow takes a batch of one type)."""
    import numpy as np

    size = size or MAX_PIECE_CHARS
    if all(len(t) <= size for t in texts):
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    short = [i for i, t in enumerate(texts) if len(t) <= size]
    out: list[Any] = [None] * len(texts)
    if short:
        for i, ids in zip(
            short, tokenizer([texts[i] for i in short], add_special_tokens=False)["input_ids"], strict=True
        ):
            out[i] = np.asarray(ids, dtype=np.int32)  # the batch's rows all of the long ones' type
    for i, text in enumerate(texts):
        if out[i] is None:
            out[i] = encode_long(tokenizer, text, size)
    return out


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
        return {"input_ids": encode_texts(tokenizer, texts)}

    return dataset.map(
        encode,
        batched=True,
        remove_columns=columns,
        features=TOKENIZED,  # one type whether a batch holds lists, compact arrays (long documents) or both
        **_map_options(dataset, num_proc, "Tokenizing"),
    )


def chunk_dataset(
    tokenized: Dataset | IterableDataset,
    chunker: Callable[[dict[str, list[Any]]], dict[str, list[Any]]],
    num_proc: int | None = None,
) -> Dataset | IterableDataset:
    """Apply a chunker to tokenized documents with a batched ``map`` (lazily, for a stream).

    A chunker class that sets ``numpy_batches = True`` itself receives each document's tokens as a numpy
    array (4 bytes a token instead of a Python int's ~36), which bounds the memory of very long documents.
    The flag is not inherited: a subclass that overrides ``__call__`` (e.g. to edit the token lists) gets
    lists unless it opts in too.
    """
    as_numpy = (
        type(chunker).__dict__.get("numpy_batches", False)
        and isinstance(tokenized, Dataset)
        and tokenized.format["type"] is None
    )
    source = tokenized.with_format("numpy") if as_numpy else tokenized
    chunked = source.map(
        chunker,
        batched=True,
        remove_columns=tokenized.column_names or ["input_ids"],  # a mapped stream has no schema: tokens only
        **_map_options(tokenized, num_proc, "Chunking"),
    )
    return chunked.with_format(None) if as_numpy else chunked


def chunk_stats(tokenized: Dataset, chunked: Dataset, chunker: Chunker) -> ChunkStats:
    """Count documents, tokens, examples, tokens kept and dropped, straight from the Arrow columns."""
    doc_lengths = pc.list_value_length(tokenized.data.column("input_ids"))
    tokens = int(pc.sum(doc_lengths).as_py() or 0)
    if getattr(chunker, "adds_eos", False):
        tokens += len(tokenized)
    kept = int(pc.sum(pc.list_value_length(chunked.data.column("input_ids"))).as_py() or 0)
    too_short = int(pc.sum(pc.less(doc_lengths, chunker.context_length)).as_py() or 0)
    slots = len(chunked) * chunker.context_length
    fill = kept / slots if slots else 0.0
    return ChunkStats(len(tokenized), tokens, len(chunked), kept, max(tokens - kept, 0), too_short, fill)
