"""ClmTrainingArguments: TrainingArguments plus the names of the plugins a run uses."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from clmkit.errors import ConfigError

_KWARG_FIELDS = ("chunker_kwargs", "collator_kwargs", "loss_kwargs")
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
        if self.context_length < 2:
            raise ConfigError(f"context_length must be at least 2 tokens, got {self.context_length}.")
        if self.loss_chunk_size is not None and self.loss_chunk_size < 1:
            raise ConfigError(f"loss_chunk_size must be a positive number of tokens, got {self.loss_chunk_size}.")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ConfigError(f"peak_tflops must be positive (TFLOP/s of one device), got {self.peak_tflops}.")
        super().__post_init__()

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
