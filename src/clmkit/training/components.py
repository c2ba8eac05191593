"""The one assembly of a training run, shared by ``ClmTrainer`` and ``ClmLoop``.

Both paths build a run with ``assemble``: check the arguments, load the plugins, check every name
the run uses, let plugins adapt model and tokenizer (``clmkit_prepare_model``), check their sizes,
build loss, collator and chunker from the registries, prepare the data once (under
``main_process_first``, so one process per node tokenizes and the others read its cache) and count
tokens. The pieces of a training step that both paths run are here too: the optimizer over the
grouper's parameter groups, the exact evaluation body, the log values and the NaN guard. So a fix
made once reaches both paths, and each path's class holds only what differs.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, TrainerCallback, TrainerState
from transformers.trainer_utils import TrainOutput, enable_full_determinism, get_last_checkpoint, set_seed

from clmkit.args import ClmTrainingArguments
from clmkit.data.chunking import Chunker, ChunkStats
from clmkit.data.filters import FilterReport
from clmkit.data.preparation import PreparedData, chunker_names, prepare_datasets
from clmkit.errors import ClmkitError, ConfigError, DataError
from clmkit.hookspecs import Collator
from clmkit.plugins import Plugins
from clmkit.training.accounting import TokenCounter
from clmkit.training.flops import MfuMeter, flops_per_token, peak_tflops
from clmkit.training.forward import forward_for_loss
from clmkit.training.losses import Loss
from clmkit.training.metrics import ClmMetrics, sample_statistics, token_byte_lengths

logger = logging.getLogger(__name__)


class NonFiniteLossError(ClmkitError, RuntimeError):
    """The training loss became NaN or inf."""


@dataclass
class RunComponents:
    """Everything ``assemble`` builds for one run; both training paths keep it as their attributes."""

    plugins: Plugins
    loss: Loss
    collator: Collator
    chunker: Chunker
    data: PreparedData
    token_counter: TokenCounter
    callbacks: list[TrainerCallback]  # the plugins' (clmkit_callbacks), in plugin order
    byte_lengths: Tensor  # UTF-8 bytes per token id, for bits per byte


def assemble(
    model: nn.Module | None,
    tokenizer: Any,
    args: Any,
    train_dataset: Any,
    eval_dataset: Any,
    *,
    plugins: Sequence[object] = (),
    data_collator: Collator | None = None,
    who: str = "ClmTrainer",
) -> RunComponents:
    """Check and build one run from its arguments and plugins; prepare its data once.

    Every name the run uses is checked before any work; ``clmkit_prepare_model`` runs before the
    registries build anything, so a chunker sees the tokens a plugin added and the optimizer (built
    later by the training path) sees the resized model. ``data_collator`` replaces the registry's.
    """
    if not isinstance(args, ClmTrainingArguments):
        raise ConfigError(
            f"{who} needs ClmTrainingArguments, got {type(args).__name__}. "
            "Build them with clmkit.ClmTrainingArguments(...) (it accepts every TrainingArguments field)."
        )
    if tokenizer is None:
        raise ConfigError(f"{who} needs the tokenizer: pass processing_class=tokenizer.")
    enable_full_determinism(args.seed) if args.full_determinism else set_seed(args.seed)  # new rows start alike
    manager = Plugins(extra=plugins)
    evals = eval_dataset.values() if isinstance(eval_dataset, Mapping) else [eval_dataset]
    chunkers = sorted({name for d in [train_dataset, *evals] for name in chunker_names(d, args.chunker)})
    manager.check_names(args, chunkers)
    manager.prepare_model(model, tokenizer, args, chunkers)
    check_tokenizer_and_model(tokenizer, model, args.context_length)
    loss: Loss = manager.build("losses", args.loss, tokenizer=tokenizer, **args.plugin_kwargs("loss"))
    if data_collator is None:
        data_collator = manager.build("collators", args.collator, tokenizer, **args.plugin_kwargs("collator"))
    chunker = manager.build("chunkers", args.chunker, tokenizer, args.context_length, **args.plugin_kwargs("chunker"))
    with args.main_process_first(desc="preparing the datasets"):
        data = prepare_datasets(
            train_dataset, eval_dataset, tokenizer, args, chunker, plugins=manager, collator=data_collator
        )
    return RunComponents(
        plugins=manager,
        loss=loss,
        collator=data_collator,
        chunker=chunker,
        data=data,
        token_counter=TokenCounter(),
        callbacks=manager.callbacks(args),
        byte_lengths=token_byte_lengths(tokenizer),
    )


def check_tokenizer_and_model(tokenizer: Any, model: nn.Module | None, context_length: int) -> None:
    """Refuse a tokenizer without EOS, and a model whose vocabulary or positions are too small."""
    if tokenizer.eos_token_id is None:
        raise DataError(
            "the tokenizer has no EOS token; clmkit separates documents and pads with it. "
            "Set tokenizer.eos_token = '<|endoftext|>' (adding it to the vocabulary if needed)."
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is None:
        return
    embeddings = getattr(model, "get_input_embeddings", lambda: None)()
    vocab = getattr(embeddings, "num_embeddings", None)
    if vocab is not None and vocab < len(tokenizer):
        raise DataError(
            f"the model's vocabulary ({vocab} embeddings) is smaller than the tokenizer's ({len(tokenizer)} tokens): "
            "token ids past the embedding table would crash training. Build the config with "
            "vocab_size=len(tokenizer), or call model.resize_token_embeddings(len(tokenizer))."
        )
    config = getattr(model, "config", None)
    positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if positions is not None and positions < context_length:
        raise DataError(
            f"context_length {context_length} exceeds the model's {positions} positions. "
            f"Lower context_length, or build the config with n_positions >= {context_length}."
        )


# ---- the optimizer ---------------------------------------------------------------------------


def builds_own_parameter_list(optimizer_cls: Any, optimizer_kwargs: Mapping[str, Any]) -> bool:
    """Optimizers that build their own parameter list (GaLore, LOMO, factories): no grouper applies."""
    return not isinstance(optimizer_cls, type) or bool({"params", "model", "optimizer_dict"} & set(optimizer_kwargs))


def grouped_optimizer(
    plugins: Plugins, args: ClmTrainingArguments, model: nn.Module, optimizer_cls: type, optimizer_kwargs: dict
) -> torch.optim.Optimizer:
    """``optimizer_cls`` (AdamW or ``args.optim``) over the parameter groups of ``args.param_grouper``."""
    grouper = plugins.get("param_groupers", args.param_grouper).obj
    return optimizer_cls(grouper(model, args.weight_decay), **optimizer_kwargs)


# ---- evaluation ------------------------------------------------------------------------------


def evaluate_batches(
    model: nn.Module,
    batches: Iterable[Mapping[str, Tensor]],
    args: ClmTrainingArguments,
    accelerator: Any,
    byte_lengths: Tensor,
    context: Callable[[], AbstractContextManager[Any]],
    prefix: str = "eval",
) -> tuple[dict[str, float], int]:
    """Exact token-weighted metrics over ``batches``, and the number of samples seen.

    Every batch becomes four numbers per sample (``clmkit.training.metrics.sample_statistics``),
    gathered with ``gather_for_metrics`` (which drops the padded duplicates of an uneven last
    batch) into a ``ClmMetrics``; no logits are kept, so memory does not grow with the eval set.
    ``context`` is the path's autocast.
    """
    metric = ClmMetrics()
    samples = 0
    for batch in batches:
        with torch.no_grad(), context():
            inputs, _ = forward_for_loss(model, batch, args.chunked_loss, args.loss_chunk_size)
            rows = sample_statistics(inputs, byte_lengths)
        rows = accelerator.gather_for_metrics(rows)
        metric.add_rows(rows)
        samples += rows.shape[0]
    metrics = {f"{prefix}_{k}": v for k, v in (metric.compute() or {}).items()}
    if math.isnan(metrics[f"{prefix}_loss"]):
        logger.warning("evaluation saw no target token; its metrics are NaN")
    return metrics, samples


# ---- logging and the NaN guard ------------------------------------------------------------------


def training_log_values(
    counter: TokenCounter, meter: MfuMeter | None, model: nn.Module, args: ClmTrainingArguments, accelerator: Any
) -> tuple[dict[str, float], MfuMeter]:
    """Token counts, throughput and ``mfu`` for a training log line, and the MFU meter (built at the first call:
    the device's peak may need a measurement)."""
    values = counter.logs(accelerator)
    if meter is None:
        dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
        meter = MfuMeter(
            flops_per_token(accelerator.unwrap_model(model), args.context_length),
            args.peak_tflops or peak_tflops(accelerator.device, dtype),
            accelerator.num_processes,
        )
    values["mfu"] = meter(values["tokens_per_second"])
    return values, meter


def check_finite_loss(loss: Tensor, step: int, output_dir: str | None) -> None:
    """Stop a run whose loss became NaN or inf, naming the optimizer step and the last good checkpoint."""
    if torch.isfinite(loss):
        return
    last = get_last_checkpoint(output_dir) if output_dir and os.path.isdir(output_dir) else None
    raise NonFiniteLossError(
        f"the training loss became {loss.item()} at optimizer step {step}. "
        f"Last good checkpoint: {last or 'none saved yet'}. Lower the learning rate, enable gradient "
        "clipping (max_grad_norm), or use bf16 instead of fp16, then resume from that checkpoint."
    )


class TrainingRun(Protocol):
    """What the CLI (and a user's script) uses of either training path, ``ClmTrainer`` or ``ClmLoop``."""

    args: ClmTrainingArguments
    model: PreTrainedModel
    state: TrainerState
    accelerator: Any
    eval_dataset: Any
    token_counter: TokenCounter
    data_stats: dict[str, ChunkStats]
    filter_reports: dict[str, list[FilterReport]]

    def add_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> None: ...

    def train(self, resume_from_checkpoint: str | bool | None = None) -> TrainOutput: ...

    def evaluate(self, eval_dataset: Any = None, *, metric_key_prefix: str = "eval") -> dict[str, float]: ...

    def save_model(self, output_dir: str | None = None) -> None: ...
