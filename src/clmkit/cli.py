"""The ``clmkit`` command: ``train``, ``prepare``, ``eval``, ``generate`` and ``plugins``.

``clmkit train`` with no arguments trains a byte-level BPE tokenizer and a small GPT-2 on this
interpreter's standard library in about three minutes on a CPU, and leaves a complete model folder.
Every ``ClmTrainingArguments`` (hence ``TrainingArguments``) field is a flag; ``--config run.yaml``
takes the same fields, and flags override it. Bad input ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from clmkit.args import ClmTrainingArguments
from clmkit.errors import ClmkitError, ConfigError, DataError
from clmkit.generation import TEMPERATURE, TOP_P

logger = logging.getLogger("clmkit")

DEFAULT_OUTPUT_DIR = "clmkit-out"
DEFAULT_PROMPTS = ["def fibonacci(n):", "import os\n"]
# what `clmkit train` changes from TrainingArguments' defaults: a run sized for ~3 minutes on 2 CPU cores
TRAIN_DEFAULTS: dict[str, Any] = {
    "output_dir": DEFAULT_OUTPUT_DIR,
    "max_steps": 450,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 64,
    "learning_rate": 2e-3,
    "warmup_steps": 0.05,
    "lr_scheduler_type": "cosine",
    "weight_decay": 0.1,
    "adam_beta2": 0.98,
    "eval_strategy": "steps",
    "eval_steps": 0.25,
    "logging_steps": 20,
    "save_strategy": "steps",
    "save_steps": 0.25,
    "save_total_limit": 1,
    "report_to": "none",
    "seed": 0,
}
NOT_SAVED = ("config", "overwrite", "resume_from_checkpoint")  # options of one invocation, not of the run
PREPARED_STATS = "prepare_stats.json"
MIXTURE_KEY = "mixture"  # the config-file key of a dataset mixture (docs/data.md)
STREAM_TOKENIZER_DOCUMENTS = 10_000  # documents of a streamed train split that a new tokenizer is trained on
ARGS_FILE = "training_args.yaml"


def _help(name: str) -> dict[str, Any]:
    """The metadata (help text) of a ClmTrainingArguments field, to reuse it in other option groups."""
    return dict(ClmTrainingArguments.__dataclass_fields__[name].metadata)


@dataclass
class SourceOptions:
    """Where the raw text comes from."""

    _argument_group_name = "corpus"

    dataset: str | None = field(
        default=None,
        metadata={
            "help": "The corpus: a directory of source files, data files (json/jsonl/parquet/csv/txt; globs allowed, "
            "quote them), a folder made by `clmkit prepare`, or a hub dataset name. "
            "Default: this Python's standard library."
        },
    )
    extensions: str = field(
        default=".py", metadata={"help": "Comma-separated file extensions read from a --dataset directory."}
    )
    valid_split_percentage: float = field(
        default=2.0,
        metadata={"help": "Percent of documents (chosen by a hash of their path or text) held out for validation."},
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the train split of a local --dataset (directory or data files) lazily, in bounded memory; "
            "needs --max_steps. The validation split is read once and kept in memory."
        },
    )
    # a list of sources (dicts of clmkit.mixtures.Source fields and 'dataset'), from the `mixture:` key
    # of a --config file only; not a flag
    mixture: list[dict[str, Any]] | None = field(default=None, init=False)

    def extension_list(self) -> list[str]:
        return [e.strip() for e in self.extensions.split(",") if e.strip()]


@dataclass
class TokenizerOptions:
    """Which tokenizer: reuse one, or train a byte-level BPE tokenizer on the train split."""

    _argument_group_name = "tokenizer"

    tokenizer: str | None = field(
        default=None,
        metadata={"help": "A tokenizer folder or hub name to reuse. Default: train a byte-level BPE tokenizer."},
    )
    vocab_size: int = field(default=8192, metadata={"help": "Vocabulary size of the tokenizer trained here."})


@dataclass
class RunOptions:
    """The model and the run around the Trainer."""

    _argument_group_name = "model and run"

    config: str | None = field(
        default=None, metadata={"help": "A YAML file of these flags' fields (without --); flags override it."}
    )
    model_preset: str = field(
        default="tiny", metadata={"help": "GPT-2 size: test, tiny (CPU default), small, gpt2 (124M, the course's)."}
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": "Comma-separated GPT2Config fields over the preset, e.g. n_layer=6,n_embd=384."}
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "Train into an output folder that holds another run (its checkpoints are deleted)."},
    )
    periodic_eval_examples: int = field(
        default=128,
        metadata={
            "help": "Validation examples evaluated at each eval_steps (spread over the split; 0 = all). "
            "The final evaluation always uses the whole validation split."
        },
    )
    prompts: list[str] = field(
        default_factory=lambda: list(DEFAULT_PROMPTS), metadata={"help": "Prompts of the sample completions."}
    )
    max_new_tokens: int = field(default=48, metadata={"help": "New tokens per sample completion."})
    loop: str = field(
        default="trainer",
        metadata={
            "help": "Training path: 'trainer' (ClmTrainer) or 'accelerate' (clmkit.loop.ClmLoop, the manual "
            "Accelerate loop over the same plugins and arguments).",
            "choices": ["trainer", "accelerate"],
        },
    )


@dataclass
class PrepareOptions:
    """Where and how `clmkit prepare` writes examples."""

    _argument_group_name = "examples"

    output_dir: str = field(default="clmkit-prepared", metadata={"help": "Folder to write the prepared dataset to."})
    context_length: int = field(default=128, metadata=_help("context_length"))
    text_column: str = field(default="content", metadata=_help("text_column"))
    chunker: str = field(default="concat", metadata=_help("chunker"))
    chunker_kwargs: str | None = field(default=None, metadata=_help("chunker_kwargs"))
    filters: str | None = field(default=None, metadata=_help("filters"))
    preprocessing_num_workers: int | None = field(default=None, metadata=_help("preprocessing_num_workers"))
    overwrite: bool = field(default=False, metadata={"help": "Replace the output folder if it exists."})
    compare: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated chunker names, e.g. overflow,concat,packed: print one table of documents, "
            "tokens, examples, tokens kept and dropped, padding and fill rate per chunker for the train split, "
            "and save nothing."
        },
    )


class Parser(HfArgumentParser):
    """An ``HfArgumentParser`` whose usage errors are one line (exit code 2), not the whole usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}. See '{self.prog} --help'.\n")


