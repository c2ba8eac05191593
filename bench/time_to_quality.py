"""Time to quality: the course recipe with plain ``transformers.Trainer`` vs ``clmkit train``'s defaults.

Both recipes train with the same tokenizer (byte-level BPE trained once on the train split of this
Python's standard library) for the same training wall-clock time, once per seed (the seed sets the
initialization and the data order), and every model is scored by clmkit's exact evaluation in fp32
on the same validation text: bits per byte over the whole validation split (concat chunks of the
context length, every target token counted).

- course: GPT-2 of the same size preset, the course recipe's ``tokenize()`` (overflowing chunks of
  128, short tails dropped), ``DataCollatorForLanguageModeling(mlm=False)``, ``Trainer`` with AdamW
  lr 5e-4, cosine decay, warmup 1.5% (the course's 1,000 of ~65,000 steps), weight decay 0.1,
  batch 32, fp32. The course's 8 accumulation steps are left out: 256 sequences per step would give
  ~10 optimizer steps in a CPU budget (``--course-accumulation 8`` puts them back).
- clmkit: ``clmkit train``'s defaults exactly, whatever architecture, optimizer and precision they
  pick (``--clmkit-args`` adds flags, for tuning).

It reports each recipe's bits/byte over the seeds (mean, sample std, min-max) and the ratio of the
means (target: clmkit/course <= 0.70), and the time to the course's quality: clmkit's weights are
copied to memory every ``--snapshot-every`` training seconds, and after the run the earliest copy
whose bits/byte is at most the course's mean is found by bisection (target: reached at least 3.5
times sooner than the course's budget). It also compares both models' non-embedding parameters.

Each recipe runs its own schedule over wall-clock time (``wallclock.WallClockSchedule``), so a busy
shared machine cannot cut a schedule short. Periodic evaluation and checkpoints are off for both;
data preparation, snapshots and evaluations are not counted.

    python bench/time_to_quality.py                 # 150 s x 3 seeds x 2 recipes: about 20 minutes
    python bench/time_to_quality.py --budget 60 --seeds 1 --clmkit-args "--learning_rate 3e-3"
    python bench/time_to_quality.py --only clmkit --course-bpb 2.107   # time to a known course result
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import (
    DataCollatorForLanguageModeling,
    SchedulerType,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from wallclock import WallClockSchedule, schedule_shape

from clmkit import ClmTrainer, ClmTrainingArguments
from clmkit.cli.options import parse_overrides, parse_train_args
from clmkit.cli.train import build_trainer
from clmkit.data.tokenizer import get_tokenizer
from clmkit.device import cpu_flags, native_bf16, training_device
from clmkit.errors import ClmkitError
from clmkit.models import build_model, model_config, non_embedding_parameters

UNBOUNDED_STEPS = 10**7  # the wall-clock budget ends training
QUIET: dict[str, Any] = {"eval_strategy": "no", "save_strategy": "no", "disable_tqdm": True, "report_to": "none"}
BENCH_FLAGS = frozenset({"seed", "output_dir", "max_steps", *QUIET})  # `clmkit train` flags the bench sets itself
SIZE_TOLERANCE = 0.10  # the models compared differ in non-embedding parameters by at most this share
TARGET_RATIO = 0.70  # clmkit's bits/byte over the course's, at most
TARGET_SOONER = 3.5  # the course's budget over clmkit's time to the course's quality, at least


class BenchError(Exception):
    """A bench option that cannot work; main prints it on one line and exits with status 2."""


@dataclass
class Setup:
    """What every run of a bench shares: the corpus, the tokenizer made once for it, the context length."""

    data: Any
    tokenizer: Any
    context_length: int

    def validation(self) -> Any:
        return self.data.splits["validation"]


@dataclass
class Snapshot:
    """The model's weights (a CPU copy) after ``seconds`` of training, at optimizer step ``step``."""

    seconds: float
    step: int
    weights: dict[str, torch.Tensor]


# ---- the run's description -----------------------------------------------------------------------


