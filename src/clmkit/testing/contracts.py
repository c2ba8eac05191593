"""Contract checks for chunkers, collators and filters: one call proves a plugin keeps what clmkit relies on.

Each check builds the plugin the way a run does (by registered name, from ``plugins`` and the installed
plugins, or from a factory), feeds it tiny real data and raises an ``AssertionError`` naming the broken
rule and its fix. The contracts themselves are stated in the guides "Write a chunker plugin" and
"Plugin test kit".
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

from clmkit.testing.tiny import padded_examples, tiny_corpus, tiny_tokenizer

if TYPE_CHECKING:
    from torch import Tensor
    from transformers import PreTrainedTokenizerBase

    from clmkit.data.chunking import ChunkStats

# documents a plugin must cope with besides real files: empty, blank, one character, a duplicate
EDGE_DOCUMENTS = ("", "  \n", "x")


def _build(kind: str, plugin: str | Callable[..., Any], plugins: Sequence[object], *args: Any, **kwargs: Any) -> Any:
    """A fresh plugin object: by registered name (its keyword arguments checked as a run checks them), or from
    a factory."""
    if not isinstance(plugin, str):
        return plugin(*args, **kwargs)
    from clmkit.plugins import Plugins

    return Plugins(extra=plugins).build(kind, plugin, *args, **kwargs)


# ---- chunkers -----------------------------------------------------------------------------------


def assert_chunker_contract(
    chunker: str | Callable[..., Any],
    *,
    plugins: Sequence[object] = (),
    chunker_kwargs: dict[str, Any] | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    documents: Sequence[str] | None = None,
    context_length: int = 64,
    added_token_ids: Collection[int] = (),
) -> ChunkStats:
    """Fail unless a chunker keeps clmkit's chunker contract on ``documents``; return its ``ChunkStats``.

    Checked: every example has 1 to ``context_length`` tokens and its other list columns as many entries; no
    token is invented (every token of the examples comes from the documents, or is the one EOS per document
    of a chunker with ``adds_eos``, or is in ``added_token_ids``), so ``tokens_kept + tokens_dropped ==
    tokens``; a chunker with ``adds_eos`` emits EOS; a chunker with ``emits_document_boundaries`` gives
    ``position_ids`` that start at 0, count up by one and restart at 0 only where a piece of another
    document begins; the tokenizer is unchanged; two fresh chunkers give the same examples.
    """
    from datasets import Dataset

    from clmkit.data.chunking import chunk_dataset, chunk_stats, tokenize_documents

    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    docs = list(documents) if documents is not None else [*tiny_corpus(), *EDGE_DOCUMENTS]
    vocabulary = len(tokenizer)
    tokenized = tokenize_documents(Dataset.from_dict({"content": docs}), tokenizer, "content")
    runs = []
    for _ in range(2):
        built = _build("chunkers", chunker, plugins, tokenizer, context_length, **(chunker_kwargs or {}))
        runs.append((built, chunk_dataset(tokenized, built)))
    (built, chunked), (_, again) = runs
    what = f"chunker {chunker!r}"
    if len(tokenizer) != vocabulary:
        raise AssertionError(
            f"{what} changed the tokenizer ({vocabulary} -> {len(tokenizer)} tokens). Add tokens in the hook "
            "clmkit_prepare_model, never in a chunker."
        )
    rows = chunked.to_dict()
    if "input_ids" not in rows:
        raise AssertionError(f"{what} returned no 'input_ids' column (columns: {sorted(rows)}). Return one.")
    _check_example_lengths(what, rows, context_length)
    stats = chunk_stats(tokenized, chunked, built)
    _check_accounting(what, built, tokenized["input_ids"], rows["input_ids"], stats, set(added_token_ids))
    if getattr(built, "emits_document_boundaries", False):
        _check_boundaries(what, rows, tokenized["input_ids"], built.eos_token_id if built.adds_eos else None)
    if again.to_dict() != rows:
        raise AssertionError(
            f"{what} gave different examples in two runs on the same documents. Make it deterministic: seed any "
            "randomness from its arguments (e.g. a seed kwarg), not from global state."
        )
    return stats


def _check_example_lengths(what: str, rows: dict[str, list[Any]], context_length: int) -> None:
    for i, ids in enumerate(rows["input_ids"]):
        if not 1 <= len(ids) <= context_length:
            raise AssertionError(
                f"{what}: example {i} has {len(ids)} tokens; an example has 1 to context_length={context_length}. "
                "Cut longer pieces, and drop empty rows."
            )
        for column, values in rows.items():
            if isinstance(values[i], list) and len(values[i]) != len(ids):
                raise AssertionError(
                    f"{what}: example {i} has {len(ids)} input_ids but {len(values[i])} {column}. Give every "
                    "per-token column one entry per token."
                )


def _check_accounting(
    what: str, chunker: Any, documents: list[list[int]], examples: list[list[int]], stats: ChunkStats, added: set[int]
) -> None:
    """No invented token, EOS where ``adds_eos`` says, and ``ChunkStats`` that add up."""
    eos = chunker.eos_token_id
    available = Counter(t for ids in documents for t in ids)
    if chunker.adds_eos:
        available[eos] += len(documents)
    emitted = Counter(t for ids in examples for t in ids if t not in added)
    invented = emitted - available
    if invented:
        token, count = invented.most_common(1)[0]
        hint = (
            "It appends EOS: set the class attribute adds_eos = True."
            if token == eos and not chunker.adds_eos and count <= len(documents)
            else "Never pad (the collator pads and masks padding) or repeat tokens; pass tokens the plugin adds "
            "on purpose as added_token_ids."
        )
        raise AssertionError(f"{what} emits token {token} {count} more time(s) than the documents hold. {hint}")
    if chunker.adds_eos and documents and examples and emitted[eos] == 0:
        raise AssertionError(f"{what} sets adds_eos = True but its examples hold no EOS. Append one per document.")
    expected = sum(len(ids) for ids in documents) + (len(documents) if chunker.adds_eos else 0)
    kept = sum(len(ids) for ids in examples)
    if (stats.tokens, stats.tokens_kept, stats.examples) != (expected, kept, len(examples)) or (
        stats.tokens_kept + stats.tokens_dropped != stats.tokens
    ):
        raise AssertionError(f"{what}: its ChunkStats {stats.as_dict()} do not add up. Check adds_eos.")


def _check_boundaries(what: str, rows: dict[str, list[Any]], documents: list[list[int]], eos: int | None) -> None:
    """Every position-0 segment of a row is a contiguous piece of one document (with its EOS)."""
    import numpy as np

    if "position_ids" not in rows:
        raise AssertionError(
            f"{what} sets emits_document_boundaries = True but returns no 'position_ids'. Return them, restarting "
            "at 0 at every document, or unset the attribute."
        )
    haystacks = [np.asarray([*ids, *([eos] if eos is not None else [])], dtype=np.int64).tobytes() for ids in documents]
    for i, (ids, positions) in enumerate(zip(rows["input_ids"], rows["position_ids"], strict=True)):
        starts = [j for j, p in enumerate(positions) if p == 0]
        steps = zip(positions, positions[1:], strict=False)
        if not starts or starts[0] != 0 or any(p != q + 1 for q, p in steps if p != 0):
            raise AssertionError(
                f"{what}: example {i}'s position_ids {positions[:12]}... do not start at 0 and count up by one, "
                "restarting at 0 at each document."
            )
        for start, end in zip(starts, [*starts[1:], len(ids)], strict=True):
            if not _is_piece(np.asarray(ids[start:end], dtype=np.int64).tobytes(), haystacks):
                raise AssertionError(
                    f"{what}: example {i} tokens {start}..{end - 1} are marked as one document but are no contiguous "
                    "piece of one. Restart position_ids at 0 where each document (or piece) begins."
                )


def _is_piece(needle: bytes, haystacks: list[bytes]) -> bool:
    for haystack in haystacks:
        found = haystack.find(needle)
        while found != -1:
            if found % 8 == 0:  # a whole-token offset
                return True
            found = haystack.find(needle, found + 1)
    return False


# ---- collators ----------------------------------------------------------------------------------


def assert_collator_contract(
    collator: str | Callable[..., Any],
    *,
    plugins: Sequence[object] = (),
    collator_kwargs: dict[str, Any] | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    examples: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Tensor]:
    """Fail unless a collator keeps clmkit's collator contract; return the batch it made of ``examples``.

    Checked: ``input_ids``, ``attention_mask`` and ``labels`` of one shape (examples x width); each example's
    tokens, in order, exactly where its attention mask is 1; labels ``-100`` at every padding position and
    otherwise the input token or ``-100`` (a collator may mask targets, never invent them), at least one
    target; the examples left unchanged; the same batch from a fresh collator. A collator with
    ``supports_document_boundaries`` must also pass ``position_ids`` on and mask the label where they
    restart at 0 inside a row.
    """
    import torch

    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    rows = [dict(e) for e in examples] if examples is not None else list(padded_examples(tokenizer, count=8))
    what = f"collator {collator!r}"
    built = _build("collators", collator, plugins, tokenizer, **(collator_kwargs or {}))
    batch = _checked_batch(what, built, rows)
    again = _build("collators", collator, plugins, tokenizer, **(collator_kwargs or {}))(copy.deepcopy(rows))
    if batch.keys() != again.keys() or not all(torch.equal(batch[k], again[k]) for k in batch):
        raise AssertionError(f"{what} made different batches of the same examples. Make it deterministic.")
    if getattr(built, "supports_document_boundaries", False):
        long_rows = [r["input_ids"] for r in rows if len(r["input_ids"]) > 3]  # two documents: 3 tokens, the rest
        packed = [{"input_ids": ids, "position_ids": [*range(3), *range(len(ids) - 3)]} for ids in long_rows]
        packed_batch = _checked_batch(what, built, packed)
        positions = packed_batch.get("position_ids")
        if positions is None or positions[:, :3].tolist() != [[0, 1, 2]] * len(packed):
            raise AssertionError(f"{what} supports document boundaries but does not pass position_ids on.")
        if (packed_batch["labels"][:, 3] != -100).any():
            raise AssertionError(
                f"{what}: a label where position_ids restart at 0 inside a row is a target; nothing before it "
                "belongs to its document. Set it to -100."
            )
    return batch


def _checked_batch(what: str, collator: Any, rows: list[dict[str, Any]]) -> dict[str, Tensor]:
    import torch

    before = copy.deepcopy(rows)
    batch = collator(rows)
    if rows != before:
        raise AssertionError(f"{what} changed the examples it was given. Copy before editing them.")
    missing = {"input_ids", "attention_mask", "labels"} - set(batch)
    if missing:
        raise AssertionError(f"{what}: the batch has no {sorted(missing)}. Return input_ids, attention_mask, labels.")
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    if not all(isinstance(t, torch.Tensor) for t in (ids, mask, labels)):
        raise AssertionError(f"{what}: input_ids, attention_mask and labels must be torch tensors.")
    width = max(len(r["input_ids"]) for r in rows)
    if not (ids.shape == mask.shape == labels.shape) or ids.shape[0] != len(rows) or ids.shape[1] < width:
        raise AssertionError(
            f"{what}: input_ids {tuple(ids.shape)}, attention_mask {tuple(mask.shape)}, labels {tuple(labels.shape)} "
            f"for {len(rows)} examples of up to {width} tokens. Give all three the shape (examples, width >= {width})."
        )
    if ids.is_floating_point() or labels.is_floating_point():
        raise AssertionError(f"{what}: input_ids and labels must be integer tensors (torch.long).")
    for i, row in enumerate(rows):
        real = mask[i].bool()
        if ids[i][real].tolist() != list(row["input_ids"]):
            raise AssertionError(
                f"{what}: example {i}'s tokens are not where its attention_mask is 1. Keep every token, in order, "
                "and mark exactly those positions."
            )
        if (labels[i][~real] != -100).any():
            raise AssertionError(f"{what}: example {i} has a target at a padding position. Set those labels to -100.")
        scored = labels[i][real]
        if ((scored != -100) & (scored != ids[i][real])).any():
            raise AssertionError(
                f"{what}: example {i} has a label that is neither its input token nor -100. Labels are the unshifted "
                "input ids (the loss shifts them), -100 where a token is no target."
            )
    if not (labels != -100).any():
        raise AssertionError(f"{what}: the batch has no target at all (every label is -100).")
    return batch


# ---- filters ------------------------------------------------------------------------------------


def assert_filter_contract(
    document_filter: str | Callable[..., Any],
    *,
    plugins: Sequence[object] = (),
    filter_kwargs: dict[str, Any] | None = None,
    documents: Sequence[str] | None = None,
) -> list[str | None]:
    """Fail unless a document filter keeps clmkit's filter contract; return its reason for each document.

    Checked: ``reason(text)`` is ``None`` (keep) or a non-empty string (why it drops the document) for real
    files, an empty, a blank and a one-character document and a duplicate; after ``reset()`` a second pass
    decides as the first did (so a stream's second epoch is filtered alike); a fresh filter decides alike.
    """
    docs = list(documents) if documents is not None else [*tiny_corpus(), *EDGE_DOCUMENTS, tiny_corpus()[0]]
    what = f"filter {document_filter!r}"
    built = _build("filters", document_filter, plugins, **(filter_kwargs or {}))
    if not callable(getattr(built, "reason", None)) or not callable(getattr(built, "reset", None)):
        raise AssertionError(f"{what} has no reason(text) and reset() methods. Subclass clmkit.DocumentFilter.")
    first = [built.reason(text) for text in docs]
    for text, reason in zip(docs, first, strict=True):
        if reason is not None and not (isinstance(reason, str) and reason):
            raise AssertionError(
                f"{what} returned {reason!r} for a document starting {text[:30]!r}. Return None to keep it, or a "
                "short non-empty string saying why it is dropped."
            )
    built.reset()
    if [built.reason(text) for text in docs] != first:
        raise AssertionError(
            f"{what} decided differently on a second pass after reset(). Clear its state in reset(), which clmkit "
            "calls before every pass."
        )
    fresh = _build("filters", document_filter, plugins, **(filter_kwargs or {}))
    if [fresh.reason(text) for text in docs] != first:
        raise AssertionError(
            f"{what}: two fresh filters decided differently on the same documents. Make it deterministic."
        )
    return first
