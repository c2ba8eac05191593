"""ClmTrainer: a transformers ``Trainer`` whose data, loss, grouping and callbacks are plugins."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import EvalLoopOutput, get_last_checkpoint

from clmkit.args import ClmTrainingArguments
from clmkit.builtins.callbacks import TokenCounter
from clmkit.chunking import ChunkStats, chunk_dataset, chunk_stats, tokenize_documents
from clmkit.cross_entropy import token_statistics
from clmkit.errors import ClmkitError, ConfigError, DataError
from clmkit.heads import hidden_states_only, output_linear
from clmkit.losses import Loss, LossInputs, loss_from_inputs
from clmkit.metrics import per_sample_statistics, summarize, token_byte_lengths
from clmkit.plugins import Plugins

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
        self.loss: Loss = self.plugins.build("losses", args.loss, tokenizer=tokenizer, **args.plugin_kwargs("loss"))
        if data_collator is None:
            data_collator = self.plugins.build("collators", args.collator, tokenizer, **args.plugin_kwargs("collator"))
        self.chunker = self.plugins.build(
            "chunkers", args.chunker, tokenizer, args.context_length, **args.plugin_kwargs("chunker")
        )
        self.data_stats: dict[str, ChunkStats] = {}
        train_dataset = self.prepare_dataset(train_dataset, tokenizer, args, "train")
        if isinstance(eval_dataset, Mapping):
            eval_dataset = {k: self.prepare_dataset(v, tokenizer, args, f"eval_{k}") for k, v in eval_dataset.items()}
        else:
            eval_dataset = self.prepare_dataset(eval_dataset, tokenizer, args, "eval")
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

    # ---- data -------------------------------------------------------------------------------

    def prepare_dataset(
        self, dataset: Dataset | IterableDataset | None, tokenizer: Any, args: ClmTrainingArguments, split: str
    ) -> Dataset | IterableDataset | None:
        """Tokenize and chunk a raw text dataset once; tokenized examples that fit pass through."""
        if dataset is None:
            return None
        columns = dataset.column_names or []
        if "input_ids" in columns and args.text_column not in columns:
            if isinstance(dataset, IterableDataset) or _max_length(dataset) <= args.context_length:
                return dataset  # already examples (e.g. from `clmkit prepare`)
            tokenized = dataset.select_columns(["input_ids"])
        elif isinstance(dataset, IterableDataset):
            if args.text_column not in columns:
                raise DataError(
                    f"the {split} dataset has no text column {args.text_column!r}; its columns are {columns}. "
                    "Set text_column to the column that holds the text."
                )
            text = args.text_column

            def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
                return {"input_ids": tokenizer(batch[text], add_special_tokens=False)["input_ids"]}

            return dataset.map(encode, batched=True, remove_columns=columns).map(
                self.chunker, batched=True, remove_columns=["input_ids"]
            )
        else:
            tokenized = tokenize_documents(dataset, tokenizer, args.text_column, args.preprocessing_num_workers)
        chunked = chunk_dataset(tokenized, self.chunker, args.preprocessing_num_workers)
        stats = chunk_stats(tokenized, chunked, self.chunker)
        self.data_stats[split] = stats
        logger.info("%s data: %s", split, stats.as_dict())
        if stats.examples == 0:
            raise DataError(
                f"the {split} corpus yields no training example with chunker {args.chunker!r}: "
                f"{stats.documents_too_short} of {stats.documents} documents are shorter than the context length "
                f"{args.context_length} ({stats.tokens} tokens in all). Use chunker 'concat' (joins documents), "
                "a smaller context_length, or more text."
            )
        return chunked

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
        total = sum(self.loss.normalizer(b).to(device) for b in batch_samples)
        if self.args.world_size > 1:
            total = self.accelerator.gather(total.reshape(1)).sum()
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
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        head = output_linear(self.accelerator.unwrap_model(model))
        if want_hidden and self.args.chunked_loss and head is not None:
            with hidden_states_only(head) as captured:
                outputs = model(**model_inputs)
            return LossInputs(inputs, hidden_states=captured["hidden_states"], lm_head=head), outputs
        outputs = model(**model_inputs)
        return LossInputs(inputs, logits=outputs.logits), outputs

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
        """Add token counts and throughput to training logs."""
        if "loss" in logs:
            logs.update(self._token_counter().logs(self.accelerator))
        super().log(logs, start_time)

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        """Exact token-weighted evaluation: per-sample sums gathered once, no logits kept."""
        model = self._wrap_model(self.model, training=False)
        if len(self.accelerator._models) == 0 and model is self.model:
            model = self.accelerator.prepare_model(model, evaluation_mode=True)
        model.eval()
        totals = torch.zeros(4, dtype=torch.float64, device=self.args.device)
        samples = 0
        head = output_linear(self.accelerator.unwrap_model(model))
        for inputs in dataloader:
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.compute_loss_context_manager():
                loss_inputs, _ = self._forward(model, inputs, want_hidden=True)
                targets = loss_inputs.targets
                if loss_inputs.hidden_states is not None:
                    hidden = loss_inputs.hidden_states[:, :-1].reshape(-1, loss_inputs.hidden_states.shape[-1])
                    losses, correct = token_statistics(hidden, head.weight, head.bias, targets.reshape(-1))
                else:
                    logits = loss_inputs.logits[:, :-1]
                    losses = torch.nn.functional.cross_entropy(
                        logits.float().transpose(1, 2), targets, reduction="none"
                    )
                    correct = logits.argmax(-1) == targets
                rows = per_sample_statistics(
                    losses.view_as(targets), correct.view_as(targets), targets, self._byte_lengths
                )
            rows = self.accelerator.gather_for_metrics(rows)
            totals += rows.sum(0)
            samples += rows.shape[0]
        metrics = summarize(totals.cpu(), metric_key_prefix)
        if math.isnan(metrics[f"{metric_key_prefix}_loss"]):
            logger.warning("evaluation saw no target token; its metrics are NaN")
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=samples)


def _max_length(dataset: Dataset) -> int:
    import pyarrow.compute as pc

    if len(dataset) == 0:
        return 0
    return int(pc.max(pc.list_value_length(dataset.data.column("input_ids"))).as_py())


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