def command_line(parser: argparse.ArgumentParser, options: argparse.Namespace) -> str:
    """The command that reproduces this run: the script and every option of ``parser`` with its value."""
    words = ["python", f"bench/{Path(parser.prog).name}"]
    for action in parser._actions:  # argparse keeps no public list of a parser's options
        value = getattr(options, action.dest, None)
        if not action.option_strings or action.dest == "help" or value is None or value is False:
            continue
        flag = action.option_strings[-1]
        if action.nargs == 0:
            words.append(flag)
        else:
            words += [part for item in (value if isinstance(value, list) else [value]) for part in (flag, str(item))]
    return shlex.join(words)


def environment() -> dict[str, Any]:
    """Versions, threads and whether the training device computes in bfloat16 natively: what a result depends
    on besides the options."""
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "device": str(training_device()),
        "native_bf16": native_bf16(training_device()),
        "cpu_bf16_flags": sorted(cpu_flags() & {"amx_bf16", "amx_tile", "avx512_bf16"}),
    }


def print_header(command: str, env: dict[str, Any]) -> None:
    """The command that reproduces the run and the machine it runs on, first thing printed."""
    print(f"command: {command}")
    print(
        f"environment: torch {env['torch']}, transformers {env['transformers']}, Python {env['python']}, "
        f"{env['threads']} threads on {env['device']}, native bf16: {'yes' if env['native_bf16'] else 'no'} "
        f"(CPU flags: {', '.join(env['cpu_bf16_flags']) or 'none'})",
        flush=True,
    )


def fail(prog: str, error: Exception) -> None:
    """Exit with status 2 and the error on one line, as clmkit's own commands do."""
    print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
    raise SystemExit(2)


# ---- clmkit's options, the shared data, the models' sizes -----------------------------------------


def flag_names(flags: Sequence[str]) -> set[str]:
    """The field names of ``--flag`` words (``--model-preset`` and ``--model_preset=x`` alike)."""
    return {word[2:].split("=", 1)[0].replace("-", "_") for word in flags if word.startswith("--")}


def parse_clmkit(flags: Sequence[str], *extra: str) -> tuple[Any, Any, Any, ClmTrainingArguments]:
    """``clmkit train``'s options for ``flags`` (then ``extra``, then the bench's quiet flags), parsed by the CLI's
    own code; flags the bench sets itself, and schedules that cannot run over wall-clock time, are refused."""
    taken = flag_names(flags) & BENCH_FLAGS
    if taken:
        raise BenchError(f"the bench sets these flags itself: {', '.join(sorted(taken))}. Leave them out.")
    quiet = [part for key, value in QUIET.items() for part in (f"--{key}", str(value).lower())]
    source, tokenizer, run, args, _ = parse_train_args([*flags, *extra, *quiet])
    try:
        schedule_shape(args)  # a schedule with no wall-clock version fails here, not after the data is ready
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    return source, tokenizer, run, args


def prepare(flags: Sequence[str]) -> Setup:
    """The corpus and tokenizer of ``clmkit train flags`` (a tokenizer trained on the train split by default),
    made once, outside any clock."""
    source, tok_options, _, args = parse_clmkit(flags)
    data = source.load(args.text_column)
    started = time.perf_counter()
    tokenizer = get_tokenizer(data, tok_options.tokenizer, tok_options.vocab_size, args.text_column)
    print(f"tokenizer: {len(tokenizer)} tokens in {time.perf_counter() - started:.1f} s", flush=True)
    return Setup(data, tokenizer, args.context_length)


def course_config(preset: str, vocab_size: int, context_length: int, eos_token_id: int) -> Any:
    """The course's model: GPT-2 at size ``preset``."""
    return model_config("gpt2", preset, vocab_size, context_length, eos_token_id)


