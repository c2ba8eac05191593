"""Completions from a saved model folder through transformers' ``pipeline("text-generation")``.

A GPT-2 has absolute positions: prompt and new tokens together must fit its context, so a prompt
that is too long keeps only its last tokens (with a warning) instead of crashing the model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clmkit.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# sampling defaults that give code-like text from small models trained for minutes
TEMPERATURE = 0.7
TOP_P = 0.9
REPETITION_PENALTY = 1.1


def default_generation_config(eos_token_id: int, max_new_tokens: int) -> Any:
    """The ``GenerationConfig`` saved with a model trained by clmkit: sampling, EOS as BOS, EOS and pad."""
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=True,
        temperature=TEMPERATURE,
        top_p=TOP_P,
        repetition_penalty=REPETITION_PENALTY,
        max_new_tokens=max_new_tokens,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )


# files that hold a model's weights, and files that hold a tokenizer (any one of each suffices)
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model")


def check_model_dir(model_dir: str | Path) -> Path:
    """The folder, if it holds a saved model: ``config.json``, weights and tokenizer files; else a DataError
    naming what is missing and the fix."""
    path = Path(model_dir).expanduser()
    if not (path / "config.json").is_file():
        raise DataError(
            f"{str(model_dir)!r} is not a saved model folder (no config.json in it). "
            "Pass the output folder of `clmkit train` (default clmkit-out)."
        )
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise DataError(
            f"model folder {str(model_dir)!r} holds no weights (none of {', '.join(WEIGHT_FILES)}). "
            "Pass the output folder of a finished `clmkit train` run, or a checkpoint-N folder inside it."
        )
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise DataError(
            f"model folder {str(model_dir)!r} holds no tokenizer files (none of {', '.join(TOKENIZER_FILES)}). "
            "Save the tokenizer into it (tokenizer.save_pretrained(folder)), or pass the output folder of "
            "`clmkit train`, which holds both."
        )
    return path


def check_sampling(max_new_tokens: int, temperature: float, top_p: float, context: int | None) -> None:
    """Refuse generation options that cannot work: no new token, no room in the context, a temperature
    below 0 (0 means greedy), a ``top_p`` outside (0, 1]."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ConfigError(
            f"--max_new_tokens must be at least 1, got {max_new_tokens!r}. Pass e.g. --max_new_tokens 48."
        )
    if context is not None and max_new_tokens >= context:
        raise ConfigError(
            f"--max_new_tokens {max_new_tokens} leaves no room for the prompt in the model's context of "
            f"{context} tokens. Ask for at most {context - 1} new tokens."
        )
    if not isinstance(temperature, int | float) or not math.isfinite(temperature) or temperature < 0:
        raise ConfigError(
            f"--temperature must be a finite number of at least 0 (0 decodes greedily), got {temperature!r}. "
            "Pass e.g. --temperature 0.7."
        )
    if not isinstance(top_p, int | float) or not 0 < top_p <= 1:
        raise ConfigError(f"--top_p must be in (0, 1], got {top_p!r}. Pass e.g. --top_p 0.9 (1 keeps every token).")


def check_prompts(prompts: Sequence[str]) -> None:
    """Refuse prompts a causal LM cannot continue: none at all, or an empty (or whitespace-only) one."""
    if isinstance(prompts, str):
        prompts = [prompts]
    for prompt in prompts:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(
                f"the prompt {prompt!r} is empty; a causal LM needs at least one token to continue. "
                "Pass some text (e.g. --prompts 'def main():')."
            )


def context_size(config: Any) -> int | None:
    """The number of positions of a model config (``n_positions`` or ``max_position_embeddings``)."""
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def load_generator(model_dir: str | Path) -> Any:
    """A text-generation pipeline on a saved model folder (model, tokenizer and generation config)."""
    from transformers import pipeline

    return pipeline("text-generation", model=str(check_model_dir(model_dir)))


def fit_prompt(tokenizer: Any, prompt: str, max_new_tokens: int, context: int | None) -> str:
    """The prompt, cut to its last tokens if it and ``max_new_tokens`` would overflow ``context``."""
    if not prompt:
        raise ConfigError("the prompt is empty; a causal LM needs at least one token to continue. Pass some text.")
    if context is None:
        return prompt
    check_sampling(max_new_tokens, 0.0, 1.0, context)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    room = context - max_new_tokens
    if len(ids) <= room:
        return prompt
    logger.warning(
        "the prompt is %d tokens but the model's context is %d and %d new tokens are asked for; "
        "keeping its last %d tokens (pass a shorter prompt or fewer --max_new_tokens to avoid this)",
        len(ids),
        context,
        max_new_tokens,
        room,
    )
    return tokenizer.decode(ids[-room:])


def complete(
    generator: Any,
    prompt: str,
    max_new_tokens: int = 48,
    temperature: float = TEMPERATURE,
    top_p: float = TOP_P,
    seed: int = 0,
) -> str:
    """The prompt (truncated if needed) followed by its sampled completion; greedy when temperature is 0.

    Other generation settings (e.g. ``repetition_penalty``) come from the model's generation config.
    """
    from transformers import set_seed

    check_sampling(max_new_tokens, temperature, top_p, context_size(generator.model.config))
    prompt = fit_prompt(generator.tokenizer, prompt, max_new_tokens, context_size(generator.model.config))
    set_seed(seed)
    sampling: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p}
    out = generator(
        prompt,
        max_new_tokens=max_new_tokens,
        pad_token_id=generator.tokenizer.eos_token_id,
        **sampling,
    )
    return out[0]["generated_text"]