def _parse(parser: Parser, argv: Sequence[str]) -> tuple[Any, ...]:
    """Parse into the parser's dataclasses; a field value TrainingArguments rejects becomes a ConfigError."""
    unknown = parser.parse_known_args(list(argv))[1]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return parser.parse_args_into_dataclasses(list(argv), look_for_args_file=False)
    except ClmkitError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid arguments: {' '.join(str(exc).split())}") from exc


# ---- configuration files ------------------------------------------------------------------------


def read_config(path: str | Path, known: Sequence[str]) -> dict[str, Any]:
    """The mapping of a YAML config file, checked against the known field names."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist. Pass the path of a YAML file.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(f"config file {str(path)!r} is not valid YAML ({problem}{where}). Fix its syntax.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(path)!r} must be a mapping of field: value, got {type(data).__name__}. "
            "Write one 'field: value' per line."
        )
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"config file {str(path)!r} has an unknown key {key!r}; {hint}"
                "keys are the names of `clmkit train` flags (see clmkit train --help)."
            )
    return data


def _explicit_keys(argv: Sequence[str], config: dict[str, Any]) -> set[str]:
    """Field names set on the command line or in the config file."""
    flags = {a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}
    return flags | set(config)


def _train_parser() -> Parser:
    parser = Parser(
        [SourceOptions, TokenizerOptions, RunOptions, ClmTrainingArguments],
        prog="clmkit train",
        usage="%(prog)s [--dataset SRC] [--config RUN.yaml] [--model_preset NAME] [--<any TrainingArguments field> V]",
        description="Train a GPT-2 from scratch with ClmTrainer. With no arguments: a tokenizer and a `tiny` GPT-2 "
        "trained on this Python's standard library for about three minutes on a CPU. Every TrainingArguments "
        "field is a flag (--snake_case or --kebab-case). clmkit's defaults differ from TrainingArguments' for: "
        + ", ".join(f"{k}={v}" for k, v in TRAIN_DEFAULTS.items())
        + ".",
        epilog="Examples: clmkit train --dataset my_repo/ --max_steps 2000 | "
        "clmkit train --config clmkit-out/training_args.yaml --output_dir run2 | "
        "clmkit train --model-preset gpt2 --dataset 'data/*.jsonl' --text_column text --bf16 --max_steps 50000",
    )
    parser.set_defaults(**TRAIN_DEFAULTS)
    return parser


def parse_train_args(
    argv: Sequence[str],
) -> tuple[SourceOptions, TokenizerOptions, RunOptions, ClmTrainingArguments, dict[str, Any]]:
    """The options of ``clmkit train``: defaults, then the ``--config`` file, then the flags.

    Also returns the run's values to save as ``training_args.yaml``: every clmkit option, every field
    clmkit sets a default for, and each training argument that differs from its class default.
    """
    parser = _train_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    config_path = pre.parse_known_args(list(argv))[0].config
    known = [f.name for dt in parser.dataclass_types for f in fields(dt) if f.init]
    config = read_config(config_path, [*known, MIXTURE_KEY]) if config_path else {}
    mixture = config.pop(MIXTURE_KEY, None)
    parser.set_defaults(**config)
    source, tok, run, args = _parse(parser, argv)
    source.mixture = mixture
    explicit = _explicit_keys(argv, config)
    if ("num_train_epochs" in explicit or source.streaming) and "max_steps" not in explicit:
        args.max_steps = -1  # epochs when asked for; a stream's steps are the user's call, not clmkit's budget
    values: dict[str, Any] = {"output_dir": args.output_dir}
    for options in (source, tok, run):
        values.update({f.name: getattr(options, f.name) for f in fields(options) if f.init and f.name not in NOT_SAVED})
    if mixture is not None:
        values[MIXTURE_KEY] = mixture
    baseline = ClmTrainingArguments(output_dir=args.output_dir).to_dict()  # output_dir is already in
    values.update(
        {
            k: v
            for k, v in args.to_dict().items()
            if (k in TRAIN_DEFAULTS or baseline.get(k) != v) and k not in NOT_SAVED
        }
    )
    return source, tok, run, args, values


# ---- data and tokenizer -------------------------------------------------------------------------


@dataclass
class TrainingData:
    """The splits a run trains and evaluates on, and where they came from."""

    splits: Any  # DatasetDict: raw text, or examples from `clmkit prepare`
    info: dict[str, Any]
    tokenizer: Any = None  # the tokenizer a prepared dataset was made with


def load_data(source: SourceOptions, text_column: str) -> TrainingData:
    """A prepared folder as saved, a config's ``mixture:``, or a raw corpus (the standard library when
    ``dataset`` is None), its train split streamed with ``--streaming``."""
    from clmkit.data.corpus import is_prepared

    if source.mixture is not None:
        return load_mixture(source, text_column)
    if is_prepared(source.dataset):
        from datasets import load_from_disk
        from transformers import AutoTokenizer

        if source.streaming:
            raise ConfigError(
                f"--dataset {source.dataset!r} is a prepared folder, read from disk as needed already. "
                "Drop --streaming."
            )
        folder = Path(source.dataset).expanduser()
        splits = load_from_disk(str(folder))
        if not {"train", "validation"} <= set(splits):
            raise DataError(
                f"prepared dataset {str(folder)!r} lacks a train or validation split (it has {list(splits)}). "
                "Prepare it again with `clmkit prepare`."
            )
        stats_file = folder / PREPARED_STATS
        info = json.loads(stats_file.read_text()) if stats_file.is_file() else {"source": str(folder)}
        return TrainingData(splits, info, AutoTokenizer.from_pretrained(str(folder)))
    return load_raw(source.dataset, source, text_column)


def load_raw(dataset: str | None, source: SourceOptions, text_column: str) -> TrainingData:
    """One raw corpus: loaded whole (``load_corpus``), or with ``--streaming`` its train split as a stream."""
    if source.streaming:
        return stream_corpus(dataset, source, text_column)
    from clmkit.data.corpus import load_corpus

    corpus = load_corpus(dataset, text_column, source.valid_split_percentage, source.extension_list())
    if corpus.non_utf8_files:
        logger.info("%d files are not valid UTF-8; decoded with replacement characters", corpus.non_utf8_files)
    return TrainingData(corpus.splits, corpus.describe())


def stream_corpus(dataset: str | None, source: SourceOptions, text_column: str) -> TrainingData:
    """A local corpus whose train split is an ``IterableDataset`` and whose validation split is in memory.

    The split is ``load_corpus``'s: files (of a directory, or .txt files) by a hash of their path,
    read by ``stream_files``; rows of data files by a hash of their text, read by
    ``load_dataset(..., streaming=True)``, which takes one pass up front to collect the validation rows.
    """
    import glob

    from datasets import Dataset, load_dataset

    from clmkit.data.corpus import DATA_FILE_BUILDERS, in_validation, list_source_files, split_mask, stdlib_root
    from clmkit.streaming import stream_files

    label, percentage = dataset or "stdlib", source.valid_split_percentage
    path = Path(dataset).expanduser() if dataset else stdlib_root()
    root = path if path.is_dir() else None
    if root is not None:
        files = list_source_files(root, source.extension_list() if dataset else [".py"])
    elif dataset and any(ch in dataset for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
    elif path.is_file():
        files = [path]
    else:
        raise ConfigError(
            f"--streaming reads local files, and --dataset {label!r} is not a directory, data file or glob "
            "that exists. Pass one, or drop --streaming."
        )
    builders = {DATA_FILE_BUILDERS.get(p.suffix) for p in files}
    if root is not None or builders == {None}:  # one document per file, split by path
        valid = split_mask([(p.relative_to(root) if root else p).as_posix() for p in files], percentage)
        train_files = [p for p, v in zip(files, valid, strict=True) if not v]
        validation = Dataset.from_list(list(stream_files([p for p, v in zip(files, valid, strict=True) if v])))
        info = {
            "source": label,
            "streaming": True,
            "documents": {"train": len(train_files), "validation": len(validation)},
        }
        return TrainingData({"train": stream_files(train_files, text_column), "validation": validation}, info)
    if len(builders) != 1 or None in builders:
        raise DataError(
            f"--dataset {label!r} names files of types {sorted({p.suffix for p in files})}; a stream reads one type "
            f"among {', '.join(DATA_FILE_BUILDERS)} or whole text files. Pass files of one supported type."
        )
    stream = load_dataset(builders.pop(), data_files=[str(p) for p in files], split="train", streaming=True)
    first = next(iter(stream), None)
    if first is None or text_column not in first:
        raise DataError(
            f"{label!r} has no column {text_column!r} (its columns are {list(first or [])}). "
            "Pass --text_column with the column that holds the text."
        )

    def held_out(row: dict[str, Any]) -> bool:
        text = row[text_column]
        return in_validation(text if isinstance(text, str) else "", percentage)

    validation = Dataset.from_list([row for row in stream if held_out(row)])
    if len(validation) == 0:
        raise DataError(
            f"no row of {label!r} falls in the validation split ({percentage}% by a hash of the text). "
            "Raise --valid_split_percentage or pass more data."
        )
    info = {"source": label, "streaming": True, "documents": {"validation": len(validation)}}
    return TrainingData({"train": stream.filter(lambda row: not held_out(row)), "validation": validation}, info)


def load_mixture(source: SourceOptions, text_column: str) -> TrainingData:
    """A config's ``mixture:`` as a ``Mixture`` to train on, each source loaded like ``--dataset``.

    The validation split is the union of the sources' validation splits (in the run's text column),
    so every source is evaluated; it is cut with the run's chunker and filters, which keeps eval loss
    comparable between runs that mix the same data differently.
    """
    from datasets import concatenate_datasets

    from clmkit.mixtures import Mixture, sources_from_config
    from clmkit.plugins import Plugins

    if source.dataset is not None:
        raise ConfigError("the config's mixture names the datasets to train on; drop --dataset, or the mixture.")
    entries = source.mixture
    # sources_from_config calls load once per entry, in order: the n-th call loads the n-th entry
    listed = entries if isinstance(entries, list) else []  # anything else: sources_from_config says what it takes
    columns = [e.get("text_column") if isinstance(e, dict) else None for e in listed]
    loaded: list[TrainingData] = []

    def load(dataset: str) -> Any:
        loaded.append(load_raw(str(dataset), source, columns[len(loaded)] or text_column))
        return loaded[-1].splits["train"]

    mixture = Mixture(sources_from_config(entries, load))  # type: ignore[arg-type]
    plugins = Plugins()
    validation = []
    for src, part in zip(mixture.sources, loaded, strict=True):
        if src.chunker:
            plugins.get("chunkers", src.chunker)  # fail on a misspelled name before training a tokenizer
        column = src.text_column or text_column
        split = part.splits["validation"].select_columns([column])
        validation.append(split if column == text_column else split.rename_column(column, text_column))
    info = {
        "source": "mixture of " + ", ".join(mixture.names),
        "mixture": [
            {"name": name, "probability": round(p, 4), **part.info}
            for name, p, part in zip(mixture.names, mixture.probabilities, loaded, strict=True)
        ],
        "documents": {"validation": sum(len(v) for v in validation)},
    }
    return TrainingData({"train": mixture, "validation": concatenate_datasets(validation)}, info)


def get_tokenizer(options: TokenizerOptions, data: TrainingData, text_column: str) -> Any:
    """The prepared dataset's tokenizer, the one named by ``--tokenizer``, or a new one trained on the train split."""
    if data.tokenizer is not None:
        if options.tokenizer:
            raise ConfigError(
                "a prepared dataset carries the tokenizer it was made with; drop --tokenizer, "
                "or prepare the dataset again with that tokenizer."
            )
        return data.tokenizer
    if options.tokenizer:
        return load_tokenizer(options.tokenizer)
    from clmkit.data.tokenizer import train_tokenizer

    logger.info("training a byte-level BPE tokenizer (vocab_size=%d) on the train split", options.vocab_size)
    return train_tokenizer(training_texts(data.splits["train"], text_column), vocab_size=options.vocab_size)


