"""The callback plugin ``plugin_template``: the wall time of every optimizer step, kept on the callback.

A plugin adds ``TrainerCallback`` objects to every run through the hook ``clmkit_callbacks(args)``:
both training paths (``ClmTrainer`` and ``ClmLoop``) call their events the same way. While the plugin
is installed, every run gets the callback.
"""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback

from clmkit import ClmTrainingArguments, hookimpl


class PluginTemplate(TrainerCallback):
    """Keeps ``step_seconds``: how long each optimizer step of this run took."""

    def __init__(self) -> None:
        self.step_seconds: list[float] = []
        self._started = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._started = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step_seconds.append(time.perf_counter() - self._started)


@hookimpl
def clmkit_callbacks(args: ClmTrainingArguments) -> list[TrainerCallback]:
    return [PluginTemplate()]
