"""Throughput: tokens per second of ``ClmTrainer`` against a raw PyTorch loop over the same model, side by side.

- raw: ``loss = model(input_ids=x, labels=x).loss; loss.backward(); clip_grad_norm_(params, 1.0);
  optimizer.step(); optimizer.zero_grad()`` under bf16 autocast when the precision is bf16;
- clmkit: ``ClmTrainer`` with ``clmkit train``'s defaults (batch 16, context 128, chunked loss), the
  same precision, evaluation, checkpoints and logging off; it runs the model as every ClmTrainer
  does (fused modules, on a CPU its attention choice: ``clmkit.training.fused``/``attention``).

Both sides step the same optimizer at equal settings: the one ``--optimizer`` names (default
``adamw``: torch's fused AdamW with ``clmkit train``'s learning rate, betas and weight decay;
``muon``: clmkit's MuonAdamW), built by the same registry, so the ratio measures the training step
around it, not the optimizer.

Both train a model of the same config (``model_config(architecture, "tiny", ...)``, or the size
``--model-preset`` names) on the same text (a slice of this Python's standard library, with a
tokenizer trained once on it; the raw loop gets the concat chunks ClmTrainer prepared). Each
repeat trains a fresh model for warm-up steps,
then for ``--steps`` timed steps: the steady state is measured from the end of the last warm-up
step to the end of the last step, everything in between counted (data loading, callbacks). The
two sides alternate in each of ``--rounds`` rounds in one process, so machine drift hits both
alike; the median tokens/s is reported, and the ratio clmkit/raw (target: at least 1.25).

``--compile`` adds both sides compiled (``torch_compile``): the compile seconds (the first steps'
excess over steady steps, in round 1, with a cold inductor cache of this process), the steady
speedup over eager, and whether compiling pays within ``clmkit train``'s default 450 steps.
bf16 runs only where the device computes in bfloat16 natively (``clmkit.device.native_bf16``).

    python bench/throughput.py                          # gpt2 and llama, fp32 and bf16: about 5 minutes
    python bench/throughput.py --optimizer muon         # both sides with clmkit train's default optimizer
    python bench/throughput.py --architectures gpt2 --precisions fp32 --model-preset test --rounds 1 --steps 3
    python bench/throughput.py --compile --architectures llama --precisions bf16 --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from time_to_quality import command_line, environment, fail, parse_clmkit, print_header
from transformers import TrainerCallback, set_seed

from clmkit import ClmTrainer, ClmTrainingArguments
from clmkit.cli.options import TRAIN_DEFAULTS, TokenizerOptions
from clmkit.data.sources import load_data
from clmkit.data.tokenizer import train_tokenizer
from clmkit.device import native_bf16, training_device
from clmkit.errors import ClmkitError
from clmkit.models import build_model
from clmkit.plugins import Plugins
from clmkit.training.components import build_optimizer

TARGET = 1.25  # ClmTrainer's tokens/s over the raw loop's, at least
DEFAULT_RUN_STEPS = int(TRAIN_DEFAULTS["max_steps"])  # `clmkit train`'s default run, to judge compilation by
SIDES = ("raw", "clmkit")


@dataclass(frozen=True)
class Config:
    """One configuration measured on both sides."""

    architecture: str
    precision: str  # fp32 or bf16
    compiled: bool

    def label(self) -> str:
        return f"{self.architecture} {self.precision}{' compiled' if self.compiled else ''}"


@dataclass
class Timing:
    """One repeat: the time training began, then the end of every step."""

    marks: list[float]
    warmup: int
    tokens_per_step: int

    def first_seconds(self) -> float:
        """Seconds of the warm-up steps (compilation happens there)."""
        return self.marks[self.warmup] - self.marks[0]

    def step_seconds(self) -> float:
        """Seconds per steady step."""
        return (self.marks[-1] - self.marks[self.warmup]) / (len(self.marks) - 1 - self.warmup)

    def tokens_per_second(self) -> float:
        return self.tokens_per_step / self.step_seconds()


def mark() -> float:
    """Now, after the device finished its queued work (a GPU runs ahead of Python)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


