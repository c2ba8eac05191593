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
        setattr(config, key, type(getattr(config, key))(value) if getattr(config, key) is not None else value)
    return config


def build_model(config: GPT2Config) -> GPT2LMHeadModel:
    """A randomly initialized GPT-2 from ``config`` (never downloaded)."""
    return GPT2LMHeadModel(config)
