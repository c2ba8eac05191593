"""Built-in losses: ``cross_entropy`` and the key-token weighted ``keytoken``."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from clmkit.args import require_type
from clmkit.errors import ConfigError
from clmkit.hookspecs import Register, hookimpl
from clmkit.training.losses import Loss

logger = logging.getLogger(__name__)


class CrossEntropy(Loss):
    """Mean cross-entropy over every target token of the accumulation window (the model's own loss)."""

    def __init__(self, tokenizer: Any = None) -> None:
        del tokenizer


class KeyToken(Loss):
    """The course's key-token weighted loss, with its flaws fixed.

    Each sample's mean token loss ``l_i`` is weighted by ``w_i = 1 + alpha * c_i``, where ``c_i``
    counts key tokens among the sample's *targets*; the loss is ``sum w_i l_i / sum w_i`` over
    the window, so ``alpha`` changes the emphasis, not the scale. ``normalize="course"``
    reproduces the course recipe's ``keytoken_weighted_loss`` number for number: weights
    ``alpha * (1 + count over every labelled input position, position 0 included)``, per-sample
    means over the sample's targets, divided by the number of samples. On the course's unpadded
    batches that is all ``T-1`` positions; on padded ones, padding never changes a sample's loss,
    so the course mode is exact under accumulation too.
    """

    def __init__(
        self,
        tokenizer: Any = None,
        keywords: Sequence[str] = ("plt", "pd", "sk", "fit", "predict"),
        keytoken_ids: Sequence[int] | None = None,
        alpha: float = 1.0,
        normalize: Literal["weights", "course"] = "weights",
    ) -> None:
        if normalize not in ("weights", "course"):
            raise ConfigError(f"keytoken normalize must be 'weights' or 'course', got {normalize!r}. Fix loss_kwargs.")
        require_type(keywords, Sequence[str], "keytoken argument 'keywords'", "loss_kwargs")
        require_type(keytoken_ids, Sequence[int] | None, "keytoken argument 'keytoken_ids'", "loss_kwargs")
        require_type(alpha, float, "keytoken argument 'alpha'", "loss_kwargs")
        if (
            keytoken_ids is not None
            and tokenizer is not None
            and any(not 0 <= i < len(tokenizer) for i in keytoken_ids)
        ):
            raise ConfigError(
                f"keytoken argument 'keytoken_ids' {list(keytoken_ids)!r} holds ids outside the tokenizer's "
                f"{len(tokenizer)} tokens. Fix loss_kwargs."
            )
        ids = list(keytoken_ids or [])
        self.not_single_token: list[str] = []
        if keytoken_ids is None:
            if tokenizer is None:
                raise ConfigError("the keytoken loss needs a tokenizer to turn keywords into token ids.")
            ids, self.not_single_token = keyword_token_ids(tokenizer, keywords)
            if self.not_single_token:
                logger.warning(
                    "keytoken: these keywords are not a single token and are not counted: %s",
                    ", ".join(repr(k) for k in self.not_single_token),
                )
        if not ids:
            raise ConfigError(
                f"the keytoken loss has no key token: none of {list(keywords)!r} is a single token of this "
                "tokenizer. Pass other keywords, or keytoken_ids."
            )
        self.keytoken_ids = torch.tensor(sorted(set(ids)))
        self.alpha = float(alpha)
        self.normalize = normalize

    def _is_key(self, ids: Tensor) -> Tensor:
        return torch.isin(ids, self.keytoken_ids.to(ids.device))

    def _sample_weights(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Per-sample weights and target counts (course mode: key tokens at position 0 count too)."""
        targets = batch["labels"][:, 1:]
        valid = targets != -100
        n = valid.sum(1).float()
        if self.normalize == "course":
            counts = (self._is_key(batch["input_ids"]) & (batch["labels"] != -100)).sum(1).float()
            return self.alpha * (1.0 + counts), n
        counts = (self._is_key(targets) & valid).sum(1).float()
        return torch.where(n > 0, 1.0 + self.alpha * counts, torch.zeros_like(n)), n

    def normalizer(self, batch: Mapping[str, Tensor]) -> Tensor:
        if self.normalize == "course":
            return torch.tensor(float(batch["labels"].shape[0]))
        return self._sample_weights(batch)[0].sum()

    def token_weights(self, batch: Mapping[str, Tensor]) -> Tensor:
        weights, n = self._sample_weights(batch)
        per_token = weights / n.clamp(min=1)
        valid = batch["labels"][:, 1:] != -100
        return per_token.unsqueeze(1) * valid


def keyword_token_ids(tokenizer: Any, keywords: Sequence[str]) -> tuple[list[int], list[str]]:
    """Token ids of each keyword with and without a leading space; the variants that are not one token."""
    ids: list[int] = []
    missing: list[str] = []
    for word in keywords:
        for variant in (word, " " + word):
            encoded = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if len(encoded) == 1:
                ids.append(encoded[0])
            else:
                missing.append(variant)
    return ids, missing


@hookimpl
def clmkit_register_losses(register: Register) -> None:
    register("cross_entropy", CrossEntropy)
    register("keytoken", KeyToken)
