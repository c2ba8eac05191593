"""``clmkit train``: a tokenizer and a model trained on a corpus, and the folder a newcomer reads afterwards."""

from __future__ import annotations

import logging
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

from clmkit.args import ClmTrainingArguments
from clmkit.cli.options import ARGS_FILE, RunOptions, parse_overrides, parse_train_args
from clmkit.data.corpus import Corpus
from clmkit.errors import ConfigError
from clmkit.outputs import OutputFolder, check_overwritable
from clmkit.paths import storage_errors
from clmkit.report import write_text
from clmkit.training.components import TrainingRun, check_final_eval, check_optimizer_options

logger = logging.getLogger("clmkit")

# ---- output folder ------------------------------------------------------------------------------


# what `clmkit train` writes at the top of its output folder (checkpoint-N folders besides)
TRAIN_OUTPUTS = frozenset(
    {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        ARGS_FILE,
        "metrics.json",
        "loss_curve.png",
        "README.md",
    }
)


def check_output_dir(folder: OutputFolder, values: dict[str, Any], overwrite: bool, resuming: bool) -> None:
    """Refuse a folder that holds another run or files clmkit would replace, unless overwriting or resuming.

    ``--overwrite`` replaces only what clmkit wrote there; a file of clmkit's names that clmkit did not
    write is refused even then.
    """
    out = folder.path
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output folder {str(out)!r} is a file. Pass another --output_dir.")
    if resuming or not out.is_dir():
        return
    foreign = folder.foreign()
    clashes = [n for n in foreign if n in TRAIN_OUTPUTS or n.startswith(("checkpoint-", ".partial-checkpoint-"))]
    if clashes:
        raise ConfigError(
            f"output folder {str(out)!r} holds {', '.join(clashes[:5])}, which clmkit did not write and a run would "
            "replace. Move them away, or pass another --output_dir."
        )
    ours = sorted(folder.owned() | {p.name for p in folder.checkpoints()}, key=lambda n: (n != "model.safetensors", n))
    if overwrite or not ours:
        if not overwrite and foreign:
            raise ConfigError(
                f"output folder {str(out)!r} already holds files that are not this run's ({', '.join(foreign[:5])}). "
                "Pass --overwrite to train beside them (they are kept), or another --output_dir."
            )
        return
    try:
        previous = out / ARGS_FILE
        old = yaml.safe_load(previous.read_text(encoding="utf-8")) if previous.is_file() else None
    except yaml.YAMLError:
        old = None
    differ = (
        sorted(k for k in set(old) | set(values) if k != "output_dir" and old.get(k) != values.get(k))
        if (isinstance(old, dict))
        else []
    )
    what = f"a different run (its {ARGS_FILE} differs in {', '.join(differ[:5])})" if differ else "this run"
    raise ConfigError(
        f"output folder {str(out)!r} already holds {what}: {', '.join(ours[:6])}. Pass --overwrite to replace "
        "them, --resume_from_checkpoint last to continue, or another --output_dir."
    )


def resolve_checkpoint(value: str | None, out: Path) -> str | None:
    """``--resume_from_checkpoint``: a checkpoint folder, or ``last`` for the newest complete one in the output
    folder (the incomplete ones skipped are named); checked against its manifest before anything reads it."""
    if not value:
        return None
    from clmkit.training.checkpoint import resolve_resume

    folder, _ = resolve_resume(value, out)  # it logs each checkpoint it skipped, and why
    return str(folder)


# ---- commands -----------------------------------------------------------------------------------


