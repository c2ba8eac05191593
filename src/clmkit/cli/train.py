"""``clmkit train``: a tokenizer and a model trained on a corpus, and the folder a newcomer reads afterwards."""

from __future__ import annotations

import logging
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from clmkit.args import ClmTrainingArguments
from clmkit.cli.options import ARGS_FILE, RunOptions, parse_overrides, parse_train_args
from clmkit.data.corpus import Corpus
from clmkit.errors import ConfigError, DataError
from clmkit.training.components import TrainingRun

logger = logging.getLogger("clmkit")

# ---- output folder ------------------------------------------------------------------------------


def check_output_dir(out: Path, values: dict[str, Any], overwrite: bool, resuming: bool) -> None:
    """Refuse a folder that holds something other than this run, unless overwriting or resuming."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output folder {str(out)!r} is a file. Pass another --output_dir.")
    if resuming or not out.exists() or not any(out.iterdir()):
        return
    previous = out / ARGS_FILE
    if overwrite:
        return
    try:
        old = yaml.safe_load(previous.read_text(encoding="utf-8")) if previous.is_file() else None
    except yaml.YAMLError:
        old = None
    if isinstance(old, dict):
        differ = sorted(k for k in set(old) | set(values) if k != "output_dir" and old.get(k) != values.get(k))
        if not differ:
            return  # the same run again
        what = f"a different run (its {ARGS_FILE} differs in {', '.join(differ[:5])})"
    else:
        what = "files that are not this run's"
    raise ConfigError(
        f"output folder {str(out)!r} already holds {what}. Pass --overwrite to replace it, "
        "--resume_from_checkpoint to continue it, or another --output_dir."
    )


def resolve_checkpoint(value: str | None, out: Path) -> str | None:
    """``--resume_from_checkpoint``: a checkpoint folder, or ``last`` for the newest one in the output folder."""
    if not value:
        return None
    from transformers.trainer_utils import get_last_checkpoint

    if value == "last":
        last = get_last_checkpoint(str(out)) if out.is_dir() else None
        if last is None:
            raise DataError(
                f"no checkpoint-* folder in {str(out)!r} to resume from. Start without --resume_from_checkpoint."
            )
        return last
    if not Path(value).is_dir():
        raise DataError(
            f"checkpoint {value!r} does not exist. "
            "Pass a checkpoint-N folder, or 'last' for the newest in --output_dir."
        )
    return value


# ---- commands -----------------------------------------------------------------------------------


def cmd_train(argv: Sequence[str]) -> int:
    """Train a tokenizer (unless given) and a GPT-2; leave the model folder, metrics, curve and card."""
    started = process_start_time()
    source, tok_options, run, args, values = parse_train_args(argv)
    out = Path(str(args.output_dir))
    checkpoint = resolve_checkpoint(args.resume_from_checkpoint, out)
    check_output_dir(out, values, run.overwrite, checkpoint is not None)
    from clmkit import report
    from clmkit.models import gpt2_config

    overrides = parse_overrides(run.config_overrides)
    gpt2_config(run.model_preset, 256, args.context_length, 0, overrides)  # fail before the slow steps
    from clmkit.data.preparation import chunker_names
    from clmkit.data.streaming import check_streaming_steps
    from clmkit.data.tokenizer import get_tokenizer, load_tokenizer
    from clmkit.plugins import Plugins

    plugins = Plugins()
    plugins.check_names(args)  # every registry, before the data is read
    data = source.load(args.text_column)
    plugins.check_names(args, chunker_names(data.splits["train"], args.chunker))  # a mixture's sources
    check_streaming_steps(data.splits["train"], args.max_steps)  # before the tokenizer (a mixture's: when prepared)
    if checkpoint:
        tokenizer = load_tokenizer(checkpoint)
    else:
        tokenizer = get_tokenizer(data, tok_options.tokenizer, tok_options.vocab_size, args.text_column)
    trainer = build_trainer(run, overrides, args, data, tokenizer)
    full_eval = trainer.eval_dataset
    trainer.eval_dataset = spread_subset(full_eval, run.periodic_eval_examples)
    if run.overwrite and (out / ARGS_FILE).is_file():  # another clmkit run: its checkpoints must not mix with ours
        for old in out.glob("checkpoint-*"):
            shutil.rmtree(old)
    command = shlex.join(["clmkit", "train", *argv])
    report.write_text(out / ARGS_FILE, report.training_args_yaml(values, command))

    from transformers.trainer_utils import get_last_checkpoint

    from clmkit.training.interrupt import SaveOnInterrupt

    try:
        with SaveOnInterrupt() as interrupt:
            trainer.add_callback(interrupt)
            result = trainer.train(resume_from_checkpoint=checkpoint)
    except KeyboardInterrupt:
        last = get_last_checkpoint(str(out))
        if last is None:
            print("clmkit train: interrupted before the first checkpoint; run the command again.", file=sys.stderr)
        else:
            resume = shlex.join(["clmkit", "train", "--config", str(out / ARGS_FILE), "--resume_from_checkpoint", last])
            print(f"clmkit train: interrupted; the last checkpoint is {last}. Resume with: {resume}", file=sys.stderr)
        return 130
    seen = trainer.token_counter.logs(trainer.accelerator)  # counts since the last log step; throughput until now
    train_points, eval_points = report.loss_points(trainer.state.log_history)
    logger.info("final evaluation on the whole validation split (%d examples)", len(full_eval))
    final = trainer.evaluate(eval_dataset=full_eval)
    report.save_model_atomically(trainer, out)

    samples = sample_completions(out, run.prompts, run.max_new_tokens)
    metrics = {
        **{k: final[k] for k in final if k.startswith("eval_")},
        "train_loss": train_points[-1][1] if train_points else result.training_loss,
        "tokens_seen": seen["tokens_seen"],
        "target_tokens_seen": seen["target_tokens_seen"],
        "tokens_per_second": seen["tokens_per_second"],
        "global_step": trainer.state.global_step,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "train_runtime_seconds": result.metrics.get("train_runtime"),
        "corpus": data.info,
        "data": {split: stats.as_dict() for split, stats in trainer.data_stats.items()},
    }
    final_point = (float(seen["tokens_seen"]), float(final["eval_loss"]))
    report.plot_loss_curve(
        out / "loss_curve.png",
        train_points,
        eval_points,
        final_point,
        f"clmkit train: {run.model_preset} GPT-2 on {data.info.get('source')}",
    )
    metrics["wall_time_seconds"] = round(time.time() - started, 1)
    report.write_json(out / "metrics.json", metrics)
    description = (
        f"A GPT-2 (preset `{run.model_preset}`, {metrics['parameters']:,} parameters, context "
        f"{args.context_length}) trained from scratch with clmkit on `{data.info.get('source')}`, "
        f"with a tokenizer of {len(tokenizer):,} tokens."
    )
    report.write_text(
        out / "README.md",
        report.model_card(out.name, description, metrics, command, dict(zip(run.prompts, samples, strict=True))),
    )
    print_summary(out, metrics, samples)
    return 0


def process_start_time() -> float:
    """When this process started (epoch seconds), so wall times include Python's imports."""
    import psutil  # a dependency of accelerate

    return psutil.Process().create_time()


