"""Built-in architectures: the course's ``gpt2``, and ``llama`` and ``qwen3`` (RoPE, RMSNorm, SwiGLU, no biases;
Qwen3 adds QK-norm), each at the sizes ``test``, ``tiny``, ``small`` and ``base`` (about 124M parameters).

The sizes match across architectures in non-embedding parameters: a SwiGLU MLP with
``intermediate_size = 8/3 hidden_size`` has GPT-2's ``8 hidden_size²`` weights per layer. The heads of
``llama`` and ``qwen3`` are untied from the embeddings (``tie_word_embeddings=true`` ties them).
"""

from __future__ import annotations

from typing import Any

from transformers import GPT2Config, LlamaConfig, PretrainedConfig, Qwen3Config

from clmkit.hookspecs import ArchitectureFactory, Register, hookimpl
from clmkit.models import sized_config

GPT2_SIZES: dict[str, dict[str, Any]] = {
    "test": {"n_layer": 2, "n_head": 2, "n_embd": 64},
    # runs of minutes see a fraction of an epoch, so no dropout
    "tiny": {"n_layer": 4, "n_head": 4, "n_embd": 192, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "small": {"n_layer": 6, "n_head": 6, "n_embd": 384},
    "base": {"n_layer": 12, "n_head": 12, "n_embd": 768},  # the course's 124M GPT-2
}
# hidden size, layers, heads, SwiGLU width (8/3 of the hidden size, rounded to a multiple of 16)
LLAMA_SIZES: dict[str, dict[str, Any]] = {
    name: {
        "hidden_size": h,
        "num_hidden_layers": n,
        "num_attention_heads": a,
        "num_key_value_heads": a,
        "intermediate_size": i,
    }
    for name, (h, n, a, i) in {
        "test": (64, 2, 2, 176),
        "tiny": (192, 4, 4, 512),
        "small": (384, 6, 6, 1024),
        "base": (768, 12, 12, 2048),
    }.items()
}


def eos_ids(eos_token_id: int) -> dict[str, int]:
    """EOS as BOS, EOS and padding token, as clmkit's tokenizers use it."""
    return {"bos_token_id": eos_token_id, "eos_token_id": eos_token_id, "pad_token_id": eos_token_id}


def gpt2(preset: str, vocab_size: int, context_length: int, eos_token_id: int) -> PretrainedConfig:
    """The course's GPT-2: learned positions, LayerNorm, GELU MLP, biases, head tied to the embeddings."""
    return sized_config(
        GPT2Config,
        GPT2_SIZES,
        preset,
        vocab_size=vocab_size,
        n_positions=context_length,
        **eos_ids(eos_token_id),
    )


def _modern(
    config_class: type[PretrainedConfig],
    preset: str,
    vocab_size: int,
    context_length: int,
    eos_token_id: int,
    **fields: Any,
) -> PretrainedConfig:
    return sized_config(
        config_class,
        LLAMA_SIZES,
        preset,
        vocab_size=vocab_size,
        max_position_embeddings=context_length,
        **eos_ids(eos_token_id),
        tie_word_embeddings=False,
        attention_bias=False,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        **fields,
    )


def llama(preset: str, vocab_size: int, context_length: int, eos_token_id: int) -> PretrainedConfig:
    """Llama: rotary positions, RMSNorm, SwiGLU MLP, no biases, untied head."""
    return _modern(LlamaConfig, preset, vocab_size, context_length, eos_token_id, mlp_bias=False)


def qwen3(preset: str, vocab_size: int, context_length: int, eos_token_id: int) -> PretrainedConfig:
    """Qwen3: Llama's blocks plus RMSNorm on queries and keys (QK-norm), untied head."""
    size = LLAMA_SIZES.get(preset)  # an unknown preset is refused by sized_config
    return _modern(
        Qwen3Config,
        preset,
        vocab_size,
        context_length,
        eos_token_id,
        head_dim=size["hidden_size"] // size["num_attention_heads"] if size else None,  # Qwen3's default is 128
        use_sliding_window=False,
    )


@hookimpl
def clmkit_register_architectures(register: Register[ArchitectureFactory]) -> None:
    register("gpt2", gpt2)
    register("llama", llama)
    register("qwen3", qwen3)