def cmd_train(argv: Sequence[str]) -> int:
    """Train a tokenizer (unless given) and a GPT-2; leave the model folder, metrics, curve and card."""
    started = process_start_time()
    source, tok_options, run, args, values = parse_train_args(argv)
    folder = OutputFolder(str(args.output_dir), "train")
    checkpoint = resolve_checkpoint(args.resume_from_checkpoint, folder.path)
    if run.overwrite and checkpoint is None:
        check_overwritable(folder.path, [source.dataset, tok_options.tokenizer, run.config])
    from clmkit.plugins import Plugins

    overrides = parse_overrides(run.config_overrides)
    plugins = Plugins()
    run.model_config(256, args.context_length, 0, plugins)  # fail before the slow steps
    plugins.check_names(args)  # every registry, before the data is read
    check_optimizer_options(plugins, args)
    folder.check_not_in_use()
    check_output_dir(folder, values, run.overwrite, checkpoint is not None)  # before the lock creates anything
    with folder.locked(), storage_errors(folder.path):
        check_output_dir(folder, values, run.overwrite, checkpoint is not None)  # again: another run may have ended
        return train_in(folder, started, argv, (source, tok_options, run, args, values), overrides, checkpoint, plugins)


class WriteRunArguments(TrainerCallback):
    """Writes ``training_args.yaml`` when training starts: after a resume was checked and loaded, so a
    refused resume leaves the folder as it was."""

    def __init__(self, folder: OutputFolder, text: str) -> None:
        self.folder, self.text = folder, text

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            write_text(self.folder.path / ARGS_FILE, self.text)
            self.folder.record([ARGS_FILE])


def train_in(
    folder: OutputFolder,
    started: float,
    argv: Sequence[str],
    options: tuple[Any, Any, RunOptions, ClmTrainingArguments, dict[str, Any]],
    overrides: dict[str, Any],
    checkpoint: str | None,
    plugins: Any,
) -> int:
    """The run of ``clmkit train`` inside its locked output folder."""
    from clmkit import report
    from clmkit.data.preparation import chunker_names
    from clmkit.data.streaming import check_streaming_steps
    from clmkit.data.tokenizer import get_tokenizer, load_tokenizer
    from clmkit.training.checkpoint import newest_complete_checkpoint
    from clmkit.training.interrupt import SaveOnInterrupt

    source, tok_options, run, args, values = options
    out = folder.path
    data = source.load(args.text_column)
    plugins.check_names(args, chunker_names(data.splits["train"], args.chunker))  # a mixture's sources
    # before the tokenizer trains (a mixture's streams: when prepared)
    check_streaming_steps(data.splits["train"], args.max_steps, args.max_tokens)
    if checkpoint:
        tokenizer = load_tokenizer(checkpoint)
    else:
        tokenizer = get_tokenizer(data, tok_options.tokenizer, tok_options.vocab_size, args.text_column)
    trainer = build_trainer(run, overrides, args, data, tokenizer)
    loaded = trainer.plugins.third_party()
    logger.info("third-party plugins: %s", ", ".join(plugin_label(p) for p in loaded) or "none")
    if checkpoint:
        trainer.check_resume(checkpoint)  # its settings too, before anything is written or removed
    full_eval = trainer.eval_dataset
    trainer.eval_dataset = spread_subset(full_eval, run.periodic_eval_examples)
    if run.overwrite and checkpoint is None:  # the previous run's files must not mix with this one's
        replaced = folder.remove_owned()
        if replaced:
            logger.info("--overwrite: removed the previous run's %s from %s", ", ".join(replaced), out)
    command = shlex.join(["clmkit", "train", *argv])
    trainer.add_callback(WriteRunArguments(folder, report.training_args_yaml(values, command)))
    before = set(folder.foreign())
    try:
        with SaveOnInterrupt() as interrupt:
            trainer.add_callback(interrupt)
            result = trainer.train(resume_from_checkpoint=checkpoint)
    except KeyboardInterrupt:
        last_complete, _ = newest_complete_checkpoint(out)  # never a save the second Ctrl-C cut short
        last = None if last_complete is None else str(last_complete)
        if last is None:
            print("clmkit train: interrupted before the first checkpoint; run the command again.", file=sys.stderr)
        else:
            resume = shlex.join(["clmkit", "train", "--config", str(out / ARGS_FILE), "--resume_from_checkpoint", last])
            print(f"clmkit train: interrupted; the last checkpoint is {last}. Resume with: {resume}", file=sys.stderr)
        return 130
    finally:
        folder.record(set(folder.foreign()) - before)  # what appeared while this run held the lock is its own
    seen = trainer.token_counter.logs(trainer.accelerator)  # counts since the last log step; throughput until now
    train_points, eval_points = report.loss_points(trainer.state.log_history)
    logger.info("final evaluation on the whole validation split (%d examples)", len(full_eval))
    final = trainer.evaluate(eval_dataset=full_eval)
    check_final_eval(final, out)  # an inf perplexity is no success: nothing is saved as the result
    folder.save_model(trainer)  # every process: FSDP and ZeRO-3 gather the weights there; the main one writes
    trainer.accelerator.wait_for_everyone()
    if not trainer.accelerator.is_main_process:
        return 0  # under torchrun the main process samples, and writes the metrics and the model card

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
        "plugins": loaded,
        "data": {split: stats.as_dict() for split, stats in trainer.data_stats.items()},
    }
    if trainer.spike_guard is not None:
        metrics["spike_guard"] = {"threshold": trainer.spike_guard.threshold, "skips": trainer.spike_guard.skips}
    final_point = (float(seen["tokens_seen"]), float(final["eval_loss"]))
    report.plot_loss_curve(
        out / "loss_curve.png",
        train_points,
        eval_points,
        final_point,
        f"clmkit train: {run.architecture} {run.model_preset} on {data.info.get('source')}",
    )
    metrics["wall_time_seconds"] = round(time.time() - started, 1)
    report.write_json(out / "metrics.json", metrics)
    folder.record(["metrics.json", "loss_curve.png"])
    description = (
        f"A {run.architecture} model (preset `{run.model_preset}`, {metrics['parameters']:,} parameters, context "
        f"{args.context_length}) trained from scratch with clmkit on `{data.info.get('source')}`, "
        f"with a tokenizer of {len(tokenizer):,} tokens."
        + (f" Third-party plugins: {', '.join(plugin_label(p) for p in loaded)}." if loaded else "")
    )
    report.write_text(
        out / "README.md",
        report.model_card(
            out.name,
            description,
            metrics,
            command,
            dict(zip(run.prompts, samples, strict=True)),
            trainer.model.config.model_type,
        ),
    )
    folder.record(["README.md"])
    print_summary(out, metrics, samples)
    return 0