def training_texts(train: Any, text_column: str) -> Iterator[str]:
    """The texts a new tokenizer learns: the train split's, the first ``STREAM_TOKENIZER_DOCUMENTS`` of a
    stream (a stream may be endless), or each mixture source's in turn."""
    from datasets import IterableDataset

    from clmkit.mixtures import Mixture

    if isinstance(train, Mixture):
        return itertools.chain.from_iterable(
            training_texts(s.dataset, s.text_column or text_column) for s in train.sources
        )
    texts = (text for batch in train.iter(batch_size=1000) for text in batch[text_column] if isinstance(text, str))
    return itertools.islice(texts, STREAM_TOKENIZER_DOCUMENTS) if isinstance(train, IterableDataset) else texts


def load_tokenizer(name_or_path: str) -> Any:
    """``AutoTokenizer.from_pretrained`` with one-line errors."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"could not load tokenizer {name_or_path!r} ({' '.join(str(exc).split())[:200]}). "
            "Pass a folder with tokenizer files, or a hub name while online."
        ) from exc


def parse_overrides(text: str | None) -> dict[str, Any]:
    """``n_layer=6,n_embd=384`` as a dict, values read as YAML scalars (numbers, booleans, strings)."""
    overrides: dict[str, Any] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--config_overrides item {item!r} is not field=value. Write e.g. n_layer=6,n_embd=384.")
        overrides[key.strip()] = yaml.safe_load(value.strip())
    return overrides


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
    out = Path(args.output_dir)
    checkpoint = resolve_checkpoint(args.resume_from_checkpoint, out)
    check_output_dir(out, values, run.overwrite, checkpoint is not None)
    from clmkit import report
    from clmkit.models import gpt2_config

    overrides = parse_overrides(run.config_overrides)
    gpt2_config(run.model_preset, 256, args.context_length, 0, overrides)  # fail before the slow steps
    check_plugin_names(args)

    data = load_data(source, args.text_column)
    from clmkit.streaming import check_streaming_steps

    check_streaming_steps(data.splits["train"], args.max_steps)  # before the tokenizer (a mixture's: when prepared)
    tokenizer = load_tokenizer(checkpoint) if checkpoint else get_tokenizer(tok_options, data, args.text_column)
    trainer = build_trainer(run, overrides, args, data, tokenizer)
    full_eval = trainer.eval_dataset
    trainer.eval_dataset = spread_subset(full_eval, run.periodic_eval_examples)
    if run.overwrite and (out / ARGS_FILE).is_file():  # another clmkit run: its checkpoints must not mix with ours
        for old in out.glob("checkpoint-*"):
            shutil.rmtree(old)
    command = shlex.join(["clmkit", "train", *argv])
    report.write_text(out / ARGS_FILE, report.training_args_yaml(values, command))

    from transformers.trainer_utils import get_last_checkpoint

    from clmkit.builtins.callbacks import SaveOnInterrupt, TokenCounter

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
    counter = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, TokenCounter))
    seen = counter.logs(trainer.accelerator)  # folds in the counts since the last log step; throughput until now
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


def check_plugin_names(args: ClmTrainingArguments) -> None:
    """Fail at once on a chunker, collator, loss or grouping name that no plugin registered."""
    from clmkit.plugins import Plugins

    plugins = Plugins()
    for kind, name in [
        ("chunkers", args.chunker),
        ("collators", args.collator),
        ("losses", args.loss),
        ("param_groupers", args.param_grouper),
    ]:
        plugins.get(kind, name)


def process_start_time() -> float:
    """When this process started (epoch seconds), so wall times include Python's imports."""
    import psutil  # a dependency of accelerate

    return psutil.Process().create_time()


