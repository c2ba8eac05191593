"""A short run on either path that logs its batches and can be killed after a checkpoint; used by test_resume.

``python resumable.py WORKDIR OUT PATH K [OPTIMIZER [KIND]]`` trains with checkpoints every K steps (AdamW and a
cosine schedule, or ``muon`` with the ``wsd`` schedule) on a dataset of KIND (``train_data``); after the
checkpoint at step K it writes ``OUT/saved-K`` and slows down, so the test can SIGKILL it mid-run.
The tests import ``train`` to run the uninterrupted and the resumed runs in their own process.
Every collated batch is appended to ``OUT/batches.txt`` (process r > 0: ``batches-r.txt``) as one line of its
examples' fingerprints: the order the run saw them.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from common import CONTEXT, load_inputs, runner, tiny_model
from datasets import Dataset, IterableDataset
from transformers import TrainerCallback

from clmkit import ClmTrainingArguments, hookimpl
from clmkit.builtins.collators import CausalCollator
from clmkit.data.mixtures import Mixture, Source

MAX_STEPS = 10


class RecordBatches:
    """A plugin registering collator ``recording``: the causal collator, logging each batch's fingerprint."""

    def __init__(self, log: Path) -> None:
        self.log = log

    @hookimpl
    def clmkit_register_collators(self, register: Any) -> None:
        rank = int(os.environ.get("RANK", "0"))
        log = self.log if rank == 0 else self.log.with_name(f"{self.log.stem}-{rank}.txt")

        def recording(tokenizer: Any) -> Any:
            collate = CausalCollator(tokenizer)

            def record(examples: list[dict[str, Any]]) -> dict[str, Any]:
                batch = collate(examples)
                rows = [hashlib.md5(row.numpy().tobytes()).hexdigest()[:12] for row in batch["input_ids"]]
                with log.open("a", encoding="utf-8") as f:
                    f.write(",".join(rows) + "\n")
                return batch

            record.supports_document_boundaries = True  # type: ignore[attr-defined]  # the causal collator keeps them
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


def documents(texts: list[str]) -> list[str]:
    """The source files cut into documents of about 40 lines, so every kind has many to read."""
    lines = [line for text in texts for line in text.splitlines(keepends=True)]
    return ["".join(lines[i : i + 40]) for i in range(0, len(lines), 40)]


def stream(texts: list[str]) -> IterableDataset:
    """``texts`` as a stream of ``content`` documents, read lazily in 3 shards."""
    shards = [texts[i::3] for i in range(3)]
    return IterableDataset.from_generator(_read, gen_kwargs={"shards": shards})


def _read(shards: list[list[str]]) -> Any:
    for shard in shards:
        for text in shard:
            yield {"content": text}


def train_data(kind: str, data: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The train dataset of a dataset kind, and the training arguments it needs."""
    texts = documents(data["train"])
    if kind == "map":  # tokenized examples, shuffled
        return Dataset.from_dict({"input_ids": data["resume_ids"]}), {}
    if kind == "filtered":  # raw text filtered (one stateless, one stateful filter), chunked, shuffled
        return Dataset.from_dict({"content": texts + texts[:5]}), {"filters": ["code_quality", "exact_dedup"]}
    if kind == "streamed":  # a filtered stream, tokenized and chunked as it is read
        return stream(texts), {"filters": ["code_quality"]}
    if kind == "packed":  # a stream packed best-fit per batch of documents
        return stream(texts), {"chunker": "packed"}
    if kind == "mixture":  # two streams, each with its own chunker, drawn by weight
        sources = [Source(stream(texts), chunker="packed", weight=1.0), Source(stream(texts[::-1]), weight=2.0)]
        return Mixture(sources), {}
    raise ValueError(f"unknown dataset kind {kind!r}")


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
    kind: str = "map",
    per_device: int = 4,
    accumulation: int = 2,
    dropout: float = 0.1,
) -> Any:
    """Train ``MAX_STEPS`` optimizer steps into ``out`` (map: 5 epochs of 2 global batches of 8 of 18 examples)."""
    tokenizer, data = load_inputs(workdir)
    dataset, data_options = train_data(kind, data)
    args = ClmTrainingArguments(
        output_dir=str(out),
        context_length=CONTEXT,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
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
        **data_options,
    )
    run = runner(
        path,
        model=tiny_model(tokenizer, dropout=dropout),  # dropout draws random numbers: resume must restore the RNG
        args=args,
        processing_class=tokenizer,
        train_dataset=dataset,
        plugins=[RecordBatches(out / "batches.txt")],
        callbacks=list(callbacks),
    )
    run.train(resume_from_checkpoint=resume)
    return run


if __name__ == "__main__":
    workdir, out, path, k = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    optimizer = sys.argv[5] if len(sys.argv) > 5 else "adamw"
    kind = sys.argv[6] if len(sys.argv) > 6 else "map"
    train(workdir, out, path, save_steps=k, callbacks=[SlowAfterSave(out, k)], optimizer=optimizer, kind=kind)
