"""The loss API plugins implement: ``Loss`` and the ``LossInputs`` clmkit hands it.

A loss returns the sum of its per-item losses for one micro-batch and that micro-batch's share
of the normalizer. clmkit adds up the normalizer over the whole gradient-accumulation window and
all processes before dividing, which makes every loss exact under accumulation and data
parallelism (the course recipe divides each micro-batch by its own count).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from clmkit.training.cross_entropy import IGNORE_INDEX, linear_cross_entropy, logits_cross_entropy


@dataclass
class LossInputs:
    """What a loss sees for one micro-batch.

    ``labels`` are unshifted (position t is predicted from positions < t); ``targets`` is the
    shifted view a loss scores. Exactly one of ``logits`` (B x T x V) and ``hidden_states``
    (B x T x H, with ``lm_head``) is set, depending on ``Loss.consumes`` and ``chunked_loss``.
    """

    batch: Mapping[str, Tensor]
    logits: Tensor | None = None
    hidden_states: Tensor | None = None
    lm_head: nn.Linear | None = None
    chunk_size: int | None = None

    @property
    def labels(self) -> Tensor:
        return self.batch["labels"]

    @property
    def input_ids(self) -> Tensor:
        return self.batch["input_ids"]

    @property
    def targets(self) -> Tensor:
        """(B, T-1): the token each position predicts, ``-100`` where none."""
        return self.labels[:, 1:]

    def cross_entropy(
        self, token_weights: Tensor | None = None, z_loss: float = 0.0, label_smoothing: float = 0.0
    ) -> Tensor:
        """``sum_t w_t * CE_t`` over the shifted targets; ``token_weights`` is (B, T-1), default 1.

        Uses the chunked primitive when hidden states were captured, the logits otherwise; the
        result and its gradients are the same either way. ``z_loss`` and ``label_smoothing`` are
        those of ``clmkit.linear_cross_entropy`` (off by default).
        """
        targets = self.targets.reshape(-1)
        weights = None if token_weights is None else token_weights.reshape(-1)
        if self.hidden_states is not None:
            assert self.lm_head is not None
            hidden = self.hidden_states[:, :-1].reshape(-1, self.hidden_states.shape[-1])
            return linear_cross_entropy(
                hidden,
                self.lm_head.weight,
                self.lm_head.bias,
                targets,
                weights,
                self.chunk_size,
                z_loss,
                label_smoothing,
            )
        assert self.logits is not None, "LossInputs holds neither logits nor hidden states"
        logits = self.logits[:, :-1].reshape(-1, self.logits.shape[-1])
        return logits_cross_entropy(logits, targets, weights, z_loss, label_smoothing)


class Loss:
    """Base class of clmkit losses.

    Subclasses override ``token_weights`` (for any weighted token cross-entropy: the shared
    chunked primitive does the rest) or ``loss_sum`` (for anything else), and ``normalizer`` when
    the denominator is not the number of target tokens.
    """

    consumes: ClassVar[Literal["logits", "hidden_states"]] = "hidden_states"

    def normalizer(self, batch: Mapping[str, Tensor]) -> Tensor:
        """This micro-batch's share of the denominator: by default its number of target tokens."""
        return (batch["labels"][:, 1:] != IGNORE_INDEX).sum().float()

    def token_weights(self, batch: Mapping[str, Tensor]) -> Tensor | None:
        """Weight of each shifted target token, (B, T-1); ``None`` means 1 for every target."""
        return None

    def loss_sum(self, inputs: LossInputs) -> Tensor:
        """The micro-batch's loss before normalization: a scalar that is a sum over items."""
        return inputs.cross_entropy(self.token_weights(inputs.batch))


def loss_from_inputs(loss: Loss, inputs: LossInputs, normalizer: Tensor) -> Tensor:
    """``loss_sum / normalizer``, with an all-ignored window giving a zero loss rather than NaN."""
    total = loss.loss_sum(inputs)
    return total / torch.clamp(normalizer.to(total.device), min=torch.finfo(torch.float32).tiny)


def window_normalizer(loss: Loss, batches: Sequence[Mapping[str, Tensor]], accelerator: Any) -> Tensor:
    """The loss normalizer of one accumulation window: summed over its micro-batches and over all processes."""
    total = torch.stack([loss.normalizer(b).to(accelerator.device) for b in batches]).sum()
    if accelerator.num_processes > 1:
        total = accelerator.gather(total.reshape(1)).sum()
    return total
