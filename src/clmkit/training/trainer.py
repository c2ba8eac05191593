"""ClmTrainer: a transformers ``Trainer`` whose data, loss, grouping and callbacks are plugins.

It is assembled like ``ClmLoop`` (``clmkit.training.components.assemble``) and keeps only what is
the Trainer's own: where the accumulation window is fetched (``get_batch_samples``), the loss hook
(``compute_loss``), the optimizer hook, checkpoint saving and the evaluation loop, each calling the
shared pieces.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from datasets import Dataset, IterableDataset
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, Trainer
from transformers.trainer import TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, EvalLoopOutput, SaveStrategy, TrainOutput

from clmkit.args import ClmTrainingArguments
from clmkit.data.order import GlobalOrder
from clmkit.training.checkpoint import (
    CheckpointWriter,
    read_checkpoint,
    resolve_resume,
    rotate_checkpoints,
    run_settings,
)
from clmkit.training.components import (
    CompletedRunStop,
    DivergenceGuard,
    assemble,
    build_optimizer,
    build_scheduler,
    builds_own_parameter_list,
    evaluate_batches,
    param_groups,
    trainer_builds_optimizer,
    training_log_values,
)
from clmkit.training.flops import MfuMeter
from clmkit.training.forward import forward_for_loss
from clmkit.training.losses import loss_from_inputs, window_normalizer
from clmkit.training.spikes import skip_next_update, spike_guard
from clmkit.training.train_data import global_order, order_loader, token_budget


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
    args: ClmTrainingArguments  # Trainer's attributes, narrowed: assemble() refuses other arguments,
    model: PreTrainedModel  # and clmkit reads the config and embeddings of a transformers model

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
        run = assemble(
            model, processing_class, args, train_dataset, eval_dataset, plugins=plugins, data_collator=data_collator
        )
        self.plugins, self.loss, self.chunker = run.plugins, run.loss, run.chunker
        self.data_stats, self.filter_reports = run.data.stats, run.data.filter_reports
        self.token_counter, self._byte_lengths = run.token_counter, run.byte_lengths
        self._mfu: MfuMeter | None = None
        self._divergence = DivergenceGuard(args.max_loss)
        self.train_order: GlobalOrder | None = None  # built by get_train_dataloader
        self._resume_data: dict[str, Any] | None = None  # the data position train() resumes from
        callbacks = [*(kwargs.pop("callbacks", None) or []), run.token_counter, CompletedRunStop(), *run.callbacks]
        self.spike_guard = spike_guard(args)
        if self.spike_guard is not None:
            callbacks.append(self.spike_guard)
        self._window_loss: torch.Tensor | None = None  # this process's loss of the accumulation window, for the guard
        self._schedule_steps, budget = token_budget(  # under max_tokens: the steps the schedule spans
            args, run.data.train, args.world_size, run.token_counter, lambda: self.accelerator
        )
        callbacks += budget
        super().__init__(
            model=model,
            args=args,
            data_collator=run.collator,
            train_dataset=run.data.train,
            eval_dataset=run.data.eval,
            processing_class=processing_class,
            callbacks=callbacks,
            **kwargs,
        )

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
        for b in batch_samples:
            self.token_counter.count(b)
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

    def _forward(self, model: nn.Module, inputs: Mapping[str, torch.Tensor], want_hidden: bool) -> Any:
        """Run the model without labels; capture the final hidden states instead of logits if wanted."""
        hidden = want_hidden and self.args.chunked_loss
        return forward_for_loss(model, inputs, hidden, self.args.loss_chunk_size)

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        """One micro-step; a NaN or inf loss stops training with the step and last checkpoint named."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._divergence.check(loss, self.state.global_step + 1, self.args.output_dir)
        if self.spike_guard is not None:
            self._window_loss = loss if self._window_loss is None else self._window_loss + loss
        return loss

    def _get_grad_norm(self, model: nn.Module, grad_norm: Any = None) -> Any:
        """The Trainer's gradient norm of the step; with the spike guard, also whether to skip its update (the same
        decision on every process: the window's loss is averaged over them, the norm is global already)."""
        grad_norm = super()._get_grad_norm(model, grad_norm)
        if self.spike_guard is not None and self._window_loss is not None:
            loss = self.accelerator.reduce(self._window_loss, "mean").item()
            self._window_loss = None
            step = self.state.global_step + 1
            skip = self.spike_guard.should_skip(step, loss, float(grad_norm))
            skip_next_update(self.optimizer, skip)
        return grad_norm

    # ---- checkpoints: written whole or not at all, checked before anything is loaded (clmkit.training.checkpoint)

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
    ) -> TrainOutput:
        """``Trainer.train``; a checkpoint to resume from must be complete, undamaged and made with this run's
        settings. ``True`` resumes from the newest complete checkpoint of ``output_dir``."""
        self._resume_data = None
        if resume_from_checkpoint:
            folder, position = self._check_resume(resume_from_checkpoint)
            resume_from_checkpoint, self._resume_data = str(folder), position["data"]
        return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval)

    def _run_epoch(self, *args: Any, **kwargs: Any) -> None:
        """The Trainer's epoch, not begun once the run is complete (``CompletedRunStop`` on a finished checkpoint)."""
        if not self.control.should_training_stop:
            super()._run_epoch(*args, **kwargs)

    def check_resume(self, checkpoint: str | Path | bool) -> str:
        """The checkpoint folder ``train(resume_from_checkpoint=checkpoint)`` would resume from, checked.

        ``True`` (or ``"last"``) means the newest complete checkpoint of ``output_dir``. Raises
        ``CheckpointError`` if it is missing, incomplete, damaged or made with other settings; reads only the
        folder's files and manifest, loads nothing and writes nothing.
        """
        return str(self._check_resume(checkpoint)[0])

    def _check_resume(self, checkpoint: str | Path | bool) -> tuple[Path, dict[str, Any]]:
        folder, _ = resolve_resume(checkpoint, str(self.args.output_dir))
        return folder, read_checkpoint(folder, self._checkpoint_settings())

    # ---- training data: the global order (clmkit.data.order), resumed from the checkpoint's position

    def get_train_dataloader(self) -> DataLoader:
        """This process's micro-batches of the run's global order, which does not depend on the number of processes.

        When resuming, the order continues from the checkpoint's data position at once; the batches the Trainer
        then skips are placeholders, so nothing before the checkpoint is read, tokenized or collated again.
        """
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        self.train_order = global_order(self.train_dataset, self.data_collator, self.args, self.accelerator)
        if self._resume_data is not None:
            self.train_order.resume(self._resume_data, placeholders=True)
        return order_loader(self.train_order, self.args, self.args.device)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """``Trainer._save_checkpoint``'s pieces, written into ``.partial-checkpoint-N``, completed (manifest
        last) and renamed to ``checkpoint-N``; only then are older checkpoints (clmkit's own) rotated away."""
        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        self.token_counter.fold(self.accelerator)  # the checkpoint keeps exact counts (every process reduces)
        run_dir = self._get_output_dir(trial=trial)
        step = self.state.global_step
        writer = CheckpointWriter(run_dir, step, self.args.should_save, self.accelerator.wait_for_everyone)
        partial = writer.begin()
        try:
            self.save_model(str(partial), _internal_call=True)
            writer.reached("model written")
            self._note_best_checkpoint(run_dir, step)
            if not self.args.save_only_model:
                self._save_optimizer_and_scheduler(str(partial))
                self._save_scaler(str(partial))
                writer.reached("optimizer and scheduler written")
                self._save_rng_state(str(partial))
                writer.reached("rng state written")
            if self.args.should_save:
                self._store_callback_states()
                self.state.save_to_json(str(partial / TRAINER_STATE_NAME))
            assert self.train_order is not None, "checkpoints are saved while training"
            position = {"global_step": step, "data": self.train_order.position}
            final = writer.commit(position, self._checkpoint_settings())
        except (Exception, KeyboardInterrupt):  # not a kill: the unfinished folder goes
            writer.abort()
            raise
        if self.args.push_to_hub:
            self._push_from_checkpoint(str(final))
        if self.args.should_save:
            rotate_checkpoints(run_dir, self.args.save_total_limit, keep=[final, self.state.best_model_checkpoint])

    def _note_best_checkpoint(self, run_dir: str, step: int) -> None:
        """``state.best_model_checkpoint``, as ``Trainer._save_checkpoint`` sets it (this step's is not renamed yet)."""
        best = self.state.best_global_step
        if self.args.save_strategy in [SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST] and best:
            folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{best}")
            if best == step or os.path.exists(folder):
                self.state.best_model_checkpoint = folder

    def _store_callback_states(self) -> None:
        """Put the state of every ``ExportableState`` callback (``TokenCounter``, ...) into ``self.state``."""
        saved: dict[str, Any] = self.state.stateful_callbacks  # type: ignore[assignment]  # a dict after __post_init__
        for cb in [cb for cb in self.callback_handler.callbacks + [self.control] if isinstance(cb, ExportableState)]:
            name = cb.__class__.__name__
            if isinstance(saved.get(name), list):
                saved[name].append(cb.state())
            else:
                saved[name] = cb.state()

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """``Trainer._save`` without ``training_args.bin``: a pickle, and clmkit writes none (the CLI's
        ``training_args.yaml`` is the record). A ``training_args.bin`` that was already there is left as it was."""
        folder = Path(output_dir if output_dir is not None else str(self.args.output_dir))
        target = folder / TRAINING_ARGS_NAME
        aside = folder / f".{TRAINING_ARGS_NAME}.clmkit-aside"
        kept = self.args.should_save and target.is_file()
        if kept:
            os.replace(target, aside)
        try:
            super()._save(output_dir, state_dict)
        finally:
            if self.args.should_save:
                target.unlink(missing_ok=True)  # the pickle Trainer._save just wrote
                if kept:
                    os.replace(aside, target)

    def _checkpoint_settings(self) -> dict[str, dict[str, Any]]:
        model = self.accelerator.unwrap_model(self.model)
        return run_settings(model, self.args, self.processing_class, self.accelerator.num_processes)

    # ---- optimizer --------------------------------------------------------------------------

    def create_optimizer(self, model: PreTrainedModel | None = None) -> torch.optim.Optimizer:
        """The optimizer ``args.optimizer`` names over the parameter groups of ``args.param_grouper``; the class
        of ``Trainer(optimizer_cls_and_kwargs=...)`` when one was given."""
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            if self.optimizer_cls_and_kwargs is not None:
                optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
                if not builds_own_parameter_list(optimizer_cls, optimizer_kwargs):
                    self.optimizer = optimizer_cls(param_groups(self.plugins, self.args, opt_model), **optimizer_kwargs)
            elif not trainer_builds_optimizer(self.args, opt_model):  # else Trainer's own path
                self.optimizer = build_optimizer(self.plugins, self.args, opt_model)
        return super().create_optimizer(model)

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """``args.lr_scheduler_type`` as ``ClmLoop`` builds it (``wsd`` included)."""
        if self.lr_scheduler is None:
            optimizer = optimizer or self.optimizer
            assert optimizer is not None, "create_optimizer runs first"
            steps = self._schedule_steps or num_training_steps
            self.lr_scheduler = build_scheduler(self.args, optimizer, steps)  # type: ignore[assignment]
            self._created_lr_scheduler = True
        return cast(torch.optim.lr_scheduler.LRScheduler, self.lr_scheduler)

    # ---- logging and evaluation ---------------------------------------------------------------

    def _load_callback_state(self) -> None:
        """Trainer may replace stateful callbacks by restored copies: keep ``token_counter`` the one that counts."""
        super()._load_callback_state()
        self.token_counter = next(
            cb for cb in self.callback_handler.callbacks if isinstance(cb, type(self.token_counter))
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add token counts, throughput and model FLOPs utilization (``mfu``) to training logs."""
        if "loss" in logs:
            values, self._mfu = training_log_values(
                self.token_counter, self._mfu, self.model, self.args, self.accelerator
            )
            logs.update(values)
        super().log(logs, start_time)

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        """Exact token-weighted evaluation (``clmkit.training.components.evaluate_batches``): no logits kept."""
        model = self._wrap_model(self.model, training=False)
        if len(self.accelerator._models) == 0 and model is self.model:
            model = self.accelerator.prepare_model(model, evaluation_mode=True)
        model.eval()
        batches = (self._prepare_inputs(inputs) for inputs in dataloader)
        metrics, samples = evaluate_batches(
            model,
            batches,
            self.args,
            self.accelerator,
            self._byte_lengths,
            self.compute_loss_context_manager,
            metric_key_prefix,
            self.loss,
            self.token_counter if self.state.global_step else None,  # an eval during or after training
        )
        # no predictions are kept, as in Trainer.evaluation_loop with prediction_loss_only
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=samples)  # type: ignore[arg-type]
