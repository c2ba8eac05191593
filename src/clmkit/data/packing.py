"""Document boundaries in packed rows: best-fit-decreasing packing, and how the model sees such a batch.

A chunker that packs several documents into one row marks where each begins with a
``position_ids`` column that restarts at 0 at every document (the format of transformers'
``DataCollatorWithFlattening``). It sets ``Chunker.emits_document_boundaries = True``; a collator
that keeps those boundaries (masks the first label of each document, passes ``position_ids`` on)
sets ``supports_document_boundaries = True``. Given ``position_ids`` and no 2-D padding mask,
transformers builds a causal mask that is block-diagonal per document for every attention
implementation (``masking_utils.find_packed_sequence_indices``) — but only without a KV cache,
which GPT-2 creates by default even in training. ``model_inputs`` arranges both.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Mapping, Sequence
from typing import Any

from clmkit.errors import ConfigError


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Pack items of ``lengths`` (each <= ``capacity``) into as few bins as best-fit-decreasing finds.

    Items are placed longest first, each into the open bin with the least room that still fits it.
    Returns the bins as lists of item indices, in the order the bins were opened.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free slots, bin index) of bins that still have room, sorted
    for item in order:
        size = lengths[item]
        if size > capacity:
            raise ValueError(f"item of length {size} exceeds the bin capacity {capacity}")
        at = bisect_left(room, (size, -1))
        if at < len(room):
            free, index = room.pop(at)
        else:
            free, index = capacity, len(bins)
            bins.append([])
        bins[index].append(item)
        if free - size > 0:
            insort(room, (free - size, index))
    return bins


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """What the model gets of a batch: everything but ``labels``.

    A batch with ``position_ids`` (document boundaries; right-padded) goes in without its 2-D
    ``attention_mask`` and with ``use_cache=False``, so transformers isolates the documents. Right
    padding needs no mask in a causal model: no real token attends to a later position.
    """
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if "position_ids" in inputs:
        mask = inputs.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            del inputs["attention_mask"]
        inputs["use_cache"] = False
    return inputs


def require_boundary_collator(collator: Any, what: str) -> None:
    """Refuse a collator that would let the documents of a packed row attend to each other."""
    if not getattr(collator, "supports_document_boundaries", False):
        raise ConfigError(
            f"{what} packs several documents per row, but the collator {type(collator).__name__} does not keep "
            "document boundaries (it lacks supports_document_boundaries = True), so the documents would attend "
            "to each other. Use the built-in collator 'causal', or a chunker that does not pack ('concat')."
        )
