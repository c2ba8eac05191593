"""The fill-in-the-middle transformation (Bavarian et al. 2022, "Efficient Training of Language
Models to Fill in the Middle"), as SantaCoder and StarCoder apply it.

With probability ``rate`` a document is cut at two random character positions into prefix,
middle and suffix; each part is tokenized on its own and the document becomes

- PSM: ``<fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle``, or, with probability
  ``spm_rate``,
- SPM: ``<fim_prefix> <fim_suffix> suffix <fim_middle> prefix middle`` (StarCoder's SPM variant,
  in which prefix and middle stay contiguous).

Documents are then joined with EOS and cut into blocks exactly as the built-in ``concat`` does,
so the EOS after the middle teaches the model where an infill ends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from clmkit.builtins.chunkers import Concat
from clmkit.errors import ConfigError, DataError

FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE = "<fim_prefix>", "<fim_suffix>", "<fim_middle>"


class Sentinels(NamedTuple):
    """Token ids of the three FIM sentinels."""

    prefix: int
    suffix: int
    middle: int


def prepare(tokenizer: Any, model: Any = None) -> Sentinels:
    """Add the FIM sentinels to ``tokenizer`` (once) and grow ``model``'s token embeddings to match.

    Call it before building the optimizer; ``ClmTrainer`` and ``ClmLoop`` do it for you when a run uses the
    ``fim`` chunker (hook ``clmkit_prepare_model``).
    """
    tokenizer.add_special_tokens(
        {"extra_special_tokens": [FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE]}, replace_extra_special_tokens=False
    )
    if model is not None and model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return sentinel_ids(tokenizer)


def sentinel_ids(tokenizer: Any) -> Sentinels:
    """The sentinels' token ids, or a DataError when the tokenizer lacks them."""
    vocab = tokenizer.get_vocab()
    missing = [token for token in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE) if token not in vocab]
    if missing:
        raise DataError(
            f"the tokenizer has no FIM sentinel tokens {missing}: it was not used to train with chunker 'fim'. "
            "Use the tokenizer saved with a FIM-trained model, or call clmkit_fim.prepare(tokenizer, model)."
        )
    return Sentinels(vocab[FIM_PREFIX], vocab[FIM_SUFFIX], vocab[FIM_MIDDLE])


class FillInTheMiddle(Concat):
    """The ``fim`` chunker: ``concat`` over documents rearranged for fill-in-the-middle.

    Arguments (``chunker_kwargs``): ``rate`` (default 0.5) is the probability that a document is
    rearranged, ``spm_rate`` (default 0.5) the probability that a rearranged one uses SPM order
    rather than PSM, ``seed`` (default 0) makes the choice reproducible: each document draws from
    a generator seeded by ``seed`` and a hash of its tokens, so the result does not depend on
    batching, worker processes or order, and ``datasets`` caching stays valid. The tokenizer must hold
    the sentinels already: the plugin's ``clmkit_prepare_model`` adds them (or call ``prepare``).
    """

    def __init__(
        self, tokenizer: Any, context_length: int, rate: float = 0.5, spm_rate: float = 0.5, seed: int = 0
    ) -> None:
        for name, value in (("rate", rate), ("spm_rate", spm_rate)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"fim {name} must be a probability in [0, 1], got {value!r}. Fix chunker_kwargs.")
        if seed < 0:
            raise ConfigError(f"fim seed must be a non-negative integer, got {seed!r}. Fix chunker_kwargs.")
        super().__init__(tokenizer, context_length)
        self.rate, self.spm_rate, self.seed = rate, spm_rate, seed
        self.sentinels = sentinel_ids(tokenizer)

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return super().__call__({"input_ids": [self.permute(ids) for ids in batch["input_ids"]]})

    def permute(self, ids: Sequence[int]) -> list[int]:
        """One document's tokens, rearranged with probability ``rate`` (the same tokens give the same result)."""
        rng = self._rng(ids)
        if not ids or rng.random() >= self.rate:
            return list(ids)
        text = self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)
        start, end = sorted(rng.integers(0, len(text) + 1, size=2).tolist())
        parts = [text[:start], text[start:end], text[end:]]
        prefix, middle, suffix = self.tokenizer(parts, add_special_tokens=False)["input_ids"]
        pre, suf, mid = self.sentinels
        if rng.random() < self.spm_rate:
            return [pre, suf, *suffix, mid, *prefix, *middle]
        return [pre, *prefix, suf, *suffix, mid, *middle]

    def _rng(self, ids: Sequence[int]) -> np.random.Generator:
        digest = hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=8).digest()
        return np.random.default_rng([self.seed, int.from_bytes(digest, "little")])