def build_trainer(
    run: RunOptions, overrides: dict[str, Any], args: ClmTrainingArguments, data: TrainingData, tokenizer: Any
) -> Any:
    """A ClmTrainer over a freshly initialized GPT-2 sized to the tokenizer and context."""
    from transformers import set_seed

    from clmkit.generation import default_generation_config
    from clmkit.loop import ClmLoop
    from clmkit.models import build_model, gpt2_config
    from clmkit.trainer import ClmTrainer

    config = gpt2_config(run.model_preset, len(tokenizer), args.context_length, tokenizer.eos_token_id, overrides)
    set_seed(args.seed)
    model = build_model(config)
    model.generation_config = default_generation_config(tokenizer.eos_token_id, run.max_new_tokens)
    logger.info("model: GPT-2 %s, %s parameters", run.model_preset, f"{model.num_parameters():,}")
    if run.loop == "accelerate" and args.push_to_hub:
        args.hub_strategy = "end"  # the loop pushes once, after the final save
    trainer_cls = ClmLoop if run.loop == "accelerate" else ClmTrainer
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


def cmd_prepare(argv: Sequence[str]) -> int:
    """Tokenize and chunk a corpus once; save it with its tokenizer and statistics for `clmkit train`."""
    parser = Parser(
        [SourceOptions, TokenizerOptions, PrepareOptions],
        prog="clmkit prepare",
        usage="%(prog)s [--dataset SRC] [--output_dir DIR] [--context_length N] [--chunker NAME] [...]",
        description="Tokenize and chunk a corpus and save it (datasets.save_to_disk) with its tokenizer and "
        f"statistics ({PREPARED_STATS}). `clmkit train --dataset FOLDER` trains on it without preparing again.",
    )
    source, tok_options, options = _parse(parser, argv)
    out = Path(options.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output folder {str(out)!r} is a file. Pass another --output_dir.")
    if out.exists() and any(out.iterdir()) and not options.overwrite:
        raise ConfigError(
            f"output folder {str(out)!r} is not empty. Pass --overwrite to replace it, or another --output_dir."
        )
    args = ClmTrainingArguments(
        output_dir=str(out),
        context_length=options.context_length,
        text_column=options.text_column,
        chunker=options.chunker,
        chunker_kwargs=options.chunker_kwargs,
        filters=options.filters,
        preprocessing_num_workers=options.preprocessing_num_workers,
        report_to="none",
    )
    if source.streaming:
        raise ConfigError("clmkit prepare saves whole splits, so it does not stream. Drop --streaming.")
    data = load_data(source, args.text_column)
    if data.tokenizer is not None:
        raise ConfigError(f"--dataset {source.dataset!r} is already prepared. Pass the raw corpus instead.")
    tokenizer = get_tokenizer(tok_options, data, args.text_column)
    if options.compare:
        from clmkit.preparation import compare_chunkers, compare_table

        names = [n.strip() for n in options.compare.split(",") if n.strip()]
        rows = compare_chunkers(data.splits["train"], tokenizer, names, args.context_length, args.text_column)
        print(compare_table(rows))
        return 0

    from datasets import DatasetDict

    from clmkit.plugins import Plugins
    from clmkit.preparation import prepare_datasets
    from clmkit.trainer import build_components

    plugins = Plugins()
    _, collator, chunker = build_components(plugins, args, tokenizer)  # the collator checks `packed` can train
    stats: dict[str, Any] = {}
    reports: dict[str, Any] = {}
    train, validation = prepare_datasets(
        data.splits["train"],
        data.splits["validation"],
        tokenizer,
        args,
        chunker,
        stats,
        plugins=plugins,
        collator=collator,
        filter_reports=reports,
    )
    split_name = {"train": "train", "eval": "validation"}  # prepare_datasets' split names -> the saved ones
    prepared = {"train": train, "validation": validation}
    info = {
        **data.info,
        "context_length": args.context_length,
        "chunker": args.chunker,
        "chunker_kwargs": args.plugin_kwargs("chunker"),
        "filters": args.filters,
        "vocab_size": len(tokenizer),
        "splits": {split_name[k]: s.as_dict() for k, s in stats.items()},
        "filter_reports": {split_name[k]: [r.as_dict() for r in rs] for k, rs in reports.items()},
    }
    from clmkit import report

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.resolve().parent))
    try:
        DatasetDict(prepared).save_to_disk(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        report.write_json(tmp / PREPARED_STATS, info)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"output_dir": str(out), **info}, indent=2))
    return 0


