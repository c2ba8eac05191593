"""Time to quality: the course recipe with plain ``transformers.Trainer`` vs ``clmkit train``'s defaults.

Both recipes train the same GPT-2 size with the same tokenizer (byte-level BPE trained once on the
train split of this Python's standard library) for the same training wall-clock time, and both
models are then scored by clmkit's exact evaluation on the same validation text: bits per byte
over the whole validation split (concat chunks of the context length, every target token counted).

- course: the seed's ``tokenize()`` (overflowing chunks of 128, short tails dropped),
  ``DataCollatorForLanguageModeling(mlm=False)``, ``Trainer`` with AdamW lr 5e-4, cosine decay,
  warmup 1.5% of the steps (the course's 1,000 of ~65,000), weight decay 0.1, batch 32. The
  course's 8 accumulation steps are left out: 256 sequences per step would give ~10 optimizer
  steps in a CPU budget (``--course-accumulation 8`` puts them back).
- clmkit: ``clmkit train``'s defaults exactly (``--clmkit-args`` adds flags, for tuning).

Each recipe first times a few steps of its own trainer, sets ``max_steps`` so that its schedule ends
at the budget, and a callback stops it at the budget in any case. Periodic evaluation and
checkpoints are off for both; data preparation and the final evaluation are not counted.

    python bench/time_to_quality.py                 # 150 s each, about 7 minutes in all
    python bench/time_to_quality.py --budget 60 --clmkit-args "--learning_rate 3e-3"
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from datasets import DatasetDict
from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

from clmkit import ClmTrainer, ClmTrainingArguments
from clmkit.cli import TrainingData, build_trainer, load_data, parse_overrides, parse_train_args
from clmkit.data.tokenizer import train_tokenizer
from clmkit.models import build_model, gpt2_config

QUIET = ["--eval_strategy", "no", "--save_strategy", "no", "--disable_tqdm", "true", "--report_to", "none"]


class StepClock(TrainerCallback):
    """Times every optimizer step and stops training once ``budget`` seconds of training have passed."""

    def __init__(self, budget: float | None = None) -> None:
        self.budget = budget
        self.start = 0.0
        self.ends: list[float] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.ends.append(time.perf_counter())
        if self.budget is not None and self.elapsed >= self.budget:
            control.should_training_stop = True

    @property
    def elapsed(self) -> float:
        return (self.ends[-1] if self.ends else self.start) - self.start

    def seconds_per_step(self) -> float:
        """Median step time, the first two steps (warm-up of kernels and caches) left out."""
        times = [b - a for a, b in zip(self.ends[1:], self.ends[2:], strict=False)]
        return statistics.median(times)


def course_examples(tokenizer: Any, raw: Any, context_length: int) -> Any:
    """The seed's ``tokenize()``: overflowing chunks of ``context_length``, shorter chunks dropped."""

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
    model_config: Any, tokenizer: Any, train: Any, max_steps: int, accumulation: int, out: str, clock: StepClock
) -> Trainer:
    """The course's Trainer setup, sized to ``max_steps``."""
    torch.manual_seed(0)
    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=32,
        gradient_accumulation_steps=accumulation,
        learning_rate=5e-4,
        lr_scheduler_type="cosine",
        warmup_steps=0.015,
        weight_decay=0.1,
        max_steps=max_steps,
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


def clmkit_trainer(
    flags: list[str], data: Any, tokenizer: Any, max_steps: int, out: str, clock: StepClock
) -> ClmTrainer:
    """``clmkit train``'s defaults (plus ``flags``), built by the CLI's own code."""
    _, _, run, args, _ = parse_train_args([*flags, "--output_dir", out, "--max_steps", str(max_steps), *QUIET])
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


def timed_run(name: str, make: Callable[[int, StepClock], Trainer], budget: float, probe_steps: int) -> dict[str, Any]:
    """Time ``probe_steps`` steps, then train a fresh model for as many steps as fit in ``budget``."""
    probe = StepClock()
    make(probe_steps, probe).train()
    per_step = probe.seconds_per_step()
    max_steps = max(int(budget / per_step), 1)
    print(f"[{name}] {per_step:.3f} s per step -> max_steps {max_steps} for {budget:.0f} s", flush=True)
    clock = StepClock(budget)
    trainer = make(max_steps, clock)
    trainer.train()
    steps = trainer.state.global_step
    return {
        "trainer": trainer,
        "seconds_per_step": per_step,
        "max_steps": max_steps,
        "steps": steps,
        "train_seconds": clock.elapsed,
        "stopped_by_budget": steps < max_steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=150.0, help="Training seconds per recipe.")
    parser.add_argument("--clmkit-args", default="", help="Extra `clmkit train` flags (quoted), e.g. for tuning.")
    parser.add_argument("--course-accumulation", type=int, default=1, help="The course's accumulation steps (8).")
    parser.add_argument("--probe-steps", type=int, default=8, help="Steps timed before each run.")
    parser.add_argument("--only", choices=["course", "clmkit"], help="Run one recipe only.")
    parser.add_argument("--json", type=Path, help="Also write the results to this JSON file.")
    options = parser.parse_args()

    flags = shlex.split(options.clmkit_args)
    source, tok_options, run, args, _ = parse_train_args([*flags, *QUIET])
    data = load_data(source, args.text_column)
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
        recipes: dict[str, Callable[[int, StepClock], Trainer]] = {}
        if options.only in (None, "course"):
            course_train = course_examples(tokenizer, data.splits["train"], args.context_length)
            results["course_train_examples"] = len(course_train)
            recipes["course"] = lambda steps, clock: course_trainer(
                model_config, tokenizer, course_train, steps, options.course_accumulation, f"{tmp}/course", clock
            )
        if options.only in (None, "clmkit"):
            prepared = [data]  # the first trainer tokenizes and chunks; later ones reuse its examples

            def make_clmkit(steps: int, clock: StepClock) -> Trainer:
                trainer = clmkit_trainer(flags, prepared[-1], tokenizer, steps, f"{tmp}/clmkit", clock)
                splits = DatasetDict(train=trainer.train_dataset, validation=trainer.eval_dataset)
                prepared.append(TrainingData(splits, data.info))
                return trainer

            recipes["clmkit"] = make_clmkit
        for name, make in recipes.items():
            run_result = timed_run(name, make, options.budget, options.probe_steps)
            trainer = run_result.pop("trainer")
            metrics = evaluate(trainer.model, tokenizer, validation, args.context_length)
            sequences = trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
            results[name] = {
                **run_result,
                "sequences_per_step": sequences,
                "tokens_trained": run_result["steps"] * sequences * args.context_length,
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
