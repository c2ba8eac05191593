"""GPU performance: GPT-2 124M trained by a raw loop, transformers' ``Trainer`` and ``ClmTrainer``, on one GPU.

One process trains clmkit's ``gpt2`` preset at size ``base`` (vocabulary 50,257, padded by clmkit to
50,304; context 1,024; bf16 autocast; a batch sized to fill the device) for warm-up steps, then for
timed steps, on random token ids, side by side:

- ``raw``: ``bench/throughput.py``'s raw loop (``model(input_ids=x, labels=x).loss``, backward,
  ``clip_grad_norm_`` 1.0, fused AdamW), and ``raw_compiled``, the same over ``torch.compile(model)``;
- ``trainer``: plain ``transformers.Trainer`` with the same arguments;
- ``clmkit``: ``ClmTrainer`` with its defaults (``optimizer="adamw"``, so every side steps the same
  fused AdamW; ``clmkit train``'s default is muon), ``clmkit_compiled`` with ``torch_compile``, and
  ``clmkit_unchunked`` with ``chunked_loss=False``.

Each side reports tokens/s over the timed steps, MFU (``clmkit.training.flops``: ``6N + 12·L·H·Q·T``
FLOPs per token) against the device's measured bf16 matmul peak and its datasheet peak, the side's
own peak GPU memory, and its ratio to the raw loop (compiled sides also to the compiled raw loop).

The head+loss section times one forward+backward of the LM head and its loss alone, at vocabularies
50,257 and 128,256: transformers' path (the head's matmul, then ``ForCausalLMLoss`` over the upcast
logits), clmkit's chunked ``linear_cross_entropy`` and Liger's fused linear cross-entropy (where
``liger_kernel`` imports on a GPU). The chunk sweep times ``linear_cross_entropy`` at several logits
budgets per chunk, to choose the GPU default (``ACCELERATOR_CHUNK_ELEMENTS``).

Targets: ClmTrainer >= 1.0x the raw loop's tokens/s, eager and compiled (against the compiled raw
loop); >= 45% MFU compiled (datasheet peak, else the measured one); clmkit's head+loss <= 0.25x
transformers' peak memory at <= 1.0x its time. Every section prints its elapsed seconds; a section
that would start after ``--max-seconds`` is skipped and named. ``--smoke`` runs every section at toy
size in fp32 (on the CPU when there is no GPU: memory figures are then n/a), for the test suite.

    python bench/gpu.py --json gpu.json     # budgeted to stay under 8 minutes on an H200 (not yet run on one)
    python bench/gpu.py --smoke             # 2 CPU cores: about 30 s with a warm inductor cache, 1 minute cold
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from throughput import StepTimer, Timing, fresh_model, mark, time_clmkit, time_raw
from time_to_quality import command_line, environment, fail, print_header
from transformers import PretrainedConfig, Trainer, TrainingArguments, default_data_collator
from transformers.loss.loss_utils import ForCausalLMLoss

from clmkit import ClmTrainingArguments
from clmkit.data.sources import load_data
from clmkit.data.tokenizer import train_tokenizer
from clmkit.device import training_device
from clmkit.errors import ClmkitError
from clmkit.models import build_model, model_config
from clmkit.training.cross_entropy import (
    ACCELERATOR_CHUNK_ELEMENTS,
    CPU_CHUNK_ELEMENTS,
    MIN_CHUNK_TOKENS,
    linear_cross_entropy,
)
from clmkit.training.flops import MfuMeter, datasheet_peak_tflops, flops_per_token, measure_peak_tflops

SIDES: dict[str, str] = {  # name: what the table calls it; the sides the targets compare come first
    "raw": "raw loop",
    "clmkit": "ClmTrainer",
    "raw_compiled": "raw loop, compiled",
    "clmkit_compiled": "ClmTrainer, compiled",
    "trainer": "transformers Trainer",
    "clmkit_unchunked": "ClmTrainer, chunked_loss=False",
}
TARGET_SPEED, TARGET_MFU, TARGET_MEMORY, TARGET_TIME = 1.0, 0.45, 0.25, 1.0
TOKENIZER_VOCAB, TOKENIZER_DOCUMENTS = 512, 20  # ClmTrainer needs a tokenizer (EOS, its length); ids are random
FILL, MAX_BATCH = 0.8, 256  # the auto batch: share of GPU memory the most hungry side may reach, and a cap
SWEEP_SLACK = 1.05  # the suggested chunk: the smallest within this factor of the fastest time


@dataclass(frozen=True)
class Settings:
    """What one run measures: model size, data shape, precision, step counts and the loss sections' shapes."""

    preset: str
    vocab: int
    context: int
    bf16: bool
    batch: int | None  # None: sized to fill the GPU
    warmup: int
    steps: int
    loss_tokens: int
    loss_hidden: int
    loss_vocabs: tuple[int, ...]
    loss_repeats: int
    chunk_elements: tuple[int, ...]
    peak_size: int  # side of the square matmul that measures the device's peak