class StepTimer(TrainerCallback):
    """Records when training begins and when every optimizer step ends."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.marks = [mark()]

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.marks.append(mark())


# ---- the two sides ------------------------------------------------------------------------------


def clmkit_arguments(
    config: Config, preset: str, optimizer: str, steps: int, out: str
) -> tuple[Any, ClmTrainingArguments]:
    """``clmkit train``'s run options and training arguments for ``config``, training ``steps`` steps quietly."""
    bf16 = config.precision == "bf16"
    flags = ["--architecture", config.architecture, "--model_preset", preset, "--bf16", str(bf16).lower()]
    flags += ["--optimizer", optimizer]
    if bf16 and training_device().type == "cpu":
        flags += ["--use_cpu", "true"]  # TrainingArguments takes bf16 on a CPU only with use_cpu
    flags += ["--torch_compile", str(config.compiled).lower(), "--logging_strategy", "no"]
    _, _, run, args = parse_clmkit(flags, "--max_steps", str(steps), "--output_dir", out)
    return run, args


def fresh_model(run: Any, tokenizer: Any, args: ClmTrainingArguments) -> Any:
    """A newly initialized model of the run's config (the same weights each time: seed 0)."""
    set_seed(0)
    return build_model(run.model_config(len(tokenizer), args.context_length, tokenizer.eos_token_id))


def clmkit_trainer(run: Any, args: ClmTrainingArguments, tokenizer: Any, texts: Any, timer: StepTimer) -> ClmTrainer:
    """``ClmTrainer`` over a fresh model and the raw ``texts`` (it chunks them), timed by ``timer``."""
    model = fresh_model(run, tokenizer, args)
    return ClmTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=texts, callbacks=[timer])


