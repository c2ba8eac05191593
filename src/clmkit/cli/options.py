"""The options of the ``clmkit`` commands: dataclasses parsed by ``HfArgumentParser``, config files, defaults."""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, cast

import yaml
from transformers import HfArgumentParser
from transformers.hf_argparser import DataClassType

from clmkit.args import ClmTrainingArguments
from clmkit.errors import ClmkitError, ConfigError

DEFAULT_OUTPUT_DIR = "clmkit-out"
DEFAULT_PROMPTS = ["def fibonacci(n):", "import os\n"]
# what `clmkit train` changes from TrainingArguments' defaults: a run sized for ~2 minutes on 2 CPU cores, the
# recipe bench/sweep.py found best at a fixed wall clock (docs/benchmarks.md)
TRAIN_DEFAULTS: dict[str, Any] = {
    "output_dir": DEFAULT_OUTPUT_DIR,
    "max_steps": 450,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 64,
    "optimizer": "muon",
    "learning_rate": 3e-3,
    "warmup_steps": 0.05,
    "lr_scheduler_type": "wsd",
    "lr_decay_fraction": 0.4,
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
MIXTURE_KEY = "mixture"  # the config-file key of a dataset mixture (docs/data.md)
ARGS_FILE = "training_args.yaml"


def field_help(name: str) -> dict[str, Any]:
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
    # a list of sources (dicts of clmkit.data.mixtures.Source fields and 'dataset'), from the `mixture:` key
    # of a --config file only; not a flag
    mixture: list[dict[str, Any]] | None = field(default=None, init=False)

    def extension_list(self) -> list[str]:
        return [e.strip() for e in self.extensions.split(",") if e.strip()]

    def validate(self) -> None:
        """Refuse a split percentage outside (0, 100) and an empty extension list, before any data is read."""
        if not 0 < self.valid_split_percentage < 100:
            raise ConfigError(
                f"--valid_split_percentage must be between 0 and 100 (exclusive), got {self.valid_split_percentage}."
                " Use e.g. 2."
            )
        if not self.extension_list():
            raise ConfigError(f"--extensions {self.extensions!r} names no extension. Pass e.g. --extensions .py,.pyi.")

    def load(self, text_column: str) -> Any:
        """The corpus these options name (``clmkit.data.sources.load_data``)."""
        from clmkit.data.sources import load_data

        return load_data(
            self.dataset,
            text_column=text_column,
            valid_percentage=self.valid_split_percentage,
            extensions=self.extension_list(),
            streaming=self.streaming,
            mixture=self.mixture,
        )


@dataclass
class TokenizerOptions:
    """Which tokenizer: reuse one, or train a byte-level BPE tokenizer on the train split."""

    _argument_group_name = "tokenizer"

    tokenizer: str | None = field(
        default=None,
        metadata={"help": "A tokenizer folder or hub name to reuse. Default: train a byte-level BPE tokenizer."},
    )
    vocab_size: int = field(default=8192, metadata={"help": "Vocabulary size of the tokenizer trained here."})

    def validate(self) -> None:
        """A tokenizer trained here needs room for the 256 bytes of its alphabet and the EOS token."""
        if self.tokenizer is None:
            from clmkit.data.tokenizer import check_vocab_size

            check_vocab_size(self.vocab_size)


@dataclass
class RunOptions:
    """The model and the run around the Trainer."""

    _argument_group_name = "model and run"

    config: str | None = field(
        default=None, metadata={"help": "A YAML file of these flags' fields (without --); flags override it."}
    )
    architecture: str = field(
        default="qwen3",
        metadata={
            "help": "Model architecture: 'qwen3' (RoPE, RMSNorm, SwiGLU, QK-norm, untied head), 'llama' (the same "
            "without QK-norm) or 'gpt2' (the course's)."
        },
    )
    model_preset: str = field(
        default="tiny",
        metadata={"help": "Model size: test, tiny (CPU default), small, base (about 124M, the course's GPT-2 size)."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated fields of the architecture's config over the preset, e.g. "
            "num_hidden_layers=6,hidden_size=384 (GPT-2: n_layer=6,n_embd=384)."
        },
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
            "help": "Training path: 'trainer' (ClmTrainer) or 'accelerate' (clmkit.training.loop.ClmLoop, the manual "
            "Accelerate loop over the same plugins and arguments).",
            "choices": ["trainer", "accelerate"],
        },
    )

    def model_config(self, vocab_size: int, context_length: int, eos_token_id: int, plugins: Any = None) -> Any:
        """The config of the model these options describe (``clmkit.models.model_config``)."""
        from clmkit.models import model_config

        return model_config(
            self.architecture,
            self.model_preset,
            vocab_size,
            context_length,
            eos_token_id,
            parse_overrides(self.config_overrides),
            plugins,
        )

    def validate(self) -> None:
        """Prompts, new tokens and the evaluation subset that the end of the run needs, checked before it starts."""
        from clmkit.generation import check_prompts

        if isinstance(self.prompts, str) or not self.prompts:
            raise ConfigError("--prompts names no prompt; the run ends with a completion of each. Pass some text.")
        check_prompts(self.prompts)
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max_new_tokens must be at least 1, got {self.max_new_tokens}. Pass e.g. 48.")
        if self.periodic_eval_examples < 0:
            raise ConfigError(
                f"--periodic_eval_examples must be 0 (all) or more, got {self.periodic_eval_examples}. Pass e.g. 128."
            )


