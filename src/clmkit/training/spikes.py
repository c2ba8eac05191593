"""The spike guard: skip the optimizer update of a step whose loss or gradient norm is an outlier.

The rule is llm.c's: a step is an outlier when its loss or its gradient norm lies more than
``threshold`` standard deviations above the mean of the last ``window`` steps (z-score), once the
window is full. Unlike llm.c, a skipped step's values stay out of the window, so a burst of bad
batches keeps being detected instead of raising the mean it is judged against. A skipped step
consumes its batch and counts in ``global_step``, but changes no parameter, no optimizer state and
not the learning-rate schedule: training goes on exactly as if that batch had not been there.
After ``max_skips`` skips in a row the run stops (``SpikeError``): the model, not the data, is
then the problem.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from clmkit.training.components import DivergedError, divergence_advice

logger = logging.getLogger(__name__)


class SpikeError(DivergedError):
    """The spike guard skipped ``max_skips`` updates in a row."""


def zscore(history: deque[float], value: float) -> float:
    """How many standard deviations ``value`` lies above the mean of ``history``; ``-inf`` until it is full."""
    if len(history) < (history.maxlen or 0):
        return -math.inf
    mean = sum(history) / len(history)
    std = math.sqrt(sum((x - mean) ** 2 for x in history) / len(history))
    return (value - mean) / std if std > 0 else (math.inf if value > mean else -math.inf)


def skip_next_update(optimizer: Any, skip: bool) -> None:
    """Make the next ``optimizer.step()`` of accelerate's ``AcceleratedOptimizer`` a no-op when ``skip``.

    The optimizer then reports ``step_was_skipped`` (as after an fp16 overflow), so the Trainer does not step
    the learning-rate schedule either; the no-op removes itself, and a step not skipped is reported as taken.
    """
    optimizer._is_overflow = skip
    if skip:

        def skipped(closure: Any = None) -> None:
            del optimizer.step  # the class's own step again from the next update on

        optimizer.step = skipped


class SpikeGuard(TrainerCallback, ExportableState):
    """Decides, before each optimizer update, whether to skip it; its history and counts are in every checkpoint.

    Both paths call ``should_skip(step, loss, grad_norm)`` with the step's loss and gradient norm, the same
    on every process. ``skips`` counts the updates skipped in the run (``metrics.json`` reports it).
    """

    def __init__(self, threshold: float, window: int = 128, max_skips: int = 5) -> None:
        self.threshold, self.window, self.max_skips = threshold, window, max_skips
        self.losses: deque[float] = deque(maxlen=window)
        self.norms: deque[float] = deque(maxlen=window)
        self.skips = 0
        self.in_a_row = 0

    def state(self) -> dict[str, Any]:
        return {
            "args": {"threshold": self.threshold, "window": self.window, "max_skips": self.max_skips},
            "attributes": {
                "losses": list(self.losses),
                "norms": list(self.norms),
                "skips": self.skips,
                "in_a_row": self.in_a_row,
            },
        }

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        saved = state.stateful_callbacks.get(type(self).__name__)  # a resumed run's history, as TokenCounter's
        if isinstance(saved, dict):
            attributes = saved["attributes"]
            self.losses = deque(attributes["losses"], maxlen=self.window)
            self.norms = deque(attributes["norms"], maxlen=self.window)
            self.skips, self.in_a_row = int(attributes["skips"]), int(attributes["in_a_row"])

    def should_skip(self, step: int, loss: float, grad_norm: float) -> bool:
        """Whether to skip the update of ``step``; logs each skip, and raises ``SpikeError`` after ``max_skips``."""
        z_loss, z_norm = zscore(self.losses, loss), zscore(self.norms, grad_norm)
        if max(z_loss, z_norm) <= self.threshold:
            self.losses.append(loss)
            self.norms.append(grad_norm)
            self.in_a_row = 0
            return False
        self.skips += 1
        self.in_a_row += 1
        logger.warning(
            "spike guard: skipped the update of step %d (loss %.4g, z %.1f; gradient norm %.4g, z %.1f)",
            step,
            loss,
            z_loss,
            grad_norm,
            z_norm,
        )
        if self.in_a_row >= self.max_skips:
            raise SpikeError(
                f"the spike guard skipped {self.in_a_row} updates in a row (the last at step {step}: loss {loss:.4g}, "
                f"gradient norm {grad_norm:.4g}, against a mean of {sum(self.losses) / len(self.losses):.4g} and "
                f"{sum(self.norms) / len(self.norms):.4g}): the run, not a batch, has gone wrong. "
                f"{divergence_advice()}"
            )
        return True


def spike_guard(args: Any) -> SpikeGuard | None:
    """The run's spike guard (``args.spike_guard`` and its window and limit), or ``None`` when it is off."""
    if args.spike_guard is None:
        return None
    return SpikeGuard(args.spike_guard, args.spike_guard_window, args.spike_guard_max_skips)
