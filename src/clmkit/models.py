"""GPT-2 configs from presets: ``tiny`` for a CPU, ``gpt2`` for the course's 124M model."""

from __future__ import annotations

from typing import Any

from transformers import GPT2Config, GPT2LMHeadModel

from clmkit.errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    "test": {"n_layer": 2, "n_head": 2, "n_embd": 64},
    # tuned with bench/time_to_quality.py: runs of minutes see a fraction of an epoch, so no dropout
    "tiny": {"n_layer": 4, "n_head": 4, "n_embd": 192, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "small": {"n_layer": 6, "n_head": 6, "n_embd": 384},
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768},
}


def gpt2_config(
    preset: str, vocab_size: int, context_length: int, eos_token_id: int, overrides: dict[str, Any] | None = None
) -> GPT2Config:
    """A GPT2Config from a preset, sized to the tokenizer and context, with ``overrides`` applied."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown model preset {preset!r}; presets: {', '.join(PRESETS)}.")
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=context_length,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        **PRESETS[preset],
    )
    for key, value in (overrides or {}).items():
        if not hasattr(config, key):
            raise ConfigError(
                f"--config-overrides names {key!r}, which GPT2Config does not have. "
                "Use a GPT2Config field such as n_layer, n_head, n_embd, n_positions, resid_pdrop."
            )
        setattr(config, key, _converted(key, value, getattr(config, key)))
    check_config_shape(config)
    return config


def _converted(key: str, value: Any, current: Any) -> Any:
    """An override's value in the type of the preset's value (a whole number stays whole)."""
    if current is None:
        return value
    kind = type(current)
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"--config-overrides {key}={value!r} must be true or false. Write e.g. {key}=true.")
    if kind is int and not (isinstance(value, int) and not isinstance(value, bool)):
        raise ConfigError(f"--config-overrides {key}={value!r} must be a whole number. Write e.g. {key}={current}.")
    if kind is float and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigError(f"--config-overrides {key}={value!r} must be a number. Write e.g. {key}={current}.")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"--config-overrides {key}={value!r} is not a {kind.__name__}. Write e.g. {key}={current!r}."
        ) from None


def check_config_shape(config: GPT2Config) -> None:
    """Refuse a GPT-2 shape that cannot be built or trained: sizes below 1, ``n_embd`` not divisible by
    ``n_head``, dropout outside [0, 1)."""
    for key in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size"):
        value = getattr(config, key, None)
        if value is not None and value < 1:
            raise ConfigError(f"the model's {key} must be at least 1, got {value}. Fix --config_overrides {key}=...")
    if config.n_embd % config.n_head:
        lower = config.n_embd - config.n_embd % config.n_head
        raise ConfigError(
            f"the model's n_embd {config.n_embd} is not divisible by n_head {config.n_head} (each attention head "
            f"gets n_embd / n_head dimensions). Pick n_embd a multiple of n_head, e.g. n_embd={lower or config.n_head}"
            f",n_head={config.n_head} in --config_overrides."
        )
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        value = getattr(config, key, None)
        if value is not None and not 0 <= value < 1:
            raise ConfigError(f"the model's {key} must be in [0, 1), got {value}. Fix --config_overrides {key}=...")


def build_model(config: GPT2Config) -> GPT2LMHeadModel:
    """A randomly initialized GPT-2 from ``config`` (never downloaded)."""
    return GPT2LMHeadModel(config)