def non_embedding_count(config: Any) -> int:
    """The non-embedding parameters of a model of ``config``, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return non_embedding_parameters(build_model(config))


def model_sizes(flags: Sequence[str], vocab_size: int) -> dict[str, Any]:
    """Non-embedding parameters of ``clmkit train flags``'s model and of the course's GPT-2 of the same preset,
    their ratio, and whether it is within ``SIZE_TOLERANCE``: only models of one size compare fairly."""
    _, _, run, args = parse_clmkit(flags)
    course = non_embedding_count(course_config(run.model_preset, vocab_size, args.context_length, 0))
    clmkit = non_embedding_count(run.model_config(vocab_size, args.context_length, 0))
    ratio = clmkit / course
    return {"course": course, "clmkit": clmkit, "ratio": ratio, "comparable": abs(ratio - 1) <= SIZE_TOLERANCE}


# ---- the two recipes --------------------------------------------------------------------------------


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


def course_trainer(config: Any, tokenizer: Any, train: Any, accumulation: int, seed: int, out: str) -> Trainer:
    """The course's Trainer setup, its model initialized and its data ordered by ``seed``."""
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
        seed=seed,
        **QUIET,
    )
    set_seed(seed)
    return Trainer(
        model=build_model(config),
        args=args,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        train_dataset=train,
        processing_class=tokenizer,
    )


def clmkit_trainer(flags: Sequence[str], seed: int, setup: Setup, out: str) -> Any:
    """``clmkit train``'s defaults (plus ``flags``) at ``seed``, built by the CLI's own code (data prepared here)."""
    extra = ["--seed", str(seed), "--output_dir", out, "--max_steps", str(UNBOUNDED_STEPS)]
    _, _, run, args = parse_clmkit(flags, *extra)
    return build_trainer(run, parse_overrides(run.config_overrides), args, setup.data, setup.tokenizer)


# ---- training, snapshots and evaluation ---------------------------------------------------------------


def cpu_weights(model: Any) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s state dict in CPU memory."""
    return {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}


class Snapshots(TrainerCallback):
    """Copies the model's weights to memory every ``every`` seconds of training, the clock paused meanwhile, so
    the time a quality was reached can be found after the run."""

    def __init__(self, model: Any, clock: WallClockSchedule, every: float) -> None:
        self.model, self.clock, self.every = model, clock, every
        self.taken: list[Snapshot] = []
        self.due = every

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = self.clock.seconds()
        if now >= self.due and not control.should_training_stop:  # the final weights are the run's own result
            with self.clock.paused():
                self.taken.append(Snapshot(now, state.global_step, cpu_weights(self.model)))
            self.due = (now // self.every + 1) * self.every


def evaluate(model: Any, setup: Setup) -> dict[str, float]:
    """clmkit's exact evaluation (fp32) of ``model`` on the whole raw validation split (concat chunks)."""
    with tempfile.TemporaryDirectory() as tmp:
        args = ClmTrainingArguments(
            output_dir=tmp, context_length=setup.context_length, per_device_eval_batch_size=64, report_to="none"
        )
        trainer = ClmTrainer(model=model, args=args, processing_class=setup.tokenizer, eval_dataset=setup.validation())
        return trainer.evaluate()


def bits_per_byte(model: Any, setup: Setup) -> float:
    """``model``'s bits per byte by ``evaluate``."""
    return evaluate(model, setup)["eval_bits_per_byte"]


def train_for(trainer: Any, budget: float, setup: Setup, snapshot_every: float = 0.0) -> tuple[dict, list[Snapshot]]:
    """Train ``trainer`` for ``budget`` seconds over its wall-clock schedule, then evaluate it outside the clock.

    Returns the run's numbers and, when ``snapshot_every`` is above 0, the snapshots of its weights,
    the final weights last.
    """
    clock = WallClockSchedule(budget)
    trainer.add_callback(clock)
    snapshots = Snapshots(trainer.model, clock, snapshot_every)
    if snapshot_every > 0:
        trainer.add_callback(snapshots)
    trainer.train()
    metrics = evaluate(trainer.model, setup)
    sequences = trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
    steps = trainer.state.global_step
    result = {
        "seed": trainer.args.seed,
        "steps": steps,
        "train_seconds": clock.elapsed,
        "snapshot_seconds": clock.paused_seconds,
        "sequences_per_step": sequences,
        "tokens_trained": steps * sequences * setup.context_length,
        "eval_loss": metrics["eval_loss"],
        "eval_bits_per_byte": metrics["eval_bits_per_byte"],
        "eval_tokens": metrics["eval_tokens"],
    }
    if snapshot_every <= 0:
        return result, []
    return result, [*snapshots.taken, Snapshot(clock.elapsed, steps, cpu_weights(trainer.model))]


