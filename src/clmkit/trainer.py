"""ClmTrainer: a transformers ``Trainer`` whose data, loss, grouping and callbacks are plugins."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, EvalLoopOutput, get_last_checkpoint

from clmkit.args import ClmTrainingArguments
from clmkit.builtins.callbacks import TokenCounter
from clmkit.checkpoint import find_checkpoint, read_checkpoint, run_settings, write_checkpoint_state
from clmkit.chunking import Chunker, ChunkStats
from clmkit.errors import ClmkitError, ConfigError, DataError
from clmkit.filters import FilterReport
from clmkit.flops import MfuMeter, flops_per_token, peak_tflops
from clmkit.heads import forward_for_loss
from clmkit.losses import Loss, loss_from_inputs
from clmkit.metrics import ClmMetrics, sample_statistics, token_byte_lengths
from clmkit.plugins import Plugins
from clmkit.preparation import prepare_datasets

logger = logging.getLogger(__name__)


class NonFiniteLossError(ClmkitError, RuntimeError):
    """The training loss became NaN or inf."""


class ClmTrainer(Trainer):
    """A drop-in ``Trainer`` for causal language modelling from raw text.

    It takes a raw text dataset (column ``args.text_column``) or an already tokenized one, prepares
    it once with the chunker named in ``args.chunker``, batches with ``args.collator``, computes
    ``args.loss`` normalized over the whole accumulation window and all processes, groups
    parameters with ``args.param_grouper``, and adds the plugins' callbacks. Evaluation is exact
    and token-weighted: ``eval_loss``, ``eval_perplexity``, ``eval_bits_per_byte``,
    ``eval_accuracy``. ``plugins`` adds plugin objects to the ones found through entry points.
    """

    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: nn.Module | None = None,
        args: ClmTrainingArguments | None = None,
        data_collator: Any = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | IterableDataset | Mapping[str, Dataset] | None = None,
        processing_class: Any = None,
        plugins: Sequence[object] = (),
        **kwargs: Any,
    ) -> None:
        if args is None:
            args = ClmTrainingArguments(output_dir="clmkit_output")
        if not isinstance(args, ClmTrainingArguments):
            raise ConfigError(
                f"ClmTrainer needs ClmTrainingArguments, got {type(args).__name__}. "
                "Build them with clmkit.ClmTrainingArguments(...) (it accepts every TrainingArguments field)."
            )
        if processing_class is None:
            raise ConfigError("ClmTrainer needs the tokenizer: pass processing_class=tokenizer.")
        tokenizer = processing_class
        check_tokenizer_and_model(tokenizer, model, args.context_length)
        self.plugins = Plugins(extra=plugins)
        self.loss, data_collator, self.chunker = build_components(self.plugins, args, tokenizer, data_collator)
        self.data_stats: dict[str, ChunkStats] = {}
        self.filter_reports: dict[str, list[FilterReport]] = {}
        train_dataset, eval_dataset = prepare_datasets(
            train_dataset,
            eval_dataset,
            tokenizer,
            args,
            self.chunker,
            self.data_stats,
            plugins=self.plugins,
            collator=data_collator,
            filter_reports=self.filter_reports,
        )
        callbacks = [*(kwargs.pop("callbacks", None) or []), TokenCounter(), *self.plugins.callbacks(args)]
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            callbacks=callbacks,
            **kwargs,
        )
        self._byte_lengths = token_byte_lengths(tokenizer)

    # ---- loss -------------------------------------------------------------------------------

    def get_batch_samples(
        self, epoch_iterator: Iterator, num_batches: int, device: torch.device
    ) -> tuple[list, torch.Tensor | None]:
        """Fetch one accumulation window and its loss normalizer, summed over all processes."""
        batch_samples: list = []
        for _ in range(num_batches):
            try:
                batch_samples.append(next(epoch_iterator))
            except StopIteration:
                break
        if not batch_samples:
            return batch_samples, None
        total = window_normalizer(self.loss, batch_samples, self.accelerator)
        counter = self._token_counter()
        for b in batch_samples:
            counter.count(b)
        return batch_samples, total

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The registered loss over this micro-batch, divided by the window's normalizer.

        With ``num_items_in_batch`` (the normalizer of the accumulation window over all processes)
        the result is scaled by the number of processes, because DDP averages gradients.
        """
        loss_inputs, outputs = self._forward(model, inputs, self.loss.consumes == "hidden_states")
        if num_items_in_batch is None:
            loss = loss_from_inputs(self.loss, loss_inputs, self.loss.normalizer(inputs))
        else:
            loss = loss_from_inputs(self.loss, loss_inputs, torch.as_tensor(num_items_in_batch))
            if model.training and self.accelerator.num_processes > 1:
                loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def _forward(self, model: nn.Module, inputs: Mapping[str, torch.Tensor], want_hidden: bool):
        """Run the model without labels; capture the final hidden states instead of logits if wanted."""
        hidden = want_hidden and self.args.chunked_loss
        return forward_for_loss(model, inputs, hidden, self.args.loss_chunk_size)

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        """One micro-step; a NaN or inf loss stops training with the step and last checkpoint named."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss):
            last = get_last_checkpoint(self.args.output_dir) if self.args.output_dir else None
            raise NonFiniteLossError(
                f"the training loss became {loss.item()} at optimizer step {self.state.global_step + 1}. "
                f"Last good checkpoint: {last or 'none saved yet'}. Lower the learning rate, enable gradient "
                "clipping (max_grad_norm), or use bf16 instead of fp16, then resume from that checkpoint."
            )
        return loss

    # ---- checkpoints: checked before anything is loaded (clmkit.checkpoint) -----------------------

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        """``Trainer.train``; a checkpoint to resume from must be complete and made with this run's settings."""
        if resume_from_checkpoint:
            resume_from_checkpoint = find_checkpoint(resume_from_checkpoint, self.args.output_dir)
            read_checkpoint(resume_from_checkpoint, self._checkpoint_settings())
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()  # every process has written its RNG state
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            write_checkpoint_state(folder, {"global_step": self.state.global_step}, self._checkpoint_settings())

    def _checkpoint_settings(self) -> dict[str, dict[str, Any]]:
        model = self.accelerator.unwrap_model(self.model)
        return run_settings(model, self.args, self.processing_class, self.accelerator.num_processes)

    # ---- optimizer --------------------------------------------------------------------------

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """AdamW (or ``args.optim``) over the parameter groups of ``args.param_grouper``."""
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs or self.get_optimizer_cls_and_kwargs(
                self.args, opt_model
            )
            # optimizers that build their own parameter list (GaLore, LOMO, factories) keep Trainer's path
            if isinstance(optimizer_cls, type) and not {"params", "model", "optimizer_dict"} & set(optimizer_kwargs):
                grouper = self.plugins.get("param_groupers", self.args.param_grouper).obj
                self.optimizer = optimizer_cls(grouper(opt_model, self.args.weight_decay), **optimizer_kwargs)
        return super().create_optimizer(model)

    # ---- logging and evaluation ---------------------------------------------------------------

    def _token_counter(self) -> TokenCounter:
        # found by type each time: resuming replaces callback objects with restored copies
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, TokenCounter))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add token counts, throughput and model FLOPs utilization (``mfu``) to training logs."""
        if "loss" in logs:
            logs.update(self._token_counter().logs(self.accelerator))
            logs["mfu"] = self._mfu_meter()(logs["tokens_per_second"])
        super().log(logs, start_time)

    def _mfu_meter(self) -> MfuMeter:
        meter = getattr(self, "_mfu", None)  # built at the first log: the peak may need a measurement
        if meter is None:
            dtype = torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else torch.float32
            meter = self._mfu = MfuMeter(
                flops_per_token(self.accelerator.unwrap_model(self.model), self.args.context_length),
                self.args.peak_tflops or peak_tflops(self.args.device, dtype),
                self.accelerator.num_processes,
            )
        return meter

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        """Exact token-weighted evaluation: per-sample sums gathered over processes, no logits kept.

        Every batch becomes four numbers per sample (``clmkit.metrics.sample_statistics``), gathered
        with ``gather_for_metrics`` (which drops the padded duplicates of an uneven last batch) into
        a ``ClmMetrics``; memory does not grow with the eval set beyond those rows.
        """
        model = self._wrap_model(self.model, training=False)
        if len(self.accelerator._models) == 0 and model is self.model:
            model = self.accelerator.prepare_model(model, evaluation_mode=True)
        model.eval()
        metric = ClmMetrics()
        samples = 0
        for inputs in dataloader:
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.compute_loss_context_manager():
                loss_inputs, _ = self._forward(model, inputs, want_hidden=True)
                rows = sample_statistics(loss_inputs, self._byte_lengths)
            rows = self.accelerator.gather_for_metrics(rows)
            metric.add_rows(rows)
            samples += rows.shape[0]
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in metric.compute().items()}
        if math.isnan(metrics[f"{metric_key_prefix}_loss"]):
            logger.warning("evaluation saw no target token; its metrics are NaN")
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=samples)


# ---- shared with the Accelerate loop (clmkit.loop) ------------------------------------------------


def build_components(
    plugins: Plugins, args: ClmTrainingArguments, tokenizer: Any, data_collator: Any = None
) -> tuple[Loss, Any, Chunker]:
    """The loss, collator (unless ``data_collator`` is given) and chunker that ``args`` names, from the registries."""
    loss: Loss = plugins.build("losses", args.loss, tokenizer=tokenizer, **args.plugin_kwargs("loss"))
    if data_collator is None:
        data_collator = plugins.build("collators", args.collator, tokenizer, **args.plugin_kwargs("collator"))
    chunker = plugins.build("chunkers", args.chunker, tokenizer, args.context_length, **args.plugin_kwargs("chunker"))
    return loss, data_collator, chunker


def window_normalizer(loss: Loss, batches: Sequence[Mapping[str, torch.Tensor]], accelerator: Any) -> torch.Tensor:
    """The loss normalizer of one accumulation window: summed over its micro-batches and over all processes."""
    total = sum(loss.normalizer(b).to(accelerator.device) for b in batches)
    if accelerator.num_processes > 1:
        total = accelerator.gather(total.reshape(1)).sum()
    return total


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
    embeddings = model.get_input_embeddings()
    vocab = getattr(embeddings, "num_embeddings", None)
    if vocab is not None and vocab < len(tokenizer):
        raise DataError(
            f"the model's vocabulary ({vocab} embeddings) is smaller than the tokenizer's ({len(tokenizer)} tokens): "
            "token ids past the embedding table would crash training. Build the config with "
            "vocab_size=len(tokenizer), or call model.resize_token_embeddings(len(tokenizer))."
        )
    positions = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if positions is not None and positions < context_length:
        raise DataError(
            f"context_length {context_length} exceeds the model's {positions} positions. "
            f"Lower context_length, or build the config with n_positions >= {context_length}."
        )
