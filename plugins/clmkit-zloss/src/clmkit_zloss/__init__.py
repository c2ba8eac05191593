"""clmkit-zloss: the losses ``z_loss`` and ``label_smoothing``, on clmkit's chunked cross-entropy.

``z_loss`` is PaLM's auxiliary loss (Chowdhery et al. 2022, section 5): each target token adds
``z_coef * log(Z)^2``, where ``Z`` is the softmax normalizer, which keeps ``log Z`` near 0 and
the logits from drifting, a cheap guard against loss spikes in long or low-precision runs.
``label_smoothing`` scores every token against ``(1 - e) * onehot + e / V`` (Szegedy et al. 2016).
Both are per-token terms of the shared primitive ``clmkit.linear_cross_entropy``, so they never
hold the B x T x V logits and, like every clmkit loss, are exact under gradient accumulation.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from clmkit import Loss, LossInputs, hookimpl
from clmkit.errors import ConfigError

__version__ = "0.1.0"


class ZLoss(Loss):
    """Mean cross-entropy over the window's target tokens, plus ``z_coef * log(Z)^2`` per token.

    Arguments (``loss_kwargs``): ``z_coef`` (default ``1e-4``, PaLM's value) and
    ``label_smoothing`` (default 0), which can be combined.
    """

    def __init__(self, tokenizer: Any = None, z_coef: float = 1e-4, label_smoothing: float = 0.0) -> None:
        del tokenizer
        if not z_coef >= 0:
            raise ConfigError(f"z_coef must be >= 0, got {z_coef!r}. Typical values are 1e-4 to 1e-3.")
        if not 0 <= label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}. Typical values: 0.1.")
        self.z_coef = float(z_coef)
        self.label_smoothing = float(label_smoothing)

    def loss_sum(self, inputs: LossInputs) -> Tensor:
        return inputs.cross_entropy(
            self.token_weights(inputs.batch), z_loss=self.z_coef, label_smoothing=self.label_smoothing
        )


class LabelSmoothing(ZLoss):
    """Label-smoothed cross-entropy: ``label_smoothing`` defaults to 0.1 and ``z_coef`` to 0."""

    def __init__(self, tokenizer: Any = None, label_smoothing: float = 0.1, z_coef: float = 0.0) -> None:
        super().__init__(tokenizer, z_coef=z_coef, label_smoothing=label_smoothing)


@hookimpl
def clmkit_register_losses(register: Any) -> None:
    register("z_loss", ZLoss)
    register("label_smoothing", LabelSmoothing)