def time_to_target(
    model: Any, snapshots: list[Snapshot], final_bpb: float, target: float, score: Callable[[Any], float]
) -> dict[str, Any]:
    """The earliest snapshot whose ``score`` (bits/byte) is at most ``target``, by bisection over the snapshots.

    Quality improves over training time nearly monotonically, so about log2(n) evaluations suffice
    instead of n; the last snapshot holds the final weights, whose bits/byte ``final_bpb`` is known.
    The found snapshot and its predecessor are both scored, which shows the crossing. The model
    gets its final weights back.
    """
    last = len(snapshots) - 1
    scores: dict[int, float] = {last: final_bpb}

    def bpb(index: int) -> float:
        if index not in scores:
            model.load_state_dict(snapshots[index].weights)
            scores[index] = score(model)
        return scores[index]

    try:
        reached = bpb(last) <= target
        low, high = 0, last
        while reached and low < high:
            middle = (low + high) // 2
            if bpb(middle) <= target:
                high = middle
            else:
                low = middle + 1
        found = {"seconds": snapshots[high].seconds, "step": snapshots[high].step, "bits_per_byte": bpb(high)}
        before = None if high == 0 else {"seconds": snapshots[high - 1].seconds, "bits_per_byte": bpb(high - 1)}
    finally:
        model.load_state_dict(snapshots[last].weights)
    evaluated = [
        {"seconds": snapshots[i].seconds, "step": snapshots[i].step, "bits_per_byte": scores[i]} for i in scores
    ]
    return {
        "reached": reached,
        "target_bits_per_byte": target,
        "snapshots": len(snapshots),
        "evaluated": sorted(evaluated, key=lambda row: row["seconds"]),
        **({"found": found, "previous": before} if reached else {}),
    }


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (``None`` for one value), minimum and maximum of ``values``."""
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values), "n": len(values)}


# ---- the bench ----------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="time_to_quality.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=150.0, help="Training seconds per recipe and seed.")
    parser.add_argument("--seeds", type=int, default=3, help="Seeds per recipe (first-seed, first-seed + 1, ...).")
    parser.add_argument("--first-seed", type=int, default=0, help="The first seed.")
    parser.add_argument("--clmkit-args", default="", help="Extra `clmkit train` flags (quoted), e.g. for tuning.")
    parser.add_argument("--course-accumulation", type=int, default=1, help="The course's accumulation steps (8).")
    parser.add_argument("--only", choices=["course", "clmkit"], help="Run one recipe only.")
    parser.add_argument(
        "--snapshot-every",
        type=float,
        default=5.0,
        help="Training seconds between snapshots of clmkit's weights (each a copy in memory; 0: none).",
    )
    parser.add_argument(
        "--course-bpb",
        type=float,
        help="With --only clmkit: the course's mean bits/byte at the same --budget, from an earlier run.",
    )
    parser.add_argument("--json", type=Path, help="Also write the results to this JSON file.")
    return parser


def run_course(setup: Setup, preset: str, options: argparse.Namespace, seeds: range, tmp: str) -> list[dict]:
    """The course recipe once per seed."""
    config = course_config(preset, len(setup.tokenizer), setup.context_length, setup.tokenizer.eos_token_id)
    train = course_examples(setup.tokenizer, setup.data.splits["train"], setup.context_length)
    runs = []
    for seed in seeds:
        trainer = course_trainer(config, setup.tokenizer, train, options.course_accumulation, seed, f"{tmp}/c{seed}")
        result, _ = train_for(trainer, options.budget, setup)
        print(f"[course] {json.dumps(result)}", flush=True)
        runs.append(result)
    return runs


def run_clmkit(
    setup: Setup, flags: list[str], options: argparse.Namespace, seeds: range, target: float | None, tmp: str
) -> list[dict]:
    """clmkit's recipe once per seed; with a ``target`` bits/byte, also the training time to reach it."""
    every = options.snapshot_every if target is not None else 0.0
    runs = []
    for seed in seeds:
        trainer = clmkit_trainer(flags, seed, setup, f"{tmp}/k{seed}")
        result, snapshots = train_for(trainer, options.budget, setup, every)
        if target is not None:
            result["time_to_course_quality"] = time_to_target(
                trainer.model, snapshots, result["eval_bits_per_byte"], target, lambda m: bits_per_byte(m, setup)
            )
        print(f"[clmkit] {json.dumps(result)}", flush=True)
        runs.append(result)
    return runs


