"""Resume time: from process start to the first training step after a resume, early against late, side by side.

A streamed, packed run (snippets of 5 lines of the standard library's files, read lazily with each
file a shard, ``packed`` chunker, context 128, the ``test``-size model, batch 8) trains ``--late`` steps
with a checkpoint every ``--early`` steps; the stream is prepared in batches of 1,000 snippets (about
50 steps), so the late checkpoint lies many batches in. Then a
fresh process resumes it ``--repeats`` times from ``checkpoint-<early>`` and from ``checkpoint-<late>``
(at least 20x more data behind it), alternating, and each reports how long it took from its start to
its first training step; the median of each and their ratio (target: at most 1.2) are printed.

Beside it, in this process, what finding the position cost before clmkit saved it: the Trainer's
``skip_first_batches`` over the same prepared stream (read, tokenize, pack and collate every batch
before the checkpoint), timed to the first batch after the early and the late position.

    python bench/resume_time.py                      # early 20, late 400: about 3 minutes
    python bench/resume_time.py --early 5 --late 100 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from accelerate import skip_first_batches
from datasets import IterableDataset
from time_to_quality import command_line, environment, print_header
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, TrainerCallback

from clmkit import ClmTrainer, ClmTrainingArguments
from clmkit.data.corpus import list_source_files, stdlib_root
from clmkit.data.tokenizer import train_tokenizer
from clmkit.models import build_model, model_config

TARGET = 1.2  # late resume's start-up time over the early one's, at most
FILES = 600  # standard-library files streamed (the shards of the stream)
SNIPPET_LINES = 5


def snippets(paths: list[str]) -> Any:
    """Each file's text in documents of ``SNIPPET_LINES`` lines."""
    for path in paths:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        for start in range(0, len(lines), SNIPPET_LINES):
            yield {"content": "".join(lines[start : start + SNIPPET_LINES])}


def stream() -> IterableDataset:
    """The standard library's snippets, read when iterated; a file per shard."""
    files = [str(p) for p in list_source_files(stdlib_root(), [".py"])[:FILES]]
    return IterableDataset.from_generator(snippets, gen_kwargs={"paths": files})


class FirstStep(TrainerCallback):
    """Prints the wall-clock time when the first training step begins, then ends the process at once."""

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        print(f"FIRST_STEP {time.time()!r}", flush=True)
        os._exit(0)


def arguments(out: Path, max_steps: int, save_steps: int) -> ClmTrainingArguments:
    return ClmTrainingArguments(
        output_dir=str(out),
        context_length=128,
        chunker="packed",
        per_device_train_batch_size=8,
        max_steps=max_steps,
        save_strategy="steps",
        save_steps=save_steps,
        eval_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )


def trainer(work: Path, max_steps: int, save_steps: int, callbacks: list[Any]) -> ClmTrainer:
    """The bench's run: a fresh test-size model on the standard library streamed, the tokenizer of ``work``."""
    tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
    config = model_config("qwen3", "test", len(tokenizer), 128, tokenizer.eos_token_id)
    args = arguments(work / "run", max_steps, save_steps)
    model = build_model(config)
    return ClmTrainer(model, args, processing_class=tokenizer, train_dataset=stream(), callbacks=callbacks)


def child(work: Path, checkpoint: str, late: int, early: int) -> None:
    """Resume ``checkpoint`` in this fresh process; ``FirstStep`` reports when training starts."""
    trainer(work, late + 5, early, [FirstStep()]).train(resume_from_checkpoint=checkpoint)


def resume_seconds(work: Path, checkpoint: Path, late: int, early: int) -> float:
    """Seconds from starting a process that resumes ``checkpoint`` to its first training step."""
    started = time.time()
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(work), str(checkpoint), str(late), str(early)],
        capture_output=True,
        text=True,
        check=False,
    )
    marks = [line for line in done.stdout.splitlines() if line.startswith("FIRST_STEP ")]
    if done.returncode != 0 or not marks:
        raise SystemExit(f"the resuming process failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return float(marks[0].split()[1]) - started


def skip_seconds(run: ClmTrainer, micro_batches: int) -> float:
    """What the Trainer's ``skip_first_batches`` took to reach the batch after ``micro_batches`` (seconds)."""
    loader = DataLoader(run.train_dataset, batch_size=8, collate_fn=run.data_collator)
    started = time.perf_counter()
    next(iter(skip_first_batches(loader, micro_batches)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(prog="resume_time.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--early", type=int, default=20, help="Steps before the early checkpoint.")
    parser.add_argument("--late", type=int, default=400, help="Steps before the late checkpoint (>= 20 x early).")
    parser.add_argument("--repeats", type=int, default=3, help="Resumes from each checkpoint.")
    parser.add_argument("--json", type=Path, help="Also write the results to this JSON file.")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        work, checkpoint, late, early = options.child
        child(Path(work), checkpoint, int(late), int(early))
        raise SystemExit("the resumed run ended before its first step")
    if options.early < 1 or options.late < 20 * options.early or options.repeats < 1:
        parser.error("--early >= 1, --late >= 20 x --early and --repeats >= 1 are needed")
    command = command_line(parser, options)
    env = environment()
    print_header(command, env)
    with tempfile.TemporaryDirectory(prefix="resume-time-") as tmp:
        work = Path(tmp)
        texts = [row["content"] for _, row in zip(range(20000), stream(), strict=False)]
        train_tokenizer(texts, vocab_size=4096).save_pretrained(work / "tokenizer")
        started = time.perf_counter()
        run = trainer(work, options.late, options.early, [])
        run.train()
        took = time.perf_counter() - started
        print(f"trained {options.late} steps with a checkpoint every {options.early}: {took:.0f} s")
        checkpoints = {
            "early": work / "run" / f"checkpoint-{options.early}",
            "late": work / "run" / f"checkpoint-{options.late}",
        }
        steps = {"early": options.early, "late": options.late}
        seconds: dict[str, list[float]] = {"early": [], "late": []}
        for repeat in range(options.repeats):
            for name in ("early", "late") if repeat % 2 == 0 else ("late", "early"):
                seconds[name].append(resume_seconds(work, checkpoints[name], options.late, options.early))
            print(
                f"repeat {repeat + 1}: early {seconds['early'][-1]:.2f} s, late {seconds['late'][-1]:.2f} s", flush=True
            )
        skipped = {name: skip_seconds(run, steps[name]) for name in steps}
    median = {name: statistics.median(values) for name, values in seconds.items()}
    ratio = median["late"] / median["early"]
    print(f"\nresume from a streamed, packed run (median of {options.repeats}; target late/early <= {TARGET}):")
    print("| checkpoint | steps behind it | examples behind it | start to first step (s) | skip_first_batches (s) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in ("early", "late"):
        print(f"| {name} | {steps[name]} | {steps[name] * 8} | {median[name]:.2f} | {skipped[name]:.2f} |")
    print(f"late/early start-up: {ratio:.2f} ({'met' if ratio <= TARGET else 'NOT met'}); "
          f"skip_first_batches late/early: {skipped['late'] / skipped['early']:.1f}")  # fmt: skip
    if options.json:
        record = {"command": command, "environment": env, "seconds": seconds, "median": median, "ratio": ratio,
                  "skip_first_batches": skipped, "steps": steps}  # fmt: skip
        options.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