def raw_batches(trainer: ClmTrainer) -> list[torch.Tensor]:
    """The concat chunks ``trainer`` prepared, in batches of its batch size: the raw loop's data."""
    ids = torch.tensor(trainer.train_dataset["input_ids"])  # type: ignore[index]
    size = trainer.args.per_device_train_batch_size
    return list(ids[: len(ids) // size * size].split(size))


def time_clmkit(run: Any, args: ClmTrainingArguments, tokenizer: Any, texts: Any, warmup: int) -> Timing:
    """One repeat of ``ClmTrainer`` on a fresh model."""
    timer = StepTimer()
    clmkit_trainer(run, args, tokenizer, texts, timer).train()
    return Timing(timer.marks, warmup, args.per_device_train_batch_size * args.context_length)


def time_raw(run: Any, args: ClmTrainingArguments, tokenizer: Any, batches: list[torch.Tensor], warmup: int) -> Timing:
    """One repeat of the raw loop on a fresh model: the same optimizer settings, precision and compilation."""
    device = training_device()
    model = fresh_model(run, tokenizer, args).to(device).train()
    optimizer = build_optimizer(Plugins(), args, model)  # the very optimizer ClmTrainer builds from args
    forward: Callable[..., Any] = torch.compile(model) if args.torch_compile else model
    marks = [mark()]
    for x in itertools.islice(itertools.cycle(batches), args.max_steps):
        x = x.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = forward(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        marks.append(mark())
    return Timing(marks, warmup, args.per_device_train_batch_size * args.context_length)


# ---- measuring and reporting -----------------------------------------------------------------------


def measure(config: Config, options: argparse.Namespace, tokenizer: Any, texts: Any, batches: list) -> dict[str, Any]:
    """Both sides of ``config``, alternating which goes first, ``options.rounds`` times; their medians."""
    timings: dict[str, list[Timing]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as tmp:
        steps = options.warmup + options.steps
        run, args = clmkit_arguments(config, options.model_preset, options.optimizer, steps, tmp)
        for round_number in range(options.rounds):
            for side in SIDES if round_number % 2 == 0 else SIDES[::-1]:
                torch._dynamo.reset()  # each repeat compiles afresh (and never hits dynamo's recompile limit)
                if side == "raw":
                    timings[side].append(time_raw(run, args, tokenizer, batches, options.warmup))
                else:
                    timings[side].append(time_clmkit(run, args, tokenizer, texts, options.warmup))
            line = ", ".join(f"{s} {timings[s][-1].tokens_per_second():,.0f}" for s in SIDES)
            print(f"[{config.label()}] round {round_number + 1}: tokens/s {line}", flush=True)
    result: dict[str, Any] = {
        "architecture": config.architecture,
        "precision": config.precision,
        "compiled": config.compiled,
    }
    for side in SIDES:
        result[side] = {
            "tokens_per_second": statistics.median(t.tokens_per_second() for t in timings[side]),
            "step_seconds": statistics.median(t.step_seconds() for t in timings[side]),
            "first_steps_excess_seconds": excess(timings[side][0]),
            "rounds_tokens_per_second": [t.tokens_per_second() for t in timings[side]],
        }
    result["ratio"] = result["clmkit"]["tokens_per_second"] / result["raw"]["tokens_per_second"]
    return result


def excess(timing: Timing) -> float:
    """How much longer the warm-up steps took than as many steady steps: compilation, when compiled."""
    return timing.first_seconds() - timing.warmup * timing.step_seconds()


def compile_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each compiled configuration and side: compile seconds, the speedup over eager, and whether compiling
    pays within `clmkit train`'s default run."""
    eager = {(r["architecture"], r["precision"]): r for r in results if not r["compiled"]}
    rows = []
    for compiled in (r for r in results if r["compiled"]):
        base = eager[compiled["architecture"], compiled["precision"]]
        for side in SIDES:
            seconds = compiled[side]["first_steps_excess_seconds"]
            eager_run = base[side]["step_seconds"] * DEFAULT_RUN_STEPS
            compiled_run = seconds + compiled[side]["step_seconds"] * DEFAULT_RUN_STEPS
            rows.append(
                {
                    "architecture": compiled["architecture"],
                    "precision": compiled["precision"],
                    "side": side,
                    "compile_seconds": seconds,
                    "speedup": compiled[side]["tokens_per_second"] / base[side]["tokens_per_second"],
                    "eager_run_seconds": eager_run,
                    "compiled_run_seconds": compiled_run,
                    "pays": compiled_run < eager_run,
                }
            )
    return rows


def precision_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """bf16's tokens/s over fp32's, per architecture, compilation and side."""
    fp32 = {(r["architecture"], r["compiled"]): r for r in results if r["precision"] == "fp32"}
    rows = []
    for bf16 in (r for r in results if r["precision"] == "bf16" and (r["architecture"], r["compiled"]) in fp32):
        base = fp32[bf16["architecture"], bf16["compiled"]]
        for side in SIDES:
            ratio = bf16[side]["tokens_per_second"] / base[side]["tokens_per_second"]
            rows.append(
                {"architecture": bf16["architecture"], "compiled": bf16["compiled"], "side": side, "ratio": ratio}
            )
    return rows


def report(record: dict[str, Any]) -> None:
    """Markdown tables: both sides per configuration, then compilation and bf16 against fp32 when measured."""
    rounds, optimizer = record["rounds"], record["optimizer"]
    print(f"\nsteady-state tokens/s, {optimizer} on both sides, median of {rounds} rounds (target ratio >= {TARGET}):")
    print("| architecture | precision | compiled | raw tokens/s | clmkit tokens/s | clmkit/raw | target met |")
    print("| --- | --- | --- | ---: | ---: | ---: | --- |")
    for r in record["results"]:
        print(
            f"| {r['architecture']} | {r['precision']} | {'yes' if r['compiled'] else 'no'} | "
            f"{r['raw']['tokens_per_second']:,.0f} | {r['clmkit']['tokens_per_second']:,.0f} | {r['ratio']:.2f} | "
            f"{'yes' if r['ratio'] >= TARGET else 'NO'} |"
        )
    for skipped in record["skipped"]:
        print(f"skipped: {skipped}")
    if record["compile"]:
        print(f"\ncompilation (cold compile in round 1; a run of {DEFAULT_RUN_STEPS} steps, `clmkit train`'s default):")
        print("| architecture | precision | side | compile s | steady speedup | eager run s | compiled run s | pays |")
        print("| --- | --- | --- | ---: | ---: | ---: | ---: | --- |")
        for c in record["compile"]:
            print(
                f"| {c['architecture']} | {c['precision']} | {c['side']} | {c['compile_seconds']:.1f} | "
                f"{c['speedup']:.2f}x | {c['eager_run_seconds']:.0f} | {c['compiled_run_seconds']:.0f} | "
                f"{'yes' if c['pays'] else 'no'} |"
            )
    if record["precision"]:
        print("\nbf16 tokens/s over fp32 tokens/s:")
        print("| architecture | compiled | side | bf16/fp32 |")
        print("| --- | --- | --- | ---: |")
        for p in record["precision"]:
            print(f"| {p['architecture']} | {'yes' if p['compiled'] else 'no'} | {p['side']} | {p['ratio']:.2f} |")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="throughput.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--architectures", default="gpt2,llama", help="Comma-separated architectures.")
    parser.add_argument("--precisions", default="fp32,bf16", help="Comma-separated: fp32, bf16.")
    parser.add_argument("--compile", action="store_true", help="Also measure both sides compiled (torch_compile).")
    parser.add_argument("--model-preset", default="tiny", help="The model size preset.")
    parser.add_argument(
        "--optimizer", default="adamw", help="The optimizer both sides step (a registered name: adamw, muon)."
    )
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of both sides, alternating which goes first.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps at the start of each repeat.")
    parser.add_argument("--steps", type=int, default=20, help="Timed steps of each repeat.")
    parser.add_argument("--documents", type=int, default=100, help="Standard library files to train on.")
    parser.add_argument("--json", type=Path, help="Also write the results to this JSON file.")
    return parser


def configurations(options: argparse.Namespace) -> tuple[list[Config], list[str]]:
    """The configurations to measure, and the ones skipped (bf16 where the device would only emulate it)."""
    precisions = [p.strip() for p in options.precisions.split(",") if p.strip()]
    unknown = set(precisions) - {"fp32", "bf16"}
    if unknown:
        raise ValueError(f"--precisions takes fp32 and bf16, got {', '.join(sorted(unknown))}")
    skipped = []
    if "bf16" in precisions and not native_bf16(training_device()):
        precisions.remove("bf16")
        skipped.append(f"bf16: {training_device()} has no native bfloat16 (it would be emulated, slower)")
    architectures = [a.strip() for a in options.architectures.split(",") if a.strip()]
    modes = [False, True] if options.compile else [False]
    configs = [Config(a, p, c) for a in architectures for p in precisions for c in modes]
    return configs, skipped


def main() -> None:
    cli = parser()
    options = cli.parse_args()
    if min(options.rounds, options.warmup, options.steps, options.documents) < 1:
        cli.error("--rounds, --warmup, --steps and --documents must be at least 1")
    try:
        configs, skipped = configurations(options)
    except ValueError as exc:
        cli.error(str(exc))
    if not configs:
        cli.error(f"nothing to measure ({'; '.join(skipped) or 'no architecture given'})")
    command = command_line(cli, options)
    env = environment()
    print_header(command, env)
    try:
        with tempfile.TemporaryDirectory(prefix="throughput-inductor-") as cache:
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", cache)  # cold, as a first compiled run sees it
            record = bench(options, configs, skipped)
    except ClmkitError as exc:
        fail(cli.prog, exc)
    record |= {"command": command, "environment": env}
    report(record)
    if options.json:
        options.json.write_text(json.dumps(record, indent=2) + "\n")


def bench(options: argparse.Namespace, configs: list[Config], skipped: list[str]) -> dict[str, Any]:
    """A tokenizer and data made once, then every configuration measured on both sides."""
    texts = load_data(None).splits["train"].select(range(options.documents))
    tokenizer = train_tokenizer(texts["content"], vocab_size=TokenizerOptions().vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        run, args = clmkit_arguments(configs[0], options.model_preset, options.optimizer, 1, tmp)
        batches = raw_batches(clmkit_trainer(run, args, tokenizer, texts, StepTimer()))
    print(f"data: {len(batches)} batches of {args.per_device_train_batch_size} x {args.context_length} tokens")
    results = [measure(config, options, tokenizer, texts, batches) for config in configs]
    return {
        "rounds": options.rounds,
        "warmup_steps": options.warmup,
        "timed_steps": options.steps,
        "model_preset": options.model_preset,
        "optimizer": options.optimizer,
        "results": results,
        "skipped": skipped,
        "compile": compile_rows(results),
        "precision": precision_rows(results),
    }


if __name__ == "__main__":
    main()