def build_trainer(
    run: RunOptions, overrides: dict[str, Any], args: ClmTrainingArguments, data: Corpus, tokenizer: Any
) -> TrainingRun:
    """A ClmTrainer over a freshly initialized GPT-2 sized to the tokenizer and context."""
    from transformers import set_seed

    from clmkit.generation import default_generation_config
    from clmkit.models import build_model, gpt2_config
    from clmkit.training.loop import ClmLoop
    from clmkit.training.trainer import ClmTrainer

    config = gpt2_config(run.model_preset, len(tokenizer), args.context_length, tokenizer.eos_token_id, overrides)
    set_seed(args.seed)
    model = build_model(config)
    model.generation_config = default_generation_config(tokenizer.eos_token_id, run.max_new_tokens)
    logger.info("model: GPT-2 %s, %s parameters", run.model_preset, f"{model.num_parameters():,}")
    if run.loop == "accelerate" and args.push_to_hub:
        args.hub_strategy = "end"  # the loop pushes once, after the final save
    trainer_cls: Callable[..., TrainingRun] = ClmLoop if run.loop == "accelerate" else ClmTrainer
    return trainer_cls(
        model=model,
        args=args,
        processing_class=tokenizer,
        train_dataset=data.splits["train"],
        eval_dataset=data.splits["validation"],
    )


def spread_subset(dataset: Any, count: int) -> Any:
    """``count`` examples spread evenly over ``dataset`` (all of it when count is 0 or larger)."""
    if count <= 0 or count >= len(dataset):
        return dataset
    stride = len(dataset) / count
    return dataset.select([int(i * stride) for i in range(count)])


def sample_completions(model_dir: Path, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    """One sampled completion per prompt, made with the text-generation pipeline on the saved folder."""
    from clmkit.generation import complete, load_generator

    generator = load_generator(model_dir)
    return [complete(generator, prompt, max_new_tokens=max_new_tokens) for prompt in prompts]


def print_summary(out: Path, metrics: dict[str, Any], samples: Sequence[str]) -> None:
    """The few lines a newcomer reads at the end of a run."""
    lines = [
        "",
        f"model saved in {out.resolve()}",
        f"eval perplexity {metrics['eval_perplexity']:.2f} | eval bits per byte {metrics['eval_bits_per_byte']:.3f} | "
        f"{metrics['tokens_seen']:,} tokens seen in {metrics['global_step']} steps | "
        f"wall time {metrics['wall_time_seconds']:.0f} s",
    ]
    for text in samples:
        lines += ["", "-" * 60, text]
    lines += ["-" * 60, f"metrics.json, loss_curve.png and README.md are in {out}.", ""]
    print("\n".join(lines))