GPU = Settings(
    preset="base",  # GPT-2 124M
    vocab=50257,
    context=1024,
    bf16=True,
    batch=None,
    warmup=3,
    steps=20,
    loss_tokens=16384,
    loss_hidden=768,
    loss_vocabs=(50257, 128256),
    loss_repeats=5,
    chunk_elements=tuple(2**e for e in range(23, 29)),  # 32 MiB to 1 GiB of fp32 logits per chunk
    peak_size=8192,
)
SMOKE = Settings(
    preset="test",
    vocab=TOKENIZER_VOCAB,
    context=64,
    bf16=False,
    batch=2,
    warmup=1,
    steps=2,
    loss_tokens=128,
    loss_hidden=64,
    loss_vocabs=GPU.loss_vocabs,
    loss_repeats=1,
    chunk_elements=(2**20, 2**22, 2**24),
    peak_size=256,
)


@dataclass(frozen=True)
class FixedModel:
    """Stands in for clmkit's run options in ``throughput.py``'s helpers, so they build this bench's model."""

    config: PretrainedConfig

    def model_config(self, *_: Any) -> PretrainedConfig:
        """The bench's config, whatever tokenizer size and context are asked for."""
        return self.config


class Clock:
    """The run's elapsed seconds and the ``--max-seconds`` guard: sections that would start too late are skipped."""

    def __init__(self, budget: float) -> None:
        self.start, self.budget = time.perf_counter(), budget
        self.skipped: list[str] = []
        self.sections: dict[str, float] = {}

    def elapsed(self) -> float:
        """Seconds since the run began."""
        return time.perf_counter() - self.start

    def allows(self, name: str) -> bool:
        """Whether ``name`` may start; if not, it is recorded as skipped."""
        if self.elapsed() < self.budget:
            return True
        self.skipped.append(f"{name}: not run, the --max-seconds budget of {self.budget:.0f} s was spent")
        print(f"skipped {self.skipped[-1]}", flush=True)
        return False

    def done(self, name: str, began: float) -> None:
        """Record and print the seconds ``name`` took since ``began``."""
        self.sections[name] = time.perf_counter() - began
        print(f"[{name}] {self.sections[name]:.1f} s (run so far {self.elapsed():.1f} s)", flush=True)


# ---- GPU memory ------------------------------------------------------------------------------------


def memory_baseline() -> int:
    """Free what earlier work left, reset the peak counter and return the bytes still allocated (0 on CPU)."""
    gc.collect()
    if not torch.cuda.is_available():
        return 0
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def peak_gib(baseline: int) -> float | None:
    """GiB allocated at the peak since ``memory_baseline`` above what it returned; None on CPU (not measured)."""
    return (torch.cuda.max_memory_allocated() - baseline) / 2**30 if torch.cuda.is_available() else None


# ---- the training sides ------------------------------------------------------------------------------


