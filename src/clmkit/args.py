"""ClmTrainingArguments: TrainingArguments plus the names of the plugins a run uses."""

from __future__ import annotations

import json
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from clmkit.errors import ConfigError

_KWARG_FIELDS = ("chunker_kwargs", "collator_kwargs", "loss_kwargs", "optimizer_kwargs")
WSD = "wsd"  # lr_scheduler_type shorthand for transformers' warmup_stable_decay
# one document filter of ``filters``: its registered name and keyword arguments
FilterSpec = tuple[str, dict[str, Any]]


@dataclass
class ClmTrainingArguments(TrainingArguments):
    """Everything ``TrainingArguments`` offers, plus clmkit's data and plugin choices.

    Every choice is a name looked up in a registry (``clmkit plugins`` lists them); the matching
    ``*_kwargs`` are passed to the registered factory. ``HfArgumentParser`` parses it from flags
    (``--loss keytoken --loss_kwargs '{"alpha": 1.0}'``) and from YAML or JSON files.
    """

    context_length: int = field(default=128, metadata={"help": "Tokens per training example."})
    text_column: str = field(default="content", metadata={"help": "Column of the raw datasets holding the text."})
    chunker: str = field(
        default="concat",
        metadata={
            "help": "How documents become examples: 'concat' (join with EOS, cut blocks), 'packed' (whole documents "
            "per row, attending only to themselves) or 'overflow' (the course's)."
        },
    )
    chunker_kwargs: dict | str | None = field(default=None, metadata={"help": "JSON keyword arguments of the chunker."})
    filters: list | str | None = field(
        default=None,
        metadata={
            "help": "Document filters run before chunking, in order: names (exact_dedup,code_quality) or JSON "
            '\'["exact_dedup", {"keywords": {"words": ["pandas"]}}]\'.'
        },
    )
    collator: str = field(default="causal", metadata={"help": "How examples become batches."})
    collator_kwargs: dict | str | None = field(
        default=None, metadata={"help": "JSON keyword arguments of the collator."}
    )
    loss: str = field(default="cross_entropy", metadata={"help": "Loss name: 'cross_entropy' or 'keytoken'."})
    loss_kwargs: dict | str | None = field(
        default=None, metadata={"help": 'JSON keyword arguments of the loss, e.g. \'{"keywords": ["plt"]}\'.'}
    )
    param_grouper: str = field(
        default="decay_except_bias_and_norm",
        metadata={"help": "Which parameters get weight decay."},
    )
    optimizer: str = field(
        default="adamw",
        metadata={
            "help": "Optimizer name: 'adamw' (the class --optim names, fused AdamW by default) or 'muon' (Muon on "
            "the hidden matrices, AdamW on embeddings, head, norms and biases)."
        },
    )
    optimizer_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "JSON keyword arguments of the optimizer, e.g. '{\"muon_lr\": 0.01}' for muon."},
    )
    lr_scheduler_type: str = field(
        default="linear",
        metadata={
            "help": "The learning rate schedule: a transformers SchedulerType (linear, cosine, constant_with_warmup, "
            "...) or 'wsd' (warmup, stable, then decay over the last lr_decay_fraction of the steps; "
            "transformers' warmup_stable_decay)."
        },
    )
    lr_decay_fraction: float = field(
        default=0.2,
        metadata={"help": "Share of the optimizer steps the wsd schedule spends decaying (linearly, to 0)."},
    )
    chunked_loss: bool = field(
        default=True,
        metadata={"help": "Compute token losses chunk by chunk from hidden states, never holding all logits."},
    )
    loss_chunk_size: int | None = field(
        default=None,
        metadata={"help": "Tokens per chunk of the chunked loss (default: about 4M logits on CPU, 32M on a GPU)."},
    )
    peak_tflops: float | None = field(
        default=None,
        metadata={
            "help": "Peak TFLOP/s of one device for the logged MFU (default: a table of common GPUs by name, "
            "else measured once with a matmul)."
        },
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: chunkers may add columns their collator needs."}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenizing and chunking (datasets.map num_proc)."}
    )
    max_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Train until this many target tokens (all processes together) have been seen, instead of "
            "max_steps: the schedule spans the steps this takes (estimated from the data), and the run stops at the "
            "first step that reaches it, also after a resume."
        },
    )
    spike_guard: float | None = field(
        default=None,
        metadata={
            "help": "Skip the optimizer update of a step whose loss or gradient norm lies more than this many "
            "standard deviations above the mean of the last spike_guard_window steps (llm.c's rule; 3 to 5 are "
            "usual). Off by default."
        },
    )
    spike_guard_window: int = field(
        default=128, metadata={"help": "Steps of history the spike guard judges a step against."}
    )
    spike_guard_max_skips: int = field(
        default=5, metadata={"help": "Stop the run after this many updates skipped in a row by the spike guard."}
    )
    max_loss: float | None = field(
        default=None,
        metadata={
            "help": "Stop training when the training loss exceeds this, as when it becomes NaN: the run has "
            "diverged. Default: 1000 times the first training loss of the session (a loss plugin's objective has "
            "its own scale)."
        },
    )

    def __post_init__(self) -> None:
        for name in _KWARG_FIELDS:
            value = getattr(self, name)
            if value is None:
                value = {}
            elif isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as exc:
                    raise ConfigError(
                        f"--{name} is not valid JSON ({exc.msg} at column {exc.colno}): {value!r}. "
                        "Pass a JSON object, e.g. '{\"alpha\": 1.0}'."
                    ) from None
            if not isinstance(value, dict):
                raise ConfigError(f"{name} must be a JSON object (a mapping), got {value!r}.")
            setattr(self, name, value)
        self.filters = canonical_filters(self.filters)
        if self.lr_scheduler_type == WSD:
            self.lr_scheduler_type = "warmup_stable_decay"
        if not _is_number(self.lr_decay_fraction) or not 0 < self.lr_decay_fraction <= 1:
            raise ConfigError(
                f"lr_decay_fraction must be a share of the steps in (0, 1], got {self.lr_decay_fraction!r}. "
                "Pass e.g. --lr_decay_fraction 0.2."
            )
        if self.context_length < 2:
            raise ConfigError(f"context_length must be at least 2 tokens, got {self.context_length}.")
        if self.loss_chunk_size is not None and self.loss_chunk_size < 1:
            raise ConfigError(f"loss_chunk_size must be a positive number of tokens, got {self.loss_chunk_size}.")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ConfigError(f"peak_tflops must be positive (TFLOP/s of one device), got {self.peak_tflops}.")
        self._check_training_values()
        super().__post_init__()

    def _check_training_values(self) -> None:
        """Refuse step counts, batch sizes, learning rates and precisions that could only fail later (or silently)."""
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(
                f"max_steps must be a positive number of optimizer steps, or -1 to train by num_train_epochs; "
                f"got {self.max_steps}. Pass e.g. --max_steps 450."
            )
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}. Pass e.g. --{name} 8.")
        if not _is_number(self.learning_rate) or not math.isfinite(self.learning_rate) or self.learning_rate <= 0:
            raise ConfigError(
                f"learning_rate must be a finite number above 0, got {self.learning_rate!r}. Pass e.g. "
                "--learning_rate 5e-4."
            )
        if self.max_steps == -1 and (not _is_number(self.num_train_epochs) or not self.num_train_epochs > 0):
            raise ConfigError(
                f"num_train_epochs must be above 0 when max_steps is -1, got {self.num_train_epochs!r}. "
                "Pass e.g. --num_train_epochs 1, or --max_steps N."
            )
        if self.spike_guard is not None and (not _is_number(self.spike_guard) or not self.spike_guard > 0):
            raise ConfigError(
                f"spike_guard must be a number of standard deviations above 0, got {self.spike_guard!r}. "
                "Pass e.g. --spike_guard 4, or leave it unset (off)."
            )
        for name, least in (("spike_guard_window", 2), ("spike_guard_max_skips", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ConfigError(f"{name} must be a whole number of at least {least}, got {value!r}. Pass e.g. 8.")
        if self.max_tokens is not None:
            if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1:
                raise ConfigError(
                    f"max_tokens must be a whole number of target tokens above 0, got {self.max_tokens!r}. "
                    "Pass e.g. --max_tokens 5000000."
                )
            if self.max_steps > 0:
                raise ConfigError(
                    f"max_tokens ({self.max_tokens}) and max_steps ({self.max_steps}) both set how long to train. "
                    "Set one of them (max_steps=-1 with max_tokens)."
                )
        if self.max_loss is not None and (not _is_number(self.max_loss) or not self.max_loss > 0):
            raise ConfigError(
                f"max_loss must be a number above 0 (nats per target token), got {self.max_loss!r}. "
                "Leave it unset for the default, 1000 times the first training loss."
            )
        if self.fp16 and not _fp16_device_available(self.use_cpu):
            raise ConfigError(
                "fp16 needs a CUDA (or XPU/NPU) GPU, and this run is on the CPU, where fp16 training overflows "
                "and diverges. Drop --fp16 to train in fp32, or pass --bf16 instead."
            )

    def plugin_kwargs(self, name: str) -> dict[str, Any]:
        """The keyword arguments for one plugin kind (``chunker``, ``collator``, ``loss``), as a dict."""
        return dict(getattr(self, f"{name}_kwargs") or {})


def parse_filter_specs(value: str | Sequence[Any] | None) -> list[FilterSpec]:
    """``filters`` as ``[(name, kwargs), ...]``: from a list of names / ``{name: kwargs}``, JSON, or ``a,b``."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("[", "{")):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"filters is not valid JSON ({exc.msg} at column {exc.colno}): {value!r}. "
                    'Write e.g. \'["exact_dedup", {"keywords": {"words": ["pandas"]}}]\' or exact_dedup,code_quality.'
                ) from None
        else:
            value = [name.strip() for name in text.split(",") if name.strip()]
    if isinstance(value, Mapping):
        value = [{name: kwargs} for name, kwargs in value.items()]
    specs: list[FilterSpec] = []
    for item in value:
        if isinstance(item, str):
            specs.append((item, {}))
        elif isinstance(item, Mapping) and len(item) == 1:
            ((name, kwargs),) = item.items()
            if not isinstance(kwargs, Mapping):
                raise ConfigError(f"filter {name!r} needs a mapping of keyword arguments, got {kwargs!r}.")
            specs.append((str(name), dict(kwargs)))
        else:
            raise ConfigError(
                f"filters item {item!r} is neither a filter name nor a one-key mapping {{name: kwargs}}. "
                'Write e.g. ["exact_dedup", {"code_quality": {"max_line_length": 500}}].'
            )
    return specs


def canonical_filters(value: str | Sequence[Any] | None) -> list[str | dict[str, dict[str, Any]]]:
    """``filters`` in the form that round-trips through JSON and YAML: names, or ``{name: kwargs}`` when set."""
    return [name if not kwargs else {name: kwargs} for name, kwargs in parse_filter_specs(value)]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fp16_device_available(use_cpu: bool) -> bool:
    """Whether fp16 training has an accelerator to run on (CUDA, XPU or NPU), not the CPU."""
    if use_cpu:
        return False
    import torch

    if torch.cuda.is_available():
        return True
    for name in ("xpu", "npu", "mlu", "musa"):
        backend = getattr(torch, name, None)
        if backend is not None and getattr(backend, "is_available", lambda: False)():
            return True
    return False


# ---- plugin keyword arguments, checked against the factory's annotations before any work ----------------


def check_plugin_kwargs(args: ClmTrainingArguments, plugins: Any = None) -> None:
    """Check the keyword arguments of every plugin ``args`` names against the factory's signature and annotations.

    Runs before the tokenizer is trained or data is read, so ``"keywords": "def"`` (a string where a
    list of strings is annotated) or ``"alpha": "high"`` (a string for a float) is a ``ConfigError``
    naming the plugin, the argument and the type it takes. Works for any plugin whose factory annotates
    its parameters; unannotated (or unresolvable) parameters are left to the factory.
    """
    from clmkit.plugins import KIND_BY_NAME, Plugins, check_kwargs

    plugins = plugins or Plugins()
    leading = {"chunkers": 2, "collators": 1, "losses": 0, "optimizers": 3}  # positional arguments clmkit passes
    for kind_name, count in leading.items():
        kind = KIND_BY_NAME[kind_name]
        name = getattr(args, kind.option)
        factory = plugins.get(kind_name, name).obj
        kwargs = args.plugin_kwargs(kind.singular)
        what = f"{kind.singular} {name!r}"
        bound = {"tokenizer": None, **kwargs} if kind_name == "losses" else kwargs  # assemble passes tokenizer=
        check_kwargs(factory, what, (None,) * count, bound, f"{kind.singular}_kwargs")
        check_kwarg_types(factory, what, kwargs, f"{kind.singular}_kwargs")
    for name, kwargs in parse_filter_specs(args.filters):
        factory = plugins.get("filters", name).obj
        what = f"filter {name!r}"
        check_kwargs(factory, what, (), kwargs, "filters")
        check_kwarg_types(factory, what, kwargs, "filters")


def check_kwarg_types(factory: Callable[..., Any], what: str, kwargs: Mapping[str, Any], option: str) -> None:
    """A ConfigError for the first keyword argument whose value does not fit the factory's annotation."""
    target = factory.__init__ if isinstance(factory, type) else factory  # type: ignore[misc]
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # annotations naming types only a type checker imports: leave the check to the factory
        return
    for key, value in kwargs.items():
        if key in hints and not fits(value, hints[key]):
            raise ConfigError(
                f"{what} argument {key!r} must be {describe_type(hints[key])}, got {value!r}. Fix {option}."
            )


def require_type(value: Any, hint: Any, what: str, option: str) -> None:
    """A ConfigError when a plugin's keyword argument does not fit ``hint`` (for factories checking their own)."""
    if not fits(value, hint):
        raise ConfigError(f"{what} must be {describe_type(hint)}, got {value!r}. Fix {option}.")


def fits(value: Any, hint: Any) -> bool:
    """Whether a JSON/YAML value fits a type annotation (unknown annotations accept anything)."""
    if hint is Any or hint is object:
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return _is_number(value) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, set, frozenset, Sequence, typing.Sequence) or hint in (list, tuple):
        if isinstance(value, str | bytes | Mapping) or not isinstance(value, list | tuple | set | frozenset):
            return False
        inner = typing.get_args(hint)
        if origin is tuple and len(inner) == 2 and inner[1] is Ellipsis:
            inner = inner[:1]
        if len(inner) != 1:
            return True
        return all(fits(item, inner[0]) for item in value)
    if origin in (dict, Mapping) or hint is dict:
        return isinstance(value, Mapping)
    return True


def describe_type(hint: Any) -> str:
    """An annotation in words, for messages: 'a list of strings', 'a number', 'one of 'a', 'b''."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        parts = [describe_type(h) for h in typing.get_args(hint) if h is not type(None)]
        return " or ".join(parts) + (" (or null)" if type(None) in typing.get_args(hint) else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(hint))
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string", dict: "a mapping"}
    if hint in names:
        return names[hint]
    if origin in (list, tuple, set, frozenset, Sequence, typing.Sequence):
        inner = typing.get_args(hint)
        if inner and inner[0] in names:
            plural = {bool: "booleans", int: "whole numbers", float: "numbers", str: "strings", dict: "mappings"}
            return f"a list of {plural[inner[0]]}"
        return "a list"
    return getattr(hint, "__name__", str(hint))
