"""Time to quality: the course recipe with plain ``transformers.Trainer`` vs ``clmkit train``'s defaults.

Both recipes train the same GPT-2 size with the same tokenizer (byte-level BPE trained once on the
train split of this Python's standard library) for the same training wall-clock time, and both
models are then scored by clmkit's exact evaluation on the same validation text: bits per byte
over the whole validation split (concat chunks of the context length, every target token counted).

- course: the course recipe's ``tokenize()`` (overflowing chunks of 128, short tails dropped),
  ``DataCollatorForLanguageModeling(mlm=False)``, ``Trainer`` with AdamW lr 5e-4, cosine decay,
  warmup 1.5% of the steps (the course's 1,000 of ~65,000), weight decay 0.1, batch 32. The
  course's 8 accumulation steps are left out: 256 sequences per step would give ~10 optimizer
  steps in a CPU budget (``--course-accumulation 8`` puts them back).
- clmkit: ``clmkit train``'s defaults exactly (``--clmkit-args`` adds flags, for tuning).

Each recipe runs its own warmup + cosine schedule over wall-clock time instead of steps (the same
warmup fraction, zero learning rate when the budget is spent), so a busy shared machine cannot cut a
schedule short; a callback stops training at the budget. Periodic evaluation and checkpoints are
off for both; data preparation and the final evaluation are not counted.

    python bench/time_to_quality.py                 # 150 s each, about 8 minutes in all
    python bench/time_to_quality.py --budget 60 --clmkit-args "--learning_rate 3e-3"
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

from clmkit import ClmTrainer, ClmTrainingArguments
from clmkit.cli.options import parse_overrides, parse_train_args
from clmkit.cli.train import build_trainer
from clmkit.data.tokenizer import train_tokenizer
from clmkit.models import build_model, gpt2_config

UNBOUNDED_STEPS = 10**7  # the wall-clock budget ends training
QUIET = ["--eval_strategy", "no", "--save_strategy", "no", "--disable_tqdm", "true", "--report_to", "none"]


class WallClockSchedule(TrainerCallback):
    """Runs the recipe's own warmup + cosine schedule over wall-clock time and stops at the budget.

    Step-based schedules need the number of steps in advance, which a shared machine cannot promise;
    over time, every recipe warms up for the same fraction of its budget and ends at zero
    learning rate exactly when the budget is spent, whatever the machine's speed.
    """

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.start = 0.0
        self.elapsed = 0.0

    def progress(self) -> float:
        return min((time.perf_counter() - self.start) / self.budget, 1.0)

    def on_train_begin(self, args: Any, state: Any, control: Any, lr_scheduler: Any = None, **kwargs: Any) -> None:
        warmup = args.warmup_steps if args.warmup_steps < 1 else 0.0

        def factor(_: int) -> float:
            done = self.progress()
            if done < warmup:
                return done / warmup
            return 0.5 * (1.0 + math.cos(math.pi * (done - warmup) / (1.0 - warmup)))

        lr_scheduler.lr_lambdas = [factor for _ in lr_scheduler.lr_lambdas]
        self.start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.elapsed = time.perf_counter() - self.start
        if self.elapsed >= self.budget:
            control.should_training_stop = True


def course_examples(tokenizer: Any, raw: Any, context_length: int) -> Any:
    """The course recipe's ``tokenize()``: overflowing chunks of ``context_length``, shorter chunks dropped."""

    def tokenize(element: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        outputs = tokenizer(
            element["content"],
            truncation=True,
            max_length=context_length,
            return_overflowing_tokens=True,
            return_length=True,
        )
        input_batch = []
        for length, input_ids in zip(outputs["length"], outputs["input_ids"], strict=True):
            if length == context_length:
                input_batch.append(input_ids)
        return {"input_ids": input_batch}

    return raw.map(tokenize, batched=True, remove_columns=raw.column_names)


def course_trainer(
    model_config: Any, tokenizer: Any, train: Any, accumulation: int, out: str, clock: WallClockSchedule
) -> Trainer:
    """The course's Trainer setup."""
    torch.manual_seed(0)
    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=32,
        gradient_accumulation_steps=accumulation,
        learning_rate=5e-4,
        lr_scheduler_type="cosine",
        warmup_steps=0.015,
        weight_decay=0.1,
        max_steps=UNBOUNDED_STEPS,
        logging_steps=10,
        seed=0,
        **_quiet_args(),
    )
    tokenizer.pad_token = tokenizer.eos_token
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    return Trainer(
        model=build_model(model_config),
        args=args,
        data_collator=collator,
        train_dataset=train,
        processing_class=tokenizer,
        callbacks=[clock],
    )


def _quiet_args() -> dict[str, Any]:
    return {"eval_strategy": "no", "save_strategy": "no", "disable_tqdm": True, "report_to": "none"}