def plugin_label(record: dict[str, Any]) -> str:
    """``fim (clmkit-fim 0.1.0)``: a plugin as the log and the model card name it."""
    where = " ".join(str(v) for v in (record["distribution"], record["version"]) if v)
    return f"{record['plugin']} ({where})" if where else str(record["plugin"])


def process_start_time() -> float:
    """When this process started (epoch seconds), so wall times include Python's imports."""
    import psutil  # a dependency of accelerate

    return psutil.Process().create_time()


def build_trainer(
    run: RunOptions, overrides: dict[str, Any], args: ClmTrainingArguments, data: Corpus, tokenizer: Any
) -> TrainingRun:
    """A ClmTrainer (or ClmLoop) over a freshly initialized model of the run's architecture, sized to the tokenizer
    and context."""
    from transformers import set_seed

    from clmkit.generation import default_generation_config
    from clmkit.models import build_model, suppress_padding_tokens
    from clmkit.training.loop import ClmLoop
    from clmkit.training.trainer import ClmTrainer

    config = run.model_config(len(tokenizer), args.context_length, tokenizer.eos_token_id)
    set_seed(args.seed)
    model = build_model(config)
    model.generation_config = default_generation_config(tokenizer.eos_token_id, run.max_new_tokens)
    logger.info("model: %s %s, %s parameters", run.architecture, run.model_preset, f"{model.num_parameters():,}")
    if run.loop == "accelerate" and args.push_to_hub:
        args.hub_strategy = "end"  # the loop pushes once, after the final save
    trainer_cls: Callable[..., TrainingRun] = ClmLoop if run.loop == "accelerate" else ClmTrainer
    trainer = trainer_cls(
        model=model,
        args=args,
        processing_class=tokenizer,
        train_dataset=data.splits["train"],
        eval_dataset=data.splits["validation"],
    )
    suppress_padding_tokens(model, len(tokenizer))  # after the plugins added their tokens
    return trainer


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
