"""A third-party clmkit plugin: a chunker, a loss and a callback, found through the ``clmkit`` entry point."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from clmkit import Loss, hookimpl
from clmkit.builtins.chunkers import Concat


class EveryOther(Concat):
    """``concat``'s blocks, keeping every other one (a cheap way to halve a corpus)."""

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return {"input_ids": super().__call__(batch)["input_ids"][::2]}


class FirstHalf(Loss):
    """Cross-entropy on the first half of every example's targets only."""

    def __init__(self, tokenizer: Any = None) -> None:
        del tokenizer

    def token_weights(self, batch):
        targets = batch["labels"][:, 1:]
        weights = (targets != -100).float()
        weights[:, targets.shape[1] // 2 :] = 0
        return weights

    def normalizer(self, batch):
        return self.token_weights(batch).sum()


class StepCounter(TrainerCallback):
    """Counts the optimizer steps of the run it was added to."""

    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


@hookimpl
def clmkit_register_chunkers(register):
    register("every_other", EveryOther)


@hookimpl
def clmkit_register_losses(register):
    register("first_half", FirstHalf)


@hookimpl
def clmkit_callbacks(args):
    return [StepCounter()]