def clmkit_trainer(flags: list[str], data: Any, tokenizer: Any, out: str, clock: WallClockSchedule) -> ClmTrainer:
    """``clmkit train``'s defaults (plus ``flags``), built by the CLI's own code."""
    _, _, run, args, _ = parse_train_args([*flags, "--output_dir", out, "--max_steps", str(UNBOUNDED_STEPS), *QUIET])
    trainer = build_trainer(run, parse_overrides(run.config_overrides), args, data, tokenizer)
    trainer.add_callback(clock)
    return trainer


def evaluate(model: Any, tokenizer: Any, validation: Any, context_length: int) -> dict[str, float]:
    """clmkit's exact evaluation of ``model`` on the raw validation split (concat chunks)."""
    with tempfile.TemporaryDirectory() as tmp:
        args = ClmTrainingArguments(
            output_dir=tmp, context_length=context_length, per_device_eval_batch_size=64, report_to="none"
        )
        return ClmTrainer(model=model, args=args, processing_class=tokenizer, eval_dataset=validation).evaluate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=150.0, help="Training seconds per recipe.")
    parser.add_argument("--clmkit-args", default="", help="Extra `clmkit train` flags (quoted), e.g. for tuning.")
    parser.add_argument("--course-accumulation", type=int, default=1, help="The course's accumulation steps (8).")
    parser.add_argument("--only", choices=["course", "clmkit"], help="Run one recipe only.")
    parser.add_argument("--json", type=Path, help="Also write the results to this JSON file.")
    options = parser.parse_args()

    flags = shlex.split(options.clmkit_args)
    source, tok_options, run, args, _ = parse_train_args([*flags, *QUIET])
    data = source.load(args.text_column)
    started = time.perf_counter()
    texts = (t for batch in data.splits["train"].iter(batch_size=1000) for t in batch[args.text_column])
    tokenizer = train_tokenizer(texts, vocab_size=tok_options.vocab_size)
    print(f"tokenizer: {len(tokenizer)} tokens in {time.perf_counter() - started:.1f} s", flush=True)
    model_config = gpt2_config(
        run.model_preset,
        len(tokenizer),
        args.context_length,
        tokenizer.eos_token_id,
        parse_overrides(run.config_overrides),
    )
    validation = data.splits["validation"]
    results: dict[str, Any] = {
        "budget_seconds": options.budget,
        "model": {"preset": run.model_preset, "overrides": run.config_overrides, "context": args.context_length},
        "vocab_size": len(tokenizer),
        "clmkit_flags": flags,
        "threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        recipes: dict[str, Callable[[WallClockSchedule], Trainer]] = {}
        if options.only in (None, "course"):
            course_train = course_examples(tokenizer, data.splits["train"], args.context_length)
            results["course_train_examples"] = len(course_train)
            recipes["course"] = lambda clock: course_trainer(
                model_config, tokenizer, course_train, options.course_accumulation, f"{tmp}/course", clock
            )
        if options.only in (None, "clmkit"):
            recipes["clmkit"] = lambda clock: clmkit_trainer(flags, data, tokenizer, f"{tmp}/clmkit", clock)
        for name, make in recipes.items():
            clock = WallClockSchedule(options.budget)
            trainer = make(clock)  # data preparation happens here, before the clock starts
            trainer.train()
            metrics = evaluate(trainer.model, tokenizer, validation, args.context_length)
            sequences = trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
            steps = trainer.state.global_step
            results[name] = {
                "steps": steps,
                "train_seconds": clock.elapsed,
                "sequences_per_step": sequences,
                "tokens_trained": steps * sequences * args.context_length,
                "eval_loss": metrics["eval_loss"],
                "eval_bits_per_byte": metrics["eval_bits_per_byte"],
                "eval_tokens": metrics["eval_tokens"],
            }
            print(f"[{name}] {json.dumps(results[name])}", flush=True)
    report(results)
    if options.json:
        options.json.write_text(json.dumps(results, indent=2) + "\n")


def report(results: dict[str, Any]) -> None:
    """A table of both recipes and by how much clmkit's default beats the course recipe."""
    print(f"\nsame training time: {results['budget_seconds']:.0f} s each, {results['threads']} threads")
    print(f"{'recipe':8} {'steps':>6} {'seqs/step':>9} {'tokens':>10} {'train s':>8} {'eval loss':>9} {'bits/byte':>9}")
    for name in ("course", "clmkit"):
        if name in results:
            r = results[name]
            print(
                f"{name:8} {r['steps']:>6} {r['sequences_per_step']:>9} {r['tokens_trained']:>10,} "
                f"{r['train_seconds']:>8.1f} {r['eval_loss']:>9.4f} {r['eval_bits_per_byte']:>9.4f}"
            )
    if "course" in results and "clmkit" in results:
        course, ours = results["course"]["eval_bits_per_byte"], results["clmkit"]["eval_bits_per_byte"]
        print(f"clmkit's defaults: {course - ours:+.4f} bits per byte lower ({(course - ours) / course:.1%} less)")


if __name__ == "__main__":
    main()