def cmd_eval(argv: Sequence[str]) -> int:
    """Token-weighted loss, perplexity and bits per byte of a saved model over a dataset split."""
    parser = Parser(
        [SourceOptions],
        prog="clmkit eval",
        description="Evaluate a saved model: token-weighted loss, perplexity, bits per byte and next-token accuracy "
        "over one split of a corpus (default: the validation split of this Python's standard library, the one "
        "`clmkit train` holds out). Prints JSON.",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="A saved model folder (e.g. clmkit-out).")
    parser.add_argument("--split", default="validation", choices=["validation", "train"], help="Split to evaluate.")
    parser.add_argument("--text_column", "--text-column", default="content", help=_help("text_column")["help"])
    parser.add_argument("--batch_size", "--batch-size", type=int, default=64, help="Examples per forward pass.")
    source, rest = _parse(parser, argv)

    from transformers import AutoModelForCausalLM

    from clmkit.generation import check_model_dir, context_size
    from clmkit.trainer import ClmTrainer

    model_dir = check_model_dir(rest.model_dir)
    tokenizer = load_tokenizer(str(model_dir))
    data = load_data(source, rest.text_column)
    if data.tokenizer is not None and data.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise DataError(
            f"prepared dataset {source.dataset!r} was tokenized with another tokenizer than {str(model_dir)!r}'s. "
            "Evaluate on the raw corpus instead."
        )
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    with tempfile.TemporaryDirectory() as tmp:
        args = ClmTrainingArguments(
            output_dir=tmp,
            context_length=context_size(model.config) or 128,
            text_column=rest.text_column,
            per_device_eval_batch_size=rest.batch_size,
            report_to="none",
        )
        trainer = ClmTrainer(model=model, args=args, processing_class=tokenizer, eval_dataset=data.splits[rest.split])
        metrics = trainer.evaluate()
    result = {
        "model_dir": str(model_dir),
        "split": rest.split,
        **{k: v for k, v in metrics.items() if k.startswith("eval_") and k not in ("eval_runtime",)},
        "corpus": data.info,
    }
    print(json.dumps(result, indent=2))
    return 0