def main() -> None:
    cli = parser()
    options = cli.parse_args()
    if options.course_bpb is not None and options.only != "clmkit":
        cli.error("--course-bpb is the target of --only clmkit; a run with the course measures its own")
    if options.seeds < 1 or options.budget <= 0:
        cli.error("--seeds must be at least 1 and --budget above 0")
    try:
        results = bench(options, command_line(cli, options))
    except (BenchError, ClmkitError) as exc:
        fail(cli.prog, exc)
    report(results)
    if options.json:
        options.json.write_text(json.dumps(results, indent=2) + "\n")


def bench(options: argparse.Namespace, command: str) -> dict[str, Any]:
    """Both recipes over the seeds, the course's first (its mean is clmkit's target), and their comparison."""
    env = environment()
    print_header(command, env)
    flags = shlex.split(options.clmkit_args)
    _, _, run, args = parse_clmkit(flags)
    print(f"clmkit: {clmkit_settings(run, args)}")
    print(
        f"course: gpt2 {run.model_preset}, AdamW lr 5e-4, cosine, warmup 0.015, "
        f"batch 32 x {options.course_accumulation}, fp32"
    )
    setup = prepare(flags)
    sizes = model_sizes(flags, len(setup.tokenizer))
    print_sizes(sizes)
    seeds = range(options.first_seed, options.first_seed + options.seeds)
    results: dict[str, Any] = {
        "command": command,
        "environment": env,
        "budget_seconds": options.budget,
        "seeds": list(seeds),
        "model": {"architecture": run.architecture, "preset": run.model_preset, "context": args.context_length},
        "clmkit_flags": flags,
        "vocab_size": len(setup.tokenizer),
        "non_embedding_parameters": sizes,
    }
    with tempfile.TemporaryDirectory() as tmp:
        if options.only != "clmkit":
            results["course"] = run_course(setup, run.model_preset, options, seeds, tmp)
        course = results.get("course")
        target = spread([r["eval_bits_per_byte"] for r in course])["mean"] if course else options.course_bpb
        if options.only != "course":
            results["clmkit"] = run_clmkit(setup, flags, options, seeds, target, tmp)
    results["summary"] = summary(results, target)
    return results


def clmkit_settings(run: Any, args: ClmTrainingArguments) -> str:
    """The settings of clmkit's recipe that decide its speed and quality, in one line."""
    return (
        f"{run.architecture} {run.model_preset}, optimizer {args.optimizer} {json.dumps(args.optimizer_kwargs)}, "
        f"lr {args.learning_rate:g}, {SchedulerType(args.lr_scheduler_type).value}, "
        f"warmup {args.warmup_steps:g}, batch {args.per_device_train_batch_size} x {args.gradient_accumulation_steps}, "
        f"context {args.context_length}, bf16 {args.bf16}, torch_compile {args.torch_compile}"
    )


def summary(results: dict[str, Any], target: float | None) -> dict[str, Any]:
    """Each recipe's bits/byte over the seeds, their ratio, and clmkit's time to the course's quality."""
    out: dict[str, Any] = {"target_bits_per_byte": target}
    for name in ("course", "clmkit"):
        if name in results:
            out[f"{name}_bits_per_byte"] = spread([r["eval_bits_per_byte"] for r in results[name]])
    if "course_bits_per_byte" in out and "clmkit_bits_per_byte" in out:
        ratio = out["clmkit_bits_per_byte"]["mean"] / out["course_bits_per_byte"]["mean"]
        out["ratio"] = {"value": ratio, "target": TARGET_RATIO, "met": ratio <= TARGET_RATIO}
    timed = [r["time_to_course_quality"] for r in results.get("clmkit", []) if "time_to_course_quality" in r]
    if timed:
        seconds = [t["found"]["seconds"] for t in timed if t["reached"]]
        out["time_to_course_quality"] = {"reached": len(seconds), "of": len(timed)}
        if len(seconds) == len(timed):
            sooner = results["budget_seconds"] / statistics.fmean(seconds)
            out["time_to_course_quality"] |= {
                "seconds": spread(seconds),
                "sooner": {"value": sooner, "target": TARGET_SOONER, "met": sooner >= TARGET_SOONER},
            }
    return out


