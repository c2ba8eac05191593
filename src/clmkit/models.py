"""Model configs from a registered architecture and a size preset; models are built from configs, never downloaded.

An architecture (``gpt2``, ``llama``, ``qwen3``, or a plugin's) is a ``clmkit.hookspecs.ArchitectureFactory``
registered with ``clmkit_register_architectures``: given a size preset, the vocabulary and the
context length it returns a transformers config, so the saved model loads with
``AutoModelForCausalLM`` anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from clmkit.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

    from clmkit.plugins import Plugins

PRESETS = ("test", "tiny", "small", "base")  # the sizes every built-in architecture has
VOCAB_MULTIPLE = 64  # embedding rows are padded to a multiple of this: matmuls of aligned shapes run faster


def padded_vocab_size(vocab_size: int) -> int:
    """``vocab_size`` rounded up to a multiple of ``VOCAB_MULTIPLE`` (the extra rows are never targets)."""
    return math.ceil(vocab_size / VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def sized_config(
    config_class: type[PretrainedConfig], sizes: Mapping[str, Mapping[str, Any]], preset: str, **fields: Any
) -> PretrainedConfig:
    """``config_class`` with the fields of size ``preset`` (one of ``sizes``) and ``fields``: the body of an
    architecture factory."""
    if preset not in sizes:
        raise ConfigError(
            f"unknown model preset {preset!r}; presets: {', '.join(sizes)}. Pick one with --model_preset."
        )
    return config_class(**sizes[preset], **fields)


def model_config(
    architecture: str,
    preset: str,
    vocab_size: int,
    context_length: int,
    eos_token_id: int,
    overrides: Mapping[str, Any] | None = None,
    plugins: Plugins | None = None,
) -> PretrainedConfig:
    """The config of ``architecture`` at size ``preset`` for a tokenizer of ``vocab_size`` tokens (padded to a
    multiple of 64) and ``context_length`` positions, with ``overrides`` (config fields) applied and checked."""
    from clmkit.plugins import Plugins

    factory = (plugins or Plugins()).get("architectures", architecture).obj
    config = factory(preset, padded_vocab_size(vocab_size), context_length, eos_token_id)
    for key, value in (overrides or {}).items():
        if not hasattr(config, key):
            raise ConfigError(
                f"--config_overrides names {key!r}, which {type(config).__name__} does not have. Use one of its "
                f"fields, e.g. num_hidden_layers, hidden_size, num_attention_heads, max_position_embeddings."
            )
        setattr(config, key, _converted(key, value, getattr(config, key)))
    given_head_dim = "head_dim" in (overrides or {})
    check_config_shape(config, given_head_dim)
    follow_overrides(config, set(overrides or {}))
    return config


def follow_overrides(config: PretrainedConfig, overridden: set[str]) -> None:
    """Recompute what a config derived from its shape at construction (Llama's ``head_dim``, Qwen3's per-layer
    ``layer_types``) after ``overridden`` fields changed the shape, unless those were overridden themselves."""
    if getattr(config, "head_dim", None) is not None and "head_dim" not in overridden:
        config.head_dim = config.hidden_size // config.num_attention_heads
    layer_types = getattr(config, "layer_types", None)
    if layer_types and "layer_types" not in overridden and len(set(layer_types)) == 1:
        config.layer_types = [layer_types[0]] * config.num_hidden_layers


def _converted(key: str, value: Any, current: Any) -> Any:
    """An override's value in the type of the preset's value (a whole number stays whole)."""
    if current is None:
        return value
    kind = type(current)
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"--config_overrides {key}={value!r} must be true or false. Write e.g. {key}=true.")
    if kind is int and not (isinstance(value, int) and not isinstance(value, bool)):
        raise ConfigError(f"--config_overrides {key}={value!r} must be a whole number. Write e.g. {key}={current}.")
    if kind is float and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigError(f"--config_overrides {key}={value!r} must be a number. Write e.g. {key}={current}.")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"--config_overrides {key}={value!r} is not a {kind.__name__}. Write e.g. {key}={current!r}."
        ) from None


def check_config_shape(config: PretrainedConfig, given_head_dim: bool = False) -> None:
    """Refuse a shape that cannot be built or trained: sizes below 1, a hidden size the heads do not divide
    (unless ``head_dim`` is given), odd rotary heads, query heads not a multiple of the key/value heads, dropout
    outside [0, 1)."""
    for key in (
        "num_hidden_layers",
        "num_attention_heads",
        "hidden_size",
        "max_position_embeddings",
        "vocab_size",
        "intermediate_size",
        "num_key_value_heads",
    ):
        value = getattr(config, key, None)
        if isinstance(value, int) and value < 1:
            raise ConfigError(f"the model's {key} must be at least 1, got {value}. Fix --config_overrides {key}=...")
    hidden, heads = config.hidden_size, config.num_attention_heads
    if not given_head_dim and hidden % heads:
        lower = hidden - hidden % heads
        raise ConfigError(
            f"the model's hidden size {hidden} is not divisible by its {heads} attention heads (each head gets "
            f"hidden_size / num_attention_heads dimensions). Pick a multiple of the heads in --config_overrides, "
            f"e.g. {lower or heads}."
        )
    head_dim = getattr(config, "head_dim", None) if given_head_dim else hidden // heads
    if getattr(config, "rope_parameters", None) is not None and isinstance(head_dim, int) and head_dim % 2:
        raise ConfigError(
            f"the model's attention heads have {head_dim} dimensions, an odd number: rotary positions rotate pairs "
            "of dimensions. Pick hidden_size / num_attention_heads (or head_dim) even in --config_overrides."
        )
    kv_heads = getattr(config, "num_key_value_heads", None)
    if isinstance(kv_heads, int) and heads % kv_heads:
        raise ConfigError(
            f"the model's {heads} attention heads are not a multiple of its {kv_heads} key/value heads. Pick "
            "num_key_value_heads dividing num_attention_heads in --config_overrides."
        )
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout"):
        value = getattr(config, key, None)
        if isinstance(value, int | float) and not 0 <= value < 1:
            raise ConfigError(f"the model's {key} must be in [0, 1), got {value}. Fix --config_overrides {key}=...")


def build_model(config: PretrainedConfig) -> PreTrainedModel:
    """A randomly initialized causal LM of ``config``'s architecture (``AutoModelForCausalLM``, never downloaded)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(config)


def suppress_padding_tokens(model: PreTrainedModel, tokenizer_size: int) -> None:
    """Never generate the padding rows of the embedding table (ids the tokenizer cannot decode): they are listed
    in the saved ``generation_config.json`` as ``suppress_tokens``, which ``generate`` and pipelines apply."""
    vocab = int(model.get_input_embeddings().weight.shape[0])  # type: ignore[index]
    if vocab > tokenizer_size:
        model.generation_config.suppress_tokens = list(range(tokenizer_size, vocab))


def non_embedding_parameters(model: PreTrainedModel) -> int:
    """Parameters outside the token and position embeddings and the output head: the size that decides compute
    per token, and what model comparisons hold equal."""
    embedding_ids = {id(p) for m in model.modules() if type(m).__name__ == "Embedding" for p in m.parameters()}
    head = model.get_output_embeddings()
    embedding_ids |= {id(p) for p in head.parameters()} if head is not None else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in embedding_ids)