def cmd_generate(argv: Sequence[str]) -> int:
    """Complete a prompt with a saved model through the text-generation pipeline."""
    parser = Parser(
        prog="clmkit generate",
        description="Complete PROMPT with a saved model (transformers pipeline 'text-generation'). A prompt too long "
        "for the model's context keeps its last tokens, with a warning.",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="A saved model folder (e.g. clmkit-out).")
    parser.add_argument("prompt", metavar="PROMPT", help="The text to complete.")
    parser.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=64, help="Tokens to generate.")
    parser.add_argument("--temperature", type=float, default=TEMPERATURE, help="Sampling temperature; 0 means greedy.")
    parser.add_argument("--top_p", "--top-p", type=float, default=TOP_P, help="Nucleus sampling probability mass.")
    parser.add_argument("--seed", type=int, default=0, help="Random seed of the sampling.")
    (options,) = _parse(parser, argv)

    from clmkit.generation import complete, load_generator

    generator = load_generator(options.model_dir)
    print(
        complete(
            generator,
            options.prompt,
            max_new_tokens=options.max_new_tokens,
            temperature=options.temperature,
            top_p=options.top_p,
            seed=options.seed,
        )
    )
    return 0


@dataclass
class NewPluginOptions:
    """Where to write a new plugin package."""

    name: str = field(metadata={"help": "Plugin name, e.g. focal-loss: package clmkit-focal-loss, loss focal_loss."})
    dest: str = field(default=".", metadata={"help": "Folder to write the package folder into."})


