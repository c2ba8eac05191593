"""Ctrl-C that ends a run with a checkpoint instead of losing the steps since the last one."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from transformers import TrainerCallback


class SaveOnInterrupt(TrainerCallback):
    """Ctrl-C during training: finish the optimizer step, save a checkpoint, then raise ``KeyboardInterrupt``.

    Use it as a context manager around ``trainer.train()`` (``with SaveOnInterrupt() as cb:
    trainer.add_callback(cb); trainer.train()``): it handles SIGINT only inside the block and only
    in the main thread, so a later Ctrl-C behaves as usual. A second Ctrl-C interrupts at once: a
    checkpoint it stops mid-save is removed, never left half-written under a ``checkpoint-N`` name, so the
    newest complete checkpoint (``clmkit.training.checkpoint.newest_complete_checkpoint``) is the one to
    name. The checkpoint is written even with ``save_strategy="no"``; resume with
    ``trainer.train(resume_from_checkpoint=...)``.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> SaveOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nclmkit: interrupted; saving a checkpoint after this optimizer step (Ctrl-C again stops at once)",
            file=sys.stderr,
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.requested:
            control.should_save = True
            control.should_training_stop = True

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