@dataclass
class PrepareOptions:
    """Where and how `clmkit prepare` writes examples."""

    _argument_group_name = "examples"

    output_dir: str = field(default="clmkit-prepared", metadata={"help": "Folder to write the prepared dataset to."})
    context_length: int = field(default=128, metadata=field_help("context_length"))
    text_column: str = field(default="content", metadata=field_help("text_column"))
    chunker: str = field(default="concat", metadata=field_help("chunker"))
    chunker_kwargs: str | None = field(default=None, metadata=field_help("chunker_kwargs"))
    filters: str | None = field(default=None, metadata=field_help("filters"))
    preprocessing_num_workers: int | None = field(default=None, metadata=field_help("preprocessing_num_workers"))
    overwrite: bool = field(default=False, metadata={"help": "Replace the output folder if it exists."})
    compare: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated chunker names, e.g. overflow,concat,packed: print one table of documents, "
            "tokens, examples, tokens kept and dropped, padding and fill rate per chunker for the train split, "
            "and save nothing."
        },
    )

    def validate(self) -> None:
        from clmkit.paths import check_writable

        if self.context_length < 2:
            raise ConfigError(f"--context_length must be at least 2 tokens, got {self.context_length}.")
        if not self.compare:
            check_writable(self.output_dir)


class Parser(HfArgumentParser):
    """An ``HfArgumentParser`` whose usage errors are one line (exit code 2), not the whole usage."""

    def __init__(self, dataclass_types: Sequence[type] = (), **kwargs: Any) -> None:
        super().__init__(cast(list[DataClassType], list(dataclass_types)), **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}. See '{self.prog} --help'.\n")


def list_registered_names(parser: argparse.ArgumentParser) -> None:
    """Append the names installed plugins registered to the help of each option that picks from a registry."""
    from clmkit.plugins import KINDS, Plugins

    plugins = Plugins()
    for action in parser._actions:  # argparse keeps no public list of a parser's options
        kind = next((k for k in KINDS if action.dest == k.option), None)
        if kind is not None:
            names = ", ".join(sorted(plugins.registry(kind.name)))
            action.help = f"{action.help or ''} Registered {kind.name}: {names}.".strip()


