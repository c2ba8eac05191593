"""The collator ``plugin_template``: the built-in ``causal`` collator, with chosen token ids never a target.

A collator turns examples into a batch ``{"input_ids", "attention_mask", "labels", ...}``: labels are the
unshifted input ids, ``-100`` at padding and wherever a token is no target. Subclassing
``clmkit.CausalCollator`` keeps its padding, its ``position_ids`` and its document boundaries
(``supports_document_boundaries = True``, inherited), so the ``packed`` chunker works with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from clmkit import CausalCollator, hookimpl


class PluginTemplate(CausalCollator):
    """``causal``, with the labels of the tokens in ``ignore_token_ids`` set to ``-100``."""

    def __init__(
        self, tokenizer: Any, ignore_token_ids: Sequence[int] = (), pad_to_multiple_of: int | None = None
    ) -> None:
        super().__init__(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
        self.ignore_token_ids = torch.tensor(list(ignore_token_ids), dtype=torch.long)

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = super().__call__(examples)
        batch["labels"] = batch["labels"].masked_fill(torch.isin(batch["input_ids"], self.ignore_token_ids), -100)
        return batch


@hookimpl
def clmkit_register_collators(register: Any) -> None:
    register("plugin_template", PluginTemplate)
