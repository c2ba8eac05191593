"""Built-in callbacks: token accounting that survives resume."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from clmkit.cross_entropy import IGNORE_INDEX


class TokenCounter(TrainerCallback, ExportableState):
    """Counts token slots, non-padding tokens and target tokens, and the session's tokens per second.

    The counts are saved in every checkpoint (``stateful_callbacks`` of ``trainer_state.json``)
    and continue on resume; throughput is measured over this session only, so a resumed run
    reports its true speed. Counting stays on the device until a log step.
    """

    def __init__(self, slots: int = 0, tokens: int = 0, targets: int = 0) -> None:
        self.slots, self.tokens, self.targets = slots, tokens, targets
        self._pending: torch.Tensor | None = None
        self._session_tokens = 0
        self._session_start: float | None = None

    def state(self) -> dict[str, Any]:
        return {"args": {"slots": self.slots, "tokens": self.tokens, "targets": self.targets}, "attributes": {}}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Trainer restores callback states only with restore_callback_states_from_checkpoint=True, so read
        # them here: on resume `state` holds the checkpoint's counts, on a fresh run this counter's own.
        saved = state.stateful_callbacks.get(type(self).__name__)
        if isinstance(saved, dict):
            self.slots, self.tokens, self.targets = (int(saved["args"][k]) for k in ("slots", "tokens", "targets"))
        self._session_start = time.perf_counter()
        self._session_tokens = 0

    def count(self, batch: Mapping[str, torch.Tensor]) -> None:
        """Add one local micro-batch (cheap: no device sync)."""
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        counts = torch.stack(
            [
                torch.tensor(ids.numel(), device=ids.device),
                mask.sum() if mask is not None else torch.tensor(ids.numel(), device=ids.device),
                (batch["labels"][:, 1:] != IGNORE_INDEX).sum(),
            ]
        )
        self._pending = counts if self._pending is None else self._pending + counts

    def logs(self, accelerator: Any) -> dict[str, float]:
        """Fold pending counts (summed over processes) into the totals; return them for a log line."""
        if self._pending is not None:
            pending = (
                accelerator.reduce(self._pending, reduction="sum") if accelerator.num_processes > 1 else self._pending
            )
            slots, tokens, targets = (int(x) for x in pending.tolist())
            self.slots += slots
            self.tokens += tokens
            self.targets += targets
            self._session_tokens += tokens
            self._pending = None
        elapsed = time.perf_counter() - (self._session_start or time.perf_counter())
        return {
            "tokens_seen": self.tokens,
            "target_tokens_seen": self.targets,
            "token_slots_seen": self.slots,
            "tokens_per_second": round(self._session_tokens / elapsed, 1) if elapsed > 0 else 0.0,
        }


class SaveOnInterrupt(TrainerCallback):
    """Ctrl-C during training: finish the optimizer step, save a checkpoint, then raise ``KeyboardInterrupt``.

    Use it as a context manager around ``trainer.train()`` (``with SaveOnInterrupt() as cb:
    trainer.add_callback(cb); trainer.train()``): it handles SIGINT only inside the block and only
    in the main thread, so a later Ctrl-C behaves as usual. A second Ctrl-C interrupts at once.
    The checkpoint is written even with ``save_strategy="no"``; resume with
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
