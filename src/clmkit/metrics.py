"""Exact evaluation metrics: token-weighted loss, perplexity, bits per byte, next-token accuracy."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from clmkit.cross_entropy import IGNORE_INDEX


def token_byte_lengths(tokenizer: Any) -> Tensor:
    """UTF-8 byte length of every token id (0 for special tokens), for bits per byte.

    Byte-level BPE tokens map to exact bytes through GPT-2's byte alphabet; other tokenizers fall
    back to the length of the decoded token.
    """
    byte_of = {ch: b for b, ch in _bytes_to_unicode().items()}
    special = set(tokenizer.all_special_ids)
    size = len(tokenizer)
    lengths = torch.zeros(size, dtype=torch.long)
    tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
    for i, tok in enumerate(tokens):
        if i in special or tok is None:
            continue
        if all(ch in byte_of for ch in tok):
            lengths[i] = len(tok)
        else:
            lengths[i] = len(tokenizer.decode([i]).encode("utf-8"))
    return lengths


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def per_sample_statistics(token_losses: Tensor, correct: Tensor, targets: Tensor, byte_lengths: Tensor) -> Tensor:
    """(B, 4) rows of [loss sum in nats, target tokens, target bytes, correct predictions].

    ``token_losses``, ``correct`` and ``targets`` are (B, T-1). Per-sample rows let
    ``gather_for_metrics`` drop the duplicated samples of an uneven last batch exactly.
    """
    valid = targets != IGNORE_INDEX
    nbytes = byte_lengths.to(targets.device)[targets.clamp(min=0)] * valid
    return torch.stack(
        [
            (token_losses * valid).sum(1).double(),
            valid.sum(1).double(),
            nbytes.sum(1).double(),
            (correct & valid).sum(1).double(),
        ],
        dim=1,
    )


def summarize(totals: Tensor, prefix: str = "eval") -> dict[str, float]:
    """Loss per target token, perplexity (inf when it overflows), bits per byte, accuracy."""
    nats, tokens, nbytes, correct = (float(x) for x in totals)
    loss = nats / tokens if tokens else float("nan")
    return {
        f"{prefix}_loss": loss,
        f"{prefix}_perplexity": math.exp(loss) if loss < 709 else float("inf"),
        f"{prefix}_bits_per_byte": nats / (math.log(2) * nbytes) if nbytes else float("nan"),
        f"{prefix}_accuracy": correct / tokens if tokens else float("nan"),
        f"{prefix}_tokens": tokens,
    }
