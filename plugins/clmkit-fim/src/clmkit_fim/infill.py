"""Infilling with a model trained with the ``fim`` chunker."""

from __future__ import annotations

from typing import Any

from clmkit.errors import ConfigError
from clmkit.generation import context_size
from clmkit_fim.fim import sentinel_ids


def infill(model: Any, tokenizer: Any, prefix: str, suffix: str, max_new_tokens: int = 64) -> str:
    """The middle ``model`` writes between ``prefix`` and ``suffix``: greedy, until EOS or ``max_new_tokens``.

    The prompt is PSM, ``<fim_prefix> prefix <fim_suffix> suffix <fim_middle>``, each part
    tokenized on its own as in training.
    """
    import torch
    from transformers import GenerationConfig

    pre, suf, mid = sentinel_ids(tokenizer)
    prefix_ids, suffix_ids = tokenizer([prefix, suffix], add_special_tokens=False)["input_ids"]
    prompt = [pre, *prefix_ids, suf, *suffix_ids, mid]
    context = context_size(model.config)
    if context is not None and len(prompt) + max_new_tokens > context:
        raise ConfigError(
            f"the infill prompt is {len(prompt)} tokens and {max_new_tokens} new tokens are asked for, but the "
            f"model's context is {context} tokens. Shorten the prefix or the suffix, or ask for fewer new tokens."
        )
    eos = tokenizer.eos_token_id
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    input_ids = torch.tensor([prompt], device=model.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config)
    finally:
        model.train(was_training)
    middle = output[0, len(prompt) :].tolist()
    if eos in middle:
        middle = middle[: middle.index(eos)]
    return tokenizer.decode(middle, skip_special_tokens=True)