@dataclass
class Bench:
    """What every training side shares: the settings, the batch, the model's config, a tokenizer, a scratch folder."""

    settings: Settings
    batch: int
    fixed: FixedModel
    tokenizer: Any
    out: str

    def steps(self) -> int:
        """Steps of one side: warm-up, then timed."""
        return self.settings.warmup + self.settings.steps

    def shared_arguments(self, steps: int, compiled: bool) -> dict[str, Any]:
        """The fields ``Trainer``'s and ``ClmTrainer``'s arguments share, so both train alike, quietly."""
        return {
            "output_dir": self.out,
            "max_steps": steps,
            "per_device_train_batch_size": self.batch,
            "bf16": self.settings.bf16,
            "torch_compile": compiled,
            "logging_strategy": "no",
            "save_strategy": "no",
            "eval_strategy": "no",
            "report_to": "none",
            "disable_tqdm": True,
        }

    def clmkit_arguments(self, steps: int, compiled: bool = False, chunked: bool = True) -> ClmTrainingArguments:
        """``ClmTrainer``'s defaults (``optimizer="adamw"``) with the shared fields."""
        shared = self.shared_arguments(steps, compiled)
        return ClmTrainingArguments(**shared, context_length=self.settings.context, chunked_loss=chunked)

    def ids(self, rows: int) -> torch.Tensor:
        """``rows`` x context random token ids in [0, vocab): throughput does not depend on the text."""
        generator = torch.Generator().manual_seed(0)
        return torch.randint(0, self.settings.vocab, (rows, self.settings.context), generator=generator)

    def raw(self, compiled: bool, steps: int | None = None) -> Timing:
        """``throughput.py``'s raw loop over this bench's model and batches."""
        args = self.clmkit_arguments(steps or self.steps(), compiled)
        batches = list(self.ids(self.batch * args.max_steps).split(self.batch))
        return time_raw(self.fixed, args, self.tokenizer, batches, self.settings.warmup)

    def clmkit(self, compiled: bool, chunked: bool) -> Timing:
        """``ClmTrainer`` over a dataset of already tokenized rows (it prepares them once, outside the clock)."""
        args = self.clmkit_arguments(self.steps(), compiled, chunked)
        data = Dataset.from_dict({"input_ids": self.ids(self.batch * self.steps()).numpy()})
        return time_clmkit(self.fixed, args, self.tokenizer, data, self.settings.warmup)

    def trainer(self) -> Timing:
        """Plain ``transformers.Trainer`` with the shared arguments, on rows whose labels are their inputs."""
        timer = StepTimer()
        ids = self.ids(self.batch * self.steps()).numpy()
        data = Dataset.from_dict({"input_ids": ids, "labels": ids})
        args = TrainingArguments(**self.shared_arguments(self.steps(), compiled=False))
        model = fresh_model(self.fixed, self.tokenizer, self.clmkit_arguments(1))
        Trainer(
            model=model, args=args, train_dataset=data, data_collator=default_data_collator, callbacks=[timer]
        ).train()
        return Timing(timer.marks, self.settings.warmup, self.batch * self.settings.context)

    def run_side(self, name: str) -> Timing:
        """One side by its name in ``SIDES``."""
        runs: dict[str, Callable[[], Timing]] = {
            "raw": lambda: self.raw(compiled=False),
            "raw_compiled": lambda: self.raw(compiled=True),
            "trainer": self.trainer,
            "clmkit": lambda: self.clmkit(compiled=False, chunked=True),
            "clmkit_compiled": lambda: self.clmkit(compiled=True, chunked=True),
            "clmkit_unchunked": lambda: self.clmkit(compiled=False, chunked=False),
        }
        return runs[name]()


