"""The architecture ``plugin_template``: a Llama-style model twice as deep as clmkit's ``llama`` at half the width.

An architecture factory returns a transformers ``PretrainedConfig`` of a causal LM for a size preset,
a vocabulary size, a context length and the EOS id; clmkit builds the model from it
(``AutoModelForCausalLM.from_config``). ``clmkit.models.sized_config`` does the preset lookup and names
the presets when the one asked for is unknown.
"""

from __future__ import annotations

from typing import Any

from transformers import LlamaConfig, PretrainedConfig

from clmkit import hookimpl
from clmkit.models import sized_config

SIZES: dict[str, dict[str, Any]] = {
    name: {"hidden_size": h, "num_hidden_layers": n, "num_attention_heads": a, "intermediate_size": 8 * h // 3}
    for name, (h, n, a) in {"test": (32, 4, 2), "tiny": (96, 8, 4), "small": (192, 12, 6)}.items()
}


def plugin_template(preset: str, vocab_size: int, context_length: int, eos_token_id: int) -> PretrainedConfig:
    """A ``LlamaConfig`` of size ``preset`` (one of ``SIZES``), EOS doubling as BOS and padding token."""
    return sized_config(
        LlamaConfig,
        SIZES,
        preset,
        vocab_size=vocab_size,
        max_position_embeddings=context_length,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )


@hookimpl
def clmkit_register_architectures(register: Any) -> None:
    register("plugin_template", plugin_template)
