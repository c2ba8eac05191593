"""Exact evaluation metrics: token-weighted loss, perplexity, bits per byte, next-token accuracy.

Evaluation keeps four numbers per sample (``per_sample_statistics``), never logits; ``ClmMetrics``
(an offline ``evaluate.Metric``) sums them over the whole eval set and turns them into metrics.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Any

import datasets
import evaluate
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clmkit.training.cross_entropy import IGNORE_INDEX, token_statistics
from clmkit.training.losses import LossInputs


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


@torch.no_grad()
def sample_statistics(inputs: LossInputs, byte_lengths: Tensor) -> Tensor:
    """``per_sample_statistics`` of one batch, from hidden states (chunked) or logits, whichever it holds."""
    targets = inputs.targets
    if inputs.hidden_states is not None:
        assert inputs.lm_head is not None
        hidden = inputs.hidden_states[:, :-1].reshape(-1, inputs.hidden_states.shape[-1])
        head = inputs.lm_head
        losses, correct = token_statistics(hidden, head.weight, head.bias, targets.reshape(-1), inputs.chunk_size)
        losses, correct = losses.view_as(targets), correct.view_as(targets)
    else:
        assert inputs.logits is not None, "LossInputs holds neither logits nor hidden states"
        logits = inputs.logits[:, :-1]
        losses = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
        correct = logits.argmax(-1) == targets
    return per_sample_statistics(losses, correct, targets, byte_lengths)


def summarize(nats: float, tokens: float, nbytes: float, correct: float) -> dict[str, float]:
    """Loss per target token, perplexity (``inf`` when it overflows), bits per byte, accuracy."""
    loss = nats / tokens if tokens else float("nan")
    return {
        "loss": loss,
        "perplexity": _exp(loss),
        "bits_per_byte": nats / (math.log(2) * nbytes) if nbytes else float("nan"),
        "accuracy": correct / tokens if tokens else float("nan"),
        "tokens": tokens,
    }


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


FEATURES = ("nats", "target_tokens", "target_bytes", "correct_tokens")


class ClmMetrics(evaluate.Metric):
    """Exact language-model metrics from per-sample sums: an offline ``evaluate.Metric``.

    Feed it ``add_rows(per_sample_statistics(...))`` (or ``add_batch(nats=..., target_tokens=...,
    target_bytes=..., correct_tokens=...)``) as many times as there are batches, gathered over
    processes first (``accelerator.gather_for_metrics``), then ``compute()``: ``loss`` (total nats /
    target tokens), ``perplexity`` (exp of it, ``inf`` past float range), ``bits_per_byte`` (nats /
    (ln 2 x UTF-8 bytes of the targets)), ``accuracy`` (top-1 next-token) and ``tokens``. Its rows
    are kept in memory (``keep_in_memory=True``) and its cache directory is a temporary one, so
    nothing is written to the user's cache and nothing is fetched from the hub.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("keep_in_memory", True)
        kwargs.setdefault("cache_dir", os.path.join(tempfile.gettempdir(), "clmkit-evaluate"))
        super().__init__(**kwargs)

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Token-weighted loss, perplexity, bits per byte and top-1 accuracy of a causal LM.",
            citation="",
            inputs_description="Per-sample sums: nats, target_tokens, target_bytes, correct_tokens.",
            features=datasets.Features({name: datasets.Value("float64") for name in FEATURES}),
            format="numpy",
        )

    def compute(self, **kwargs: Any) -> dict[str, float] | None:
        """The metrics over everything added since the last ``compute`` (NaN ones when nothing was)."""
        if self.writer is None and not any(name in kwargs for name in FEATURES):
            self.add_rows(torch.zeros(0, len(FEATURES)))  # evaluate cannot compute over zero batches
        return super().compute(**kwargs)

    def add_rows(self, rows: Tensor) -> None:
        """Add (B, 4) rows of ``per_sample_statistics``; B may be 0."""
        columns = rows.detach().double().cpu().numpy()
        self.add_batch(**{name: columns[:, i] for i, name in enumerate(FEATURES)})

    def _compute(
        self, nats: np.ndarray, target_tokens: np.ndarray, target_bytes: np.ndarray, correct_tokens: np.ndarray
    ) -> dict[str, float]:
        return summarize(*(float(np.sum(column)) for column in (nats, target_tokens, target_bytes, correct_tokens)))
