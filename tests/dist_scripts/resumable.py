"""A short run on either path that logs its batches and can be killed after a checkpoint; used by test_resume.

``python resumable.py WORKDIR OUT PATH K [OPTIMIZER]`` trains with checkpoints every K steps (AdamW and a
cosine schedule, or ``muon`` with the ``wsd`` schedule); after the
checkpoint at step K it writes ``OUT/saved-K`` and slows down, so the test can SIGKILL it mid-run.
The tests import ``train`` to run the uninterrupted and the resumed runs in their own process.
Every collated batch's fingerprint is appended to ``OUT/batches.txt``: the order the run saw them.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Any

from common import CONTEXT, load_inputs, runner, tiny_model
from datasets import Dataset
from transformers import TrainerCallback

from clmkit import ClmTrainingArguments, hookimpl
from clmkit.builtins.collators import CausalCollator

MAX_STEPS = 10


class RecordBatches:
    """A plugin registering collator ``recording``: the causal collator, logging each batch's fingerprint."""

    def __init__(self, log: Path) -> None:
        self.log = log

    @hookimpl
    def clmkit_register_collators(self, register: Any) -> None:
        log = self.log

        def recording(tokenizer: Any) -> Any:
            collate = CausalCollator(tokenizer)

            def record(examples: list[dict[str, Any]]) -> dict[str, Any]:
                batch = collate(examples)
                with log.open("a", encoding="utf-8") as f:
                    f.write(hashlib.md5(batch["input_ids"].numpy().tobytes()).hexdigest() + "\n")
                return batch

            return record

        register("recording", recording)


class SlowAfterSave(TrainerCallback):
    """After the checkpoint at step ``k``: write the marker ``saved-k``, then sleep each step until killed."""

    def __init__(self, out: Path, k: int) -> None:
        self.out, self.k = out, k

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.k:
            (self.out / f"saved-{self.k}").touch()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step > self.k:
            time.sleep(2)


OPTIMIZERS = {
    "adamw": {"optimizer": "adamw", "lr_scheduler_type": "cosine"},
    "muon": {"optimizer": "muon", "lr_scheduler_type": "wsd", "lr_decay_fraction": 0.5},
}


def train(
    workdir: Path,
    out: Path,
    path: str,
    save_steps: int,
    resume: str | None = None,
    callbacks=(),
    optimizer: str = "adamw",
) -> Any:
    """Train ``MAX_STEPS`` optimizer steps (over 3 epochs, with a short last window each epoch) into ``out``."""
    tokenizer, data = load_inputs(workdir)
    args = ClmTrainingArguments(
        output_dir=str(out),
        context_length=CONTEXT,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        collator="recording",
        learning_rate=3e-3,
        warmup_steps=2,
        weight_decay=0.1,
        max_steps=MAX_STEPS,
        save_strategy="steps",
        save_steps=save_steps,
        eval_strategy="no",
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        **OPTIMIZERS[optimizer],
    )
    run = runner(
        path,
        model=tiny_model(tokenizer, dropout=0.1),  # dropout draws random numbers: resume must restore the RNG
        args=args,
        processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"input_ids": data["resume_ids"]}),
        plugins=[RecordBatches(out / "batches.txt")],
        callbacks=list(callbacks),
    )
    run.train(resume_from_checkpoint=resume)
    return run


if __name__ == "__main__":
    workdir, out, path, k = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    optimizer = sys.argv[5] if len(sys.argv) > 5 else "adamw"
    train(workdir, out, path, save_steps=k, callbacks=[SlowAfterSave(out, k)], optimizer=optimizer)
