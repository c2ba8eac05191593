"""Built-in collator ``causal``: pad with EOS, mask labels at padding only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from clmkit.errors import ConfigError, DataError
from clmkit.hookspecs import Register, hookimpl
from clmkit.training.cross_entropy import IGNORE_INDEX


class CausalCollator:
    """The course recipe's ``DataCollatorForLanguageModeling(mlm=False)`` with pad = EOS, done right.

    Labels are the input ids, ``-100`` only at padding positions (known from the lengths, not
    from the token id), so a real EOS stays a target and the model learns to end documents.
    Extra integer columns of the examples (e.g. ``position_ids``) are padded with 0 and passed on.

    It keeps document boundaries: where ``position_ids`` restart at 0 inside a row (a new document
    of a packed row), that token's label is ``-100`` too — nothing before it in the row belongs to
    its document — and ``clmkit.data.packing.model_inputs`` makes the model attend within documents.
    """

    supports_document_boundaries = True

    def __init__(self, tokenizer: Any, pad_to_multiple_of: int | None = None) -> None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise DataError(
                "the tokenizer has neither a pad nor an EOS token; the causal collator pads with one of them. "
                "Set tokenizer.eos_token (e.g. '<|endoftext|>')."
            )
        self.pad_token_id = int(pad)
        if pad_to_multiple_of is not None and (
            not isinstance(pad_to_multiple_of, int) or isinstance(pad_to_multiple_of, bool) or pad_to_multiple_of < 1
        ):
            raise ConfigError(
                f"collator 'causal' argument 'pad_to_multiple_of' must be a whole number of at least 1 (or null), "
                f"got {pad_to_multiple_of!r}. Fix collator_kwargs."
            )
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        lengths = [len(ex["input_ids"]) for ex in examples]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        extra = {
            key: torch.zeros((len(examples), width), dtype=torch.long)
            for key in examples[0]
            if key not in ("input_ids", "attention_mask", "labels")
        }
        for row, (ex, n) in enumerate(zip(examples, lengths, strict=True)):
            input_ids[row, :n] = torch.as_tensor(ex["input_ids"], dtype=torch.long)
            attention_mask[row, :n] = 1
            for key, tensor in extra.items():
                tensor[row, :n] = torch.as_tensor(ex[key], dtype=torch.long)
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        if "position_ids" in extra:
            labels[:, 1:].masked_fill_(extra["position_ids"][:, 1:] == 0, IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, **extra}


@hookimpl
def clmkit_register_collators(register: Register) -> None:
    register("causal", CausalCollator)