def fill_batch(bench: Bench) -> int:
    """The largest multiple of 8 rows whose peak memory in the eager raw loop (full logits, the hungriest side)
    stays under ``FILL`` of the GPU, extrapolated from one-step probes at 4 and 8 rows."""
    peaks = {}
    for rows in (4, 8):
        probe = Bench(bench.settings, rows, bench.fixed, bench.tokenizer, bench.out)
        baseline = memory_baseline()
        probe.raw(compiled=False, steps=bench.settings.warmup + 1)
        peaks[rows] = torch.cuda.max_memory_allocated() - baseline
    per_row = (peaks[8] - peaks[4]) / 4
    fixed = peaks[4] - 4 * per_row
    total = torch.cuda.get_device_properties(0).total_memory
    batch = max(8, min(MAX_BATCH, int((FILL * total - fixed) / per_row) // 8 * 8))
    print(f"batch: {batch} rows ({per_row / 2**30:.2f} GiB per row, {fixed / 2**30:.2f} GiB fixed)", flush=True)
    return batch


def train_sides(bench: Bench, mfu: dict[str, MfuMeter | None], clock: Clock) -> dict[str, dict[str, Any]]:
    """Every side in turn, each on a fresh model with a fresh dynamo cache: its speed, MFU and own peak memory."""
    results: dict[str, dict[str, Any]] = {}
    for name in SIDES:
        if not clock.allows(name):
            continue
        began = time.perf_counter()
        torch._dynamo.reset()
        baseline = memory_baseline()
        timing = bench.run_side(name)
        tokens_per_second = timing.tokens_per_second()
        results[name] = {
            "tokens_per_second": tokens_per_second,
            "step_seconds": timing.step_seconds(),
            "warmup_seconds": timing.first_seconds(),
            "peak_memory_gib": peak_gib(baseline),
            **{f"mfu_{peak}": meter(tokens_per_second) if meter else None for peak, meter in mfu.items()},
        }
        clock.done(name, began)
        print(f"  {SIDES[name]}: {tokens_per_second:,.0f} tokens/s, {timing.step_seconds():.3f} s per step", flush=True)
    for name, result in results.items():
        result["ratio_to_raw"] = ratio(result, results.get("raw"))
        result["ratio_to_raw_compiled"] = ratio(result, results.get("raw_compiled")) if "compiled" in name else None
    return results


def ratio(result: dict[str, Any], base: dict[str, Any] | None) -> float | None:
    """``result``'s tokens/s over ``base``'s, if ``base`` was measured."""
    return result["tokens_per_second"] / base["tokens_per_second"] if base else None


# ---- the head and its loss alone ---------------------------------------------------------------------


@dataclass
class HeadInputs:
    """The LM head's input and weight (leaves that take gradients) and the labels, as a bf16 run holds them."""

    hidden: torch.Tensor  # (rows, T, H), in the autocast dtype as clmkit captures it
    weight: torch.Tensor  # (V, H), fp32 master weights
    labels: torch.Tensor  # (rows, T)

    @classmethod
    def random(cls, settings: Settings, vocab: int) -> HeadInputs:
        """Random inputs of ``settings.loss_tokens`` tokens in rows of the context length."""
        device, dtype = training_device(), torch.bfloat16 if settings.bf16 else torch.float32
        rows, generator = settings.loss_tokens // settings.context, torch.Generator().manual_seed(0)
        shape = (rows, settings.context, settings.loss_hidden)
        hidden = torch.randn(shape, generator=generator).to(device, dtype).requires_grad_()
        weight = (torch.randn(vocab, settings.loss_hidden, generator=generator) * 0.02).to(device).requires_grad_()
        labels = torch.randint(0, vocab, shape[:2], generator=generator).to(device)
        return cls(hidden, weight, labels)

    def shifted(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states and their next-token targets, flattened: what a token-level loss scores."""
        return self.hidden[:, :-1].reshape(-1, self.hidden.shape[-1]), self.labels[:, 1:].reshape(-1)


def transformers_loss(inputs: HeadInputs) -> torch.Tensor:
    """transformers' path: the head's matmul to (rows, T, V) logits, then ``ForCausalLMLoss`` (it upcasts them)."""
    logits = F.linear(inputs.hidden, inputs.weight)
    return ForCausalLMLoss(logits, inputs.labels, vocab_size=inputs.weight.shape[0])


def clmkit_loss(inputs: HeadInputs, chunk_size: int | None = None) -> torch.Tensor:
    """clmkit's chunked ``linear_cross_entropy``, as a mean over the target tokens."""
    hidden, targets = inputs.shifted()
    return linear_cross_entropy(hidden, inputs.weight, None, targets, chunk_size=chunk_size) / targets.numel()


def liger_loss() -> tuple[Callable[[HeadInputs], torch.Tensor] | None, str]:
    """Liger's fused linear cross-entropy (mean), or None and why it cannot run here."""
    if not torch.cuda.is_available():
        return None, "Liger's kernels are Triton kernels and need a CUDA GPU"
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError as exc:
        return None, f"liger_kernel does not import ({exc})"
    fused = LigerFusedLinearCrossEntropyLoss()

    def loss(inputs: HeadInputs) -> torch.Tensor:
        hidden, targets = inputs.shifted()
        return fused(inputs.weight.to(hidden.dtype), hidden, targets)  # the cast autocast would make

    return loss, ""


def time_head(step: Callable[[HeadInputs], torch.Tensor], inputs: HeadInputs, settings: Settings) -> dict[str, Any]:
    """Fastest forward+backward of ``step`` over the repeats after one warm-up, its peak memory above the
    inputs (GiB, None on CPU) and its loss."""
    times, baseline = [], 0
    for repeat in range(settings.loss_repeats + 1):
        inputs.hidden.grad = inputs.weight.grad = None
        if repeat == 1:  # the peak of the timed repeats, not the warm-up's
            baseline = memory_baseline()
        begin = mark()
        with torch.autocast(training_device().type, dtype=torch.bfloat16, enabled=settings.bf16):
            loss = step(inputs)
        loss.backward()
        times.append(mark() - begin)
    return {"time_s": min(times[1:]), "peak_memory_gib": peak_gib(baseline), "loss": loss.item()}


def head_loss(settings: Settings, clock: Clock) -> list[dict[str, Any]]:
    """Each loss path at each vocabulary; the ratios to transformers' path."""
    liger, why_not = liger_loss()
    paths: dict[str, Callable[[HeadInputs], torch.Tensor] | None] = {
        "transformers": transformers_loss,
        "clmkit": clmkit_loss,
        "liger": liger,
    }
    rows = []
    for vocab in settings.loss_vocabs:
        if not clock.allows(f"head+loss at vocabulary {vocab}"):
            continue
        inputs = HeadInputs.random(settings, vocab)
        measured = [
            {"vocab": vocab, "path": name, **(time_head(step, inputs, settings) if step else {"skipped": why_not})}
            for name, step in paths.items()
        ]
        base = measured[0]  # transformers'
        for row in measured:
            print(f"  {row}", flush=True)
            if "skipped" not in row:
                row["time_ratio"] = row["time_s"] / base["time_s"]
                memory = row["peak_memory_gib"]
                row["memory_ratio"] = memory / base["peak_memory_gib"] if memory is not None else None
        rows += measured
        del inputs
    return rows


def chunk_sweep(settings: Settings, clock: Clock) -> list[dict[str, Any]]:
    """``linear_cross_entropy``'s time and memory at each logits budget per chunk; per vocabulary, the smallest
    budget within ``SWEEP_SLACK`` of the fastest is marked as the suggested one."""
    rows = []
    for vocab in settings.loss_vocabs:
        if not clock.allows(f"chunk sweep at vocabulary {vocab}"):
            continue
        inputs = HeadInputs.random(settings, vocab)
        measured = []
        for elements in settings.chunk_elements:
            tokens = max(MIN_CHUNK_TOKENS, elements // vocab)  # as clmkit's default_chunk_size turns a budget to tokens
            result = time_head(functools.partial(clmkit_loss, chunk_size=tokens), inputs, settings)
            measured.append({"vocab": vocab, "chunk_elements": elements, "chunk_tokens": tokens, **result})
        fastest = min(r["time_s"] for r in measured)
        suggested = next(r for r in measured if r["time_s"] <= SWEEP_SLACK * fastest)
        for row in measured:
            row["suggested"] = row is suggested
        rows += measured
        del inputs
    return rows


# ---- targets and the report -----------------------------------------------------------------------------


def targets(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured value and whether it is met (None: not measured here)."""
    sides, peak = record["sides"], "datasheet" if record["peak_tflops"]["datasheet"] else "measured"
    found = []

    def add(name: str, value: float | None, goal: float, at_least: bool, why: str = "not measured") -> None:
        met = None if value is None else (value >= goal if at_least else value <= goal)
        found.append({"target": name, "value": value, "goal": f"{'>=' if at_least else '<='} {goal}", "met": met})
        found[-1]["note"] = why if value is None else ""

    add("ClmTrainer / raw loop, tokens/s", sides.get("clmkit", {}).get("ratio_to_raw"), TARGET_SPEED, True)
    compiled = sides.get("clmkit_compiled", {})
    add("ClmTrainer compiled / raw compiled, tokens/s", compiled.get("ratio_to_raw_compiled"), TARGET_SPEED, True)
    add(f"ClmTrainer compiled MFU ({peak} peak)", compiled.get(f"mfu_{peak}"), TARGET_MFU, True)
    for row in (r for r in record["head_loss"] if r["path"] == "clmkit"):
        memory_note = "no GPU memory figures on CPU" if row["memory_ratio"] is None else ""
        add(f"clmkit head+loss memory / transformers', V={row['vocab']}", row["memory_ratio"], TARGET_MEMORY, False)
        found[-1]["note"] = memory_note
        add(f"clmkit head+loss time / transformers', V={row['vocab']}", row["time_ratio"], TARGET_TIME, False)
    return found


def number(value: float | None, spec: str) -> str:
    """``value`` formatted, or n/a when it was not measured."""
    return "n/a" if value is None else format(value, spec)


def report(record: dict[str, Any]) -> None:
    """Markdown tables ready for docs/benchmarks.md: the sides, head+loss, the chunk sweep and the targets."""
    env, model, peak = record["environment"], record["model"], record["peak_tflops"]
    print(
        f"\n{env['gpu'] or 'CPU (no GPU)'}, {record['date']}, torch {env['torch']}, transformers {env['transformers']}"
    )
    print(f"reproduce: `{record['command']}`")
    print(
        f"\nGPT-2 {model['preset']} ({model['parameters'] / 1e6:.1f}M parameters), vocabulary {model['vocab']:,} "
        f"({record['settings']['vocab']:,} padded to a multiple of 64), context {model['context']:,}, "
        f"batch {record['batch']}, "
        f"{'bf16' if record['settings']['bf16'] else 'fp32'}; {record['settings']['warmup']} warm-up and "
        f"{record['settings']['steps']} timed steps per side; {model['flops_per_token'] / 1e6:.0f} MFLOPs per token; "
        f"peak {number(peak['measured'], '.1f')} TFLOP/s measured, {number(peak['datasheet'], '.1f')} datasheet\n"
    )
    print(
        "| side | tokens/s | s per step | × raw | × raw compiled | MFU (measured peak) | MFU (datasheet) | peak GiB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, s in record["sides"].items():
        print(
            f"| {SIDES[name]} | {s['tokens_per_second']:,.0f} | {s['step_seconds']:.3f} | "
            f"{number(s['ratio_to_raw'], '.2f')} | {number(s['ratio_to_raw_compiled'], '.2f')} | "
            f"{number(s['mfu_measured'], '.1%')} | {number(s['mfu_datasheet'], '.1%')} | "
            f"{number(s['peak_memory_gib'], '.1f')} |"
        )
    settings = record["settings"]
    print(f"\nhead+loss, forward+backward of {settings['loss_tokens']:,} tokens x {settings['loss_hidden']} hidden:\n")
    print("| vocabulary | loss path | ms | peak GiB | time / transformers' | memory / transformers' | loss |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in record["head_loss"]:
        if "skipped" in r:
            print(f"| {r['vocab']:,} | {r['path']} | skipped: {r['skipped']} | | | | |")
            continue
        print(
            f"| {r['vocab']:,} | {r['path']} | {r['time_s'] * 1e3:.1f} | {number(r['peak_memory_gib'], '.2f')} | "
            f"{r['time_ratio']:.2f} | {number(r['memory_ratio'], '.2f')} | {r['loss']:.4f} |"
        )
    print(f"\nchunk sweep of linear_cross_entropy (library default: {record['default_chunk_elements']:,} logits):\n")
    print("| vocabulary | logits per chunk | tokens per chunk | ms | peak GiB | suggested |")
    print("| ---: | ---: | ---: | ---: | ---: | --- |")
    for r in record["chunk_sweep"]:
        print(
            f"| {r['vocab']:,} | 2^{r['chunk_elements'].bit_length() - 1} | {r['chunk_tokens']:,} | "
            f"{r['time_s'] * 1e3:.1f} | {number(r['peak_memory_gib'], '.2f')} | {'yes' if r['suggested'] else ''} |"
        )
    print("\n| target | value | goal | met |")
    print("| --- | ---: | --- | --- |")
    for t in record["targets"]:
        met = {True: "met", False: "NOT met", None: f"n/a ({t['note']})"}[t["met"]]
        print(f"| {t['target']} | {number(t['value'], '.3f')} | {t['goal']} | {met} |")
    for skipped in record["skipped"]:
        print(f"skipped: {skipped}")
    print("seconds per section: " + ", ".join(f"{k} {v:.1f}" for k, v in record["sections"].items()))


# ---- the run ----------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """The bench's options."""
    cli = argparse.ArgumentParser(prog="gpu.py", description=__doc__.split("\n\n")[0])
    cli.add_argument("--smoke", action="store_true", help="Every section at toy size in fp32 (the CPU's test mode).")
    cli.add_argument("--batch", type=int, help="Rows per step (default: sized to fill the GPU; 2 with --smoke).")
    cli.add_argument("--warmup", type=int, help="Untimed steps per side (default: 3; 1 with --smoke).")
    cli.add_argument("--steps", type=int, help="Timed steps per side (default: 20; 2 with --smoke).")
    cli.add_argument("--max-seconds", type=float, default=420.0, help="Skip sections that would start later.")
    cli.add_argument("--json", type=Path, help="Also write the record to this JSON file.")
    return cli


def chosen_settings(cli: argparse.ArgumentParser, options: argparse.Namespace) -> Settings:
    """The GPU or smoke settings with the options' overrides; a bad option exits with status 2."""
    settings = SMOKE if options.smoke else GPU
    if not options.smoke and not torch.cuda.is_available():
        cli.error("no CUDA GPU here; run the CPU smoke mode with --smoke")
    overrides = {k: v for k in ("batch", "warmup", "steps") if (v := getattr(options, k)) is not None}
    if any(v < 1 for v in overrides.values()) or options.max_seconds <= 0:
        bad = ", ".join(f"--{k} {v}" for k, v in overrides.items() if v < 1) or f"--max-seconds {options.max_seconds}"
        cli.error(f"{bad}: --batch, --warmup and --steps must be at least 1, and --max-seconds above 0")
    return Settings(**{**asdict(settings), **overrides})


def main() -> None:
    """Parse the options, run every section, print the report and write the JSON record."""
    cli = parser()
    options = cli.parse_args()
    settings = chosen_settings(cli, options)
    command = command_line(cli, options)
    env = environment() | {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    print_header(command, env)
    try:
        record = bench(settings, Clock(options.max_seconds))
    except ClmkitError as exc:
        fail(cli.prog, exc)
    record |= {"mode": "smoke" if options.smoke else "gpu", "command": command, "environment": env}
    record["targets"] = targets(record)
    report(record)
    if options.json:
        options.json.write_text(json.dumps(record, indent=2) + "\n")


def bench(settings: Settings, clock: Clock) -> dict[str, Any]:
    """The device's peak, the batch, every training side, head+loss and the chunk sweep, each section timed."""
    began = time.perf_counter()
    device, dtype = training_device(), torch.bfloat16 if settings.bf16 else torch.float32
    texts = load_data(None).splits["train"].select(range(TOKENIZER_DOCUMENTS))["content"]
    tokenizer = train_tokenizer(texts, vocab_size=TOKENIZER_VOCAB)
    config = model_config("gpt2", settings.preset, settings.vocab, settings.context, tokenizer.eos_token_id)
    with torch.device("meta"):
        shape = build_model(config)
    peaks = {
        "measured": measure_peak_tflops(device, dtype, settings.peak_size),
        "datasheet": datasheet_peak_tflops(torch.cuda.get_device_name(), dtype) if device.type == "cuda" else None,
    }
    per_token = flops_per_token(shape, settings.context)
    mfu = {name: MfuMeter(per_token, peak) if peak else None for name, peak in peaks.items()}
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as out:
        runner = Bench(settings, settings.batch or 0, FixedModel(config), tokenizer, out)
        runner.batch = settings.batch or fill_batch(runner)
        clock.done("setup", began)
        began = time.perf_counter()
        sides = train_sides(runner, mfu, clock)
    clock.done("training", began)
    began = time.perf_counter()
    losses = head_loss(settings, clock)
    clock.done("head+loss", began)
    began = time.perf_counter()
    sweep = chunk_sweep(settings, clock)
    clock.done("chunk sweep", began)
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": asdict(settings),
        "batch": runner.batch,
        "model": {
            "preset": settings.preset,
            "vocab": config.vocab_size,
            "context": settings.context,
            "parameters": sum(p.numel() for p in shape.parameters()),
            "flops_per_token": per_token,
        },
        "peak_tflops": peaks,
        "default_chunk_elements": ACCELERATOR_CHUNK_ELEMENTS if device.type == "cuda" else CPU_CHUNK_ELEMENTS,
        "sides": sides,
        "head_loss": losses,
        "chunk_sweep": sweep,
        "skipped": clock.skipped,
        "sections": clock.sections,
    }


if __name__ == "__main__":
    main()
