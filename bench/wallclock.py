"""A learning-rate schedule over wall-clock time, for benchmarks that train for a fixed time instead of fixed steps.

A step-based schedule needs the number of steps in advance, which a shared machine cannot promise:
a slow minute would leave a cosine half-decayed when the budget runs out. ``WallClockSchedule``
runs the recipe's own schedule shape (its ``lr_scheduler_type``, warmup share and, for ``wsd``,
decay share) over the fraction of the time budget spent instead, so every recipe ends its schedule
exactly when its budget is spent, whatever the machine's speed, and stops training there.

    clock = WallClockSchedule(budget=150.0)
    trainer.add_callback(clock)           # Trainer, ClmTrainer or ClmLoop
    trainer.train()                       # stops after 150 s of training
    with clock.paused():                  # time spent here is not training time
        ...
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from transformers import SchedulerType, TrainerCallback

Shape = Callable[[float], float]  # the learning-rate factor at a fraction of the budget spent, in [0, 1]

DECAYS: dict[str, Shape] = {  # from 1 at the start of the decay to 0 at its end
    "linear": lambda done: 1.0 - done,
    "cosine": lambda done: 0.5 * (1.0 + math.cos(math.pi * done)),
    "1-sqrt": lambda done: 1.0 - math.sqrt(done),
}


def warmup_fraction(args: Any) -> float:
    """The share of the budget spent warming up: ``warmup_steps`` below 1 is that share (a step count has no
    meaning when the number of steps is unknown, so it is refused)."""
    if args.warmup_steps >= 1:
        raise ValueError(
            f"warmup_steps {args.warmup_steps} is a number of steps; a wall-clock budget needs a share, e.g. 0.05."
        )
    return float(args.warmup_steps)


def schedule_shape(args: Any) -> Shape:
    """The learning-rate factor of ``args.lr_scheduler_type`` as a function of the share of the budget spent:
    ``cosine`` and ``linear`` decay to 0 after the warmup, ``constant_with_warmup`` stays at 1 after it,
    ``constant`` has no warmup, and ``warmup_stable_decay`` stays at 1 until the last ``lr_decay_fraction``
    of the budget, then decays to 0 (linearly, or as ``lr_scheduler_kwargs["decay_type"]`` says)."""
    kind = SchedulerType(args.lr_scheduler_type).value
    if kind == "constant":
        return lambda done: 1.0
    warmup = warmup_fraction(args)
    if kind == "constant_with_warmup":
        decay_start, decay = warmup, lambda done: 1.0
    elif kind in ("cosine", "linear"):
        decay_start, decay = warmup, DECAYS[kind]
    elif kind == "warmup_stable_decay":
        decay_type = (args.lr_scheduler_kwargs or {}).get("decay_type", "linear")
        if decay_type not in DECAYS:
            raise ValueError(f"decay_type {decay_type!r} is none of {', '.join(DECAYS)}.")
        decay_start, decay = max(warmup, 1.0 - args.lr_decay_fraction), DECAYS[decay_type]
    else:
        raise ValueError(
            f"lr_scheduler_type {kind!r} has no wall-clock version here; use cosine, linear, constant, "
            "constant_with_warmup or wsd."
        )

    def shape(done: float) -> float:
        if done < warmup:
            return done / warmup
        if done < decay_start:
            return 1.0
        return decay(min((done - decay_start) / (1.0 - decay_start), 1.0))

    return shape


class WallClockSchedule(TrainerCallback):
    """Runs the recipe's schedule shape (``schedule_shape``) over ``budget`` seconds of training and stops
    training at the first step end past the budget.

    It replaces the step-based factors of the trainer's ``LambdaLR`` when training begins; time spent
    inside ``paused()`` (a snapshot of the weights, say) is not counted. ``elapsed`` is the training
    time at the last step's end.
    """

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.elapsed = 0.0
        self.paused_seconds = 0.0
        self._start = 0.0
        self._paused_at: float | None = None

    def seconds(self) -> float:
        """Training seconds since training began, pauses left out."""
        now = self._paused_at if self._paused_at is not None else time.perf_counter()
        return now - self._start - self.paused_seconds

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Stop the clock for the duration of the ``with`` block."""
        self._paused_at = time.perf_counter()
        try:
            yield
        finally:
            self.paused_seconds += time.perf_counter() - self._paused_at
            self._paused_at = None

    def on_train_begin(self, args: Any, state: Any, control: Any, lr_scheduler: Any = None, **kwargs: Any) -> None:
        shape = schedule_shape(args)

        def factor(_: int) -> float:  # the step LambdaLR passes is ignored: time decides
            return shape(min(self.seconds() / self.budget, 1.0))

        lr_scheduler.lr_lambdas = [factor for _ in lr_scheduler.lr_lambdas]
        self._start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.elapsed = self.seconds()
        if self.elapsed >= self.budget:
            control.should_training_stop = True