def _parse(parser: Parser, argv: Sequence[str]) -> tuple[Any, ...]:
    """Parse into the parser's dataclasses; a field value TrainingArguments rejects becomes a ConfigError."""
    unknown = parser.parse_known_args(list(argv))[1]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        parsed = parser.parse_args_into_dataclasses(list(argv), look_for_args_file=False)
    except ClmkitError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid arguments: {' '.join(str(exc).split())}") from exc
    for options in parsed:  # each option group checks its own values, before any work
        validate = getattr(options, "validate", None)
        if callable(validate):
            validate()
    return parsed


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
        usage="%(prog)s [--dataset SRC] [--config RUN.yaml] [--architecture NAME] [--model_preset SIZE] "
        "[--<any TrainingArguments field> V]",
        description="Train a causal LM from scratch with ClmTrainer. With no arguments: a tokenizer and a `tiny` "
        "Qwen3-style model "
        "trained on this Python's standard library for 450 steps (about two minutes on a CPU). Every TrainingArguments "
        "field is a flag (--snake_case or --kebab-case). clmkit's defaults differ from TrainingArguments' for: "
        + ", ".join(f"{k}={v}" for k, v in TRAIN_DEFAULTS.items())
        + ", and bf16=true where the device computes in bfloat16 natively (GPUs from Ampere on, CPUs with AMX).",
        epilog="Examples: clmkit train --dataset my_repo/ --max_steps 2000 | "
        "clmkit train --config clmkit-out/training_args.yaml --output_dir run2 | "
        "clmkit train --architecture gpt2 --model-preset base --dataset 'data/*.jsonl' --text_column text "
        "--max_steps 50000",
    )
    parser.set_defaults(**TRAIN_DEFAULTS)
    list_registered_names(parser)
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
    asked = _explicit_keys(argv, config)
    budget = {"max_steps": -1} if "max_tokens" in asked and "max_steps" not in asked else {}  # the budget decides
    parser.set_defaults(**detected_defaults(asked), **budget, **config)
    source, tok, run, args = _parse(parser, argv)
    source.mixture = mixture
    explicit = _explicit_keys(argv, config)
    if ("num_train_epochs" in explicit or source.streaming) and "max_steps" not in explicit:
        args.max_steps = -1  # epochs when asked for; a stream's steps are the user's call, not clmkit's budget
    validate_train_options(run, args)
    values: dict[str, Any] = {"output_dir": args.output_dir}
    for options in (source, tok, run):
        values.update({f.name: getattr(options, f.name) for f in fields(options) if f.init and f.name not in NOT_SAVED})
    if mixture is not None:
        values[MIXTURE_KEY] = mixture
    # every TrainingArguments sets accelerate's one process state up again: the baseline gets the run's use_cpu,
    # or under torchrun on CPUs it would reset the process group to a single process
    baseline = ClmTrainingArguments(output_dir=args.output_dir, use_cpu=args.use_cpu).to_dict()
    values.update(
        {
            k: v
            for k, v in args.to_dict().items()
            if (k in TRAIN_DEFAULTS or baseline.get(k) != v) and k not in NOT_SAVED
        }
    )
    values.pop("use_cpu", None)  # a fact of this machine: the run's file must train on a GPU elsewhere
    if "use_cpu" in explicit:
        values["use_cpu"] = args.use_cpu
    return source, tok, run, args, values


def detected_defaults(explicit: set[str]) -> dict[str, Any]:
    """The defaults that depend on the device: ``use_cpu`` where there is no accelerator (TrainingArguments takes
    bf16 on a CPU only then), and bf16 autocast where the device computes in bfloat16 natively (unless a precision
    was asked for)."""
    from clmkit.device import native_bf16, training_device

    defaults: dict[str, Any] = {}
    if "use_cpu" not in explicit and not accelerator_available():
        defaults["use_cpu"] = True
    if not explicit & {"bf16", "fp16"}:
        defaults["bf16"] = native_bf16(training_device(use_cpu="use_cpu" in explicit))
    return defaults


def accelerator_available() -> bool:
    """Whether torch sees a device other than the CPU that TrainingArguments would train on (CUDA, XPU, MPS)."""
    import torch

    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu and xpu.is_available()) or torch.backends.mps.is_available()


def validate_train_options(run: RunOptions, args: ClmTrainingArguments) -> None:
    """What no single option group can check alone, before the tokenizer trains or data is read: the model's
    shape and context against the generation options, the plugins' keyword arguments by type, and that the
    output folder can be written."""
    from clmkit.args import check_plugin_kwargs
    from clmkit.generation import check_sampling, context_size
    from clmkit.paths import check_writable

    if args.max_steps == -1 and not args.num_train_epochs > 0:
        raise ConfigError(
            f"--num_train_epochs must be above 0, got {args.num_train_epochs}. Pass e.g. --num_train_epochs 1, "
            "or --max_steps N."
        )
    config = run.model_config(257, args.context_length, 0)
    positions = context_size(config) or args.context_length
    if positions < args.context_length:
        raise ConfigError(
            f"--context_length {args.context_length} exceeds the model's {positions} positions (set in "
            f"--config_overrides). Lower --context_length, or give the model at least {args.context_length} positions."
        )
    check_sampling(run.max_new_tokens, 1.0, 1.0, positions)
    check_plugin_kwargs(args)
    check_writable(str(args.output_dir))


def parse_overrides(text: str | None) -> dict[str, Any]:
    """``n_layer=6,n_embd=384`` as a dict, values read as YAML scalars (numbers, booleans, strings)."""
    overrides: dict[str, Any] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--config_overrides item {item!r} is not field=value. Write e.g. num_hidden_layers=6,hidden_size=384."
            )
        overrides[key.strip()] = yaml.safe_load(value.strip())
    return overrides
