"""Token accounting: how many token slots, real tokens and target tokens a run has trained on, kept across resume."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from clmkit.training.cross_entropy import IGNORE_INDEX


class TokenCounter(TrainerCallback, ExportableState):
    """Counts token slots, non-padding tokens and target tokens, and the session's tokens per second.

    The counts are saved in every checkpoint (``stateful_callbacks`` of ``trainer_state.json``)
    and continue on resume; throughput is measured over this session only, so a resumed run
    reports its true speed. Counting stays on the device until a log step or a checkpoint save.
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

    def fold(self, accelerator: Any) -> None:
        """Add the pending counts (summed over processes) to the totals.

        Every process must call it (it all-reduces). Both paths call it before saving a checkpoint, so the
        counts a checkpoint keeps are exact, not those of the last log step.
        """
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

    def logs(self, accelerator: Any) -> dict[str, float]:
        """Fold pending counts (summed over processes) into the totals; return them for a log line."""
        self.fold(accelerator)
        elapsed = time.perf_counter() - (self._session_start or time.perf_counter())
        return {
            "tokens_seen": self.tokens,
            "target_tokens_seen": self.targets,
            "token_slots_seen": self.slots,
            "tokens_per_second": round(self._session_tokens / elapsed, 1) if elapsed > 0 else 0.0,
        }