def print_sizes(sizes: dict[str, Any]) -> None:
    """Both models' non-embedding parameters; a loud warning when they are not of one size."""
    print(
        f"non-embedding parameters: course {sizes['course']:,}, clmkit {sizes['clmkit']:,} "
        f"(clmkit/course {sizes['ratio']:.3f})"
    )
    if not sizes["comparable"]:
        print(
            f"WARNING: clmkit's model is {sizes['ratio']:.2f} times the course's in non-embedding parameters, outside "
            f"+-{SIZE_TOLERANCE:.0%}: the comparison is not between models of one size.",
            flush=True,
        )


def with_spread(stats: dict[str, Any], digits: int = 4) -> str:
    """``mean +- std (min-max)`` of a ``spread``."""
    std = "n/a" if stats["std"] is None else f"{stats['std']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} +- {std} ({stats['min']:.{digits}f}-{stats['max']:.{digits}f}, n={stats['n']})"


def report(results: dict[str, Any]) -> None:
    """A table of every run, then each recipe's bits/byte over seeds, the ratio, and the time to quality."""
    budget = results["budget_seconds"]
    print(f"\nsame training time: {budget:.0f} s per recipe and seed")
    print("| recipe | seed | steps | seqs/step | tokens | train s | eval loss | bits/byte | to course quality |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name in ("course", "clmkit"):
        for r in results.get(name, []):
            print(
                f"| {name} | {r['seed']} | {r['steps']} | {r['sequences_per_step']} | {r['tokens_trained']:,} | "
                f"{r['train_seconds']:.1f} | {r['eval_loss']:.4f} | {r['eval_bits_per_byte']:.4f} | "
                f"{reach_text(r.get('time_to_course_quality'), budget)} |"
            )
    s = results["summary"]
    print("\nbits/byte, mean +- sample std (min-max):")
    for name in ("course", "clmkit"):
        if f"{name}_bits_per_byte" in s:
            print(f"  {name:7} {with_spread(s[f'{name}_bits_per_byte'])}")
    if "ratio" in s:
        r = s["ratio"]
        print(f"  clmkit/course {r['value']:.3f} (target <= {r['target']:.2f}: {'met' if r['met'] else 'NOT met'})")
    timed = s.get("time_to_course_quality")
    if timed:
        print(f"\ntime to the course's {budget:.0f}-second quality ({s['target_bits_per_byte']:.4f} bits/byte):")
        if "seconds" in timed:
            sooner = timed["sooner"]
            print(
                f"  {with_spread(timed['seconds'], 1)} training seconds: {sooner['value']:.2f}x sooner "
                f"(target >= {sooner['target']}x: {'met' if sooner['met'] else 'NOT met'})"
            )
        else:
            print(f"  reached by {timed['reached']} of {timed['of']} seeds within the budget: no mean")
    sizes = results["non_embedding_parameters"]
    print()
    print_sizes(sizes)


def reach_text(timed: dict[str, Any] | None, budget: float) -> str:
    """One run's time to the course's quality, for its table row."""
    if timed is None:
        return ""
    if not timed["reached"]:
        return f"not reached in {budget:.0f} s"
    seconds = timed["found"]["seconds"]
    at_most = "<= " if timed["previous"] is None else ""  # reached by the first snapshot: maybe earlier
    return f"{at_most}{seconds:.1f} s ({budget / seconds:.2f}x sooner)"


if __name__ == "__main__":
    main()