def cmd_new_plugin(argv: Sequence[str]) -> int:
    """Write a loss-plugin package from clmkit's template; its tests pass as generated."""
    parser = Parser(
        [NewPluginOptions],
        prog="clmkit new-plugin",
        usage="%(prog)s NAME [--dest DIR]",
        description="Write the package clmkit-NAME (pyproject.toml with a 'clmkit' entry point, a loss plugin, "
        "README and tests) into --dest. Install it with `pip install -e clmkit-NAME`.",
    )
    argv = list(argv)
    if argv and not argv[0].startswith("-"):  # `clmkit new-plugin NAME` is `--name NAME`
        argv = ["--name", *argv]
    (options,) = _parse(parser, argv)
    from clmkit.templates import new_plugin

    print(new_plugin(options.name, options.dest))
    return 0


def cmd_plugins(argv: Sequence[str]) -> int:
    """Print every loaded plugin as JSON: distribution, version, hooks, registered names."""
    parser = Parser(
        prog="clmkit plugins",
        description="List the loaded plugins (built-in and installed through the 'clmkit' entry-point group) as "
        "JSON: name, distribution, version, hooks, and the names each registered.",
    )
    _parse(parser, argv)
    from clmkit.plugins import Plugins

    print(json.dumps(Plugins().describe(), indent=2))
    return 0


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "train": (cmd_train, "train a tokenizer and a GPT-2 (defaults: the stdlib, about 3 minutes on a CPU)"),
    "prepare": (cmd_prepare, "tokenize and chunk a corpus once, for train"),
    "eval": (cmd_eval, "perplexity and bits per byte of a saved model"),
    "generate": (cmd_generate, "complete a prompt with a saved model"),
    "plugins": (cmd_plugins, "list the loaded plugins as JSON"),
    "new-plugin": (cmd_new_plugin, "write a new plugin package from the template"),
}


class _StderrHandler(logging.Handler):
    """Writes to the current ``sys.stderr`` (which tests may replace) as ``clmkit: message``."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"clmkit: {record.getMessage()}", file=sys.stderr)


def _setup_logging() -> None:
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clmkit`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        top = Parser(
            prog="clmkit", description="Train causal language models from scratch. `clmkit train` runs the default job."
        )
        commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
        for name, (_, summary) in COMMANDS.items():
            commands.add_parser(name, help=summary, add_help=False)
        try:
            top.parse_args(argv)  # prints the help or a one-line error
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 0
        return 2
    command, rest = argv[0], argv[1:]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true but no accelerator")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight loading and saving bars; training and data bars stay
    _setup_logging()
    try:
        return COMMANDS[command][0](rest)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 0
    except ClmkitError as exc:
        print(f"clmkit {command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clmkit {command}: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
