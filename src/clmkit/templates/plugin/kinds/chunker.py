"""The chunker ``plugin_template``: ``concat``'s blocks over each document's first ``max_document_tokens`` tokens.

A chunker receives tokenized documents and returns examples of 1 to ``context_length`` tokens, never
padded (the collator pads). This one subclasses the built-in ``clmkit.Concat``, so it appends one EOS
per document (``adds_eos = True``, inherited) and token accounting stays exact; what it cuts off a
document counts as ``tokens_dropped`` in ``trainer.data_stats``.
"""

from __future__ import annotations

from typing import Any

from clmkit import Concat, hookimpl
from clmkit.errors import ConfigError


class PluginTemplate(Concat):
    """``concat`` over each document's first ``max_document_tokens`` tokens."""

    def __init__(self, tokenizer: Any, context_length: int, max_document_tokens: int = 4096) -> None:
        super().__init__(tokenizer, context_length)  # sets tokenizer, context_length, eos_token_id
        if max_document_tokens < 1:
            raise ConfigError(f"max_document_tokens must be >= 1, got {max_document_tokens!r}. Fix chunker_kwargs.")
        self.max_document_tokens = max_document_tokens

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return super().__call__({"input_ids": [ids[: self.max_document_tokens] for ids in batch["input_ids"]]})


@hookimpl
def clmkit_register_chunkers(register: Any) -> None:
    register("plugin_template", PluginTemplate)
