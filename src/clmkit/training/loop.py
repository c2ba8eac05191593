"""The Accelerate manual loop: the course recipe's second path, over the same assembly as ClmTrainer.

``ClmLoop.train`` is the whole loop, readable top to bottom. It fixes the course loop: the LR
schedule counts optimizer steps; the logged loss is per target token; gradients are all-reduced
once per accumulation window (``accelerator.accumulate``); the loss normalizer spans the window
and every process, so a step equals one big batch; evaluation is token-weighted and gathered
without the padded duplicates. It runs unchanged under ``torchrun`` and ``accelerate launch``
(DDP, FSDP or DeepSpeed come from the accelerate config, see docs/distributed.md).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedType, GradientAccumulationPlugin, send_to_device
from datasets import Dataset, IterableDataset
from torch import nn
from torch.utils.data import DataLoader, SequentialSampler
from transformers import PreTrainedModel, TrainerCallback
from transformers.integrations import get_reporting_integration_callbacks
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import (
    CallbackHandler,
    DefaultFlowCallback,
    ExportableState,
    PrinterCallback,
    ProgressCallback,
    TrainerControl,
    TrainerState,
)
from transformers.trainer_pt_utils import AcceleratorConfig
from transformers.trainer_utils import (
    TrainOutput,
    enable_full_determinism,
    set_seed,
)

from clmkit.args import ClmTrainingArguments
from clmkit.data.order import GlobalOrder
from clmkit.errors import ConfigError
from clmkit.training import components
from clmkit.training.checkpoint import (
    CheckpointWriter,
    read_checkpoint,
    resolve_resume,
    rotate_checkpoints,
    run_settings,
)
from clmkit.training.flops import MfuMeter
from clmkit.training.forward import forward_for_loss
from clmkit.training.hub import upload_output_folder
from clmkit.training.loop_options import trainer_only_options
from clmkit.training.loop_state import load_loop_state, save_loop_state
from clmkit.training.losses import loss_from_inputs, window_normalizer
from clmkit.training.spikes import spike_guard
from clmkit.training.train_data import global_order, order_loader, token_budget

logger = logging.getLogger(__name__)


class ClmLoop:
    """Train like ``ClmTrainer`` with a loop you can read: same arguments, plugins, data, loss and output folder.

    ``train()`` runs the loop, ``evaluate()`` the exact evaluation, ``save_model()`` writes the model
    folder. When to log, evaluate and save follows the same ``TrainingArguments`` as the Trainer
    (its ``DefaultFlowCallback`` decides), and the plugins' ``TrainerCallback``s run in both paths.
    Options only the Trainer implements raise ``ConfigError`` naming them (``trainer_only_options``).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        args: ClmTrainingArguments,
        processing_class: Any,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | Mapping[str, Dataset] | None = None,
        plugins: Sequence[object] = (),
        callbacks: Sequence[TrainerCallback] = (),
    ) -> None:
        unsupported = trainer_only_options(args) if isinstance(args, ClmTrainingArguments) else []
        if unsupported:
            raise ConfigError(
                f"the Accelerate loop does not implement these options: {'; '.join(unsupported)}. "
                "Change them as said, or train with ClmTrainer (clmkit train without --loop accelerate)."
            )
        run = components.assemble(
            model, processing_class, args, train_dataset, eval_dataset, plugins=plugins, who="ClmLoop"
        )
        enable_full_determinism(args.seed) if args.full_determinism else set_seed(args.seed)  # as Trainer.__init__
        self.args, self.model, self.processing_class = args, model, processing_class
        self.plugins, self.loss, self.collator, self.chunker = run.plugins, run.loss, run.collator, run.chunker
        self.train_dataset, self.eval_dataset = run.data.train, run.data.eval
        self.data_stats, self.filter_reports = run.data.stats, run.data.filter_reports
        self.token_counter, self._byte_lengths = run.token_counter, run.byte_lengths
        self._mfu: MfuMeter | None = None
        self._divergence = components.DivergenceGuard(args.max_loss)
        self.spike_guard = spike_guard(args)
        if components.trainer_builds_optimizer(args, model):
            raise ConfigError(
                f"the Accelerate loop does not implement optim {args.optim!r}: it builds its own parameter list. "
                "Use adamw_torch (or another plain torch optimizer), or train with ClmTrainer."
            )
        accelerator_config = cast(
            AcceleratorConfig, args.accelerator_config
        )  # an AcceleratorConfig after __post_init__
        self.accelerator = Accelerator(
            # --bf16 / --fp16 decide; else the accelerate config's mixed_precision, as for the Trainer
            mixed_precision="bf16" if args.bf16 else "fp16" if args.fp16 else None,
            dynamo_backend=args.torch_compile_backend if args.torch_compile else None,  # compiled in prepare()
            cpu=args.use_cpu,
            gradient_accumulation_plugin=GradientAccumulationPlugin(
                num_steps=args.gradient_accumulation_steps, sync_with_dataloader=False
            ),
            dataloader_config=DataLoaderConfiguration(  # the Trainer's, for eval (training reads the global order)
                split_batches=accelerator_config.split_batches,
                dispatch_batches=accelerator_config.dispatch_batches,
                even_batches=accelerator_config.even_batches,
                use_seedable_sampler=accelerator_config.use_seedable_sampler,
                data_seed=args.data_seed,
            ),
        )
        self._schedule_steps, guards = token_budget(  # under max_tokens: the steps the schedule spans
            args, self.train_dataset, self.accelerator.num_processes, run.token_counter, lambda: self.accelerator
        )
        if self.spike_guard is not None:
            guards.append(self.spike_guard)  # a callback too: its history is in every checkpoint
        reporting = [cb() for cb in get_reporting_integration_callbacks(args.report_to)]
        printer = PrinterCallback() if args.disable_tqdm else ProgressCallback()
        self.callback_handler = CallbackHandler(
            [DefaultFlowCallback(), run.token_counter, components.CompletedRunStop(), *guards, *run.callbacks]
            + [*callbacks, *reporting, printer],
            model,
            processing_class,
            None,
            None,
        )
        self.state = TrainerState()
        self.control = TrainerControl()
        self.model_wrapped: nn.Module | None = None
        self.optimizer: Any = None  # set by train()
        self.lr_scheduler: Any = None
        self.train_order: GlobalOrder | None = None

    def add_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> None:
        """Add a ``TrainerCallback`` (an instance or a class), as ``Trainer.add_callback`` does."""
        self.callback_handler.add_callback(callback)

    # ---- the loop --------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None) -> TrainOutput:
        """Train for ``max_steps`` (or ``num_train_epochs``); resume exactly from a ``checkpoint-N`` folder.

        ``resume_from_checkpoint=True`` takes the newest complete checkpoint in ``output_dir``. At the end
        the model and tokenizer are saved to ``output_dir`` and pushed when ``push_to_hub``.
        """
        args, acc = self.args, self.accelerator
        if self.train_dataset is None:
            raise ConfigError("ClmLoop.train needs a train_dataset.")
        if args.gradient_checkpointing:  # transformers mirrors activation_checkpointing into its old name
            enable_checkpointing(self.model, cast(Mapping[str, Any] | None, args.gradient_checkpointing_kwargs))
        optimizer = components.build_optimizer(self.plugins, args, self.model)
        model, optimizer = acc.prepare(self.model, optimizer)
        self.model_wrapped = model
        order = self.train_order = global_order(self.train_dataset, self.collator, args, acc)
        dataloader = order_loader(order, args, acc.device)
        steps_per_epoch = order.steps_per_epoch()
        max_steps = args.max_steps
        if max_steps <= 0:
            if steps_per_epoch is None:
                raise ConfigError("the train dataset has no length (an IterableDataset): set max_steps.")
            max_steps = math.ceil(args.num_train_epochs * steps_per_epoch)
        # counted in optimizer steps, stepped once per optimizer step (the course built it in micro-batches)
        scheduler = components.build_scheduler(args, optimizer, self._schedule_steps or max_steps)
        # saved by clmkit as JSON, not registered with accelerate (which would pickle it and unpickle it unsafely)
        self.optimizer, self.lr_scheduler = optimizer, scheduler
        self.callback_handler.optimizer, self.callback_handler.lr_scheduler = optimizer, scheduler
        self._init_state(max_steps)
        if resume_from_checkpoint:
            self._resume(resume_from_checkpoint)
        first_step, start = self.state.global_step, time.time()
        self._tr_loss = torch.zeros((), device=acc.device)
        self._logged_loss, self._last_logged = 0.0, self.state.global_step
        model.train()
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        if args.eval_on_start:
            self.evaluate()
        while not self.control.should_training_stop:
            batches, taken = iter(dataloader), 0  # the rest of the epoch (a stream: every step to come)
            self.control = self.callback_handler.on_epoch_begin(args, self.state, self.control)
            while window := _next_window(batches, args.gradient_accumulation_steps):
                taken += 1
                self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
                window_loss = self._accumulate(model, window)
                self._tr_loss += window_loss
                # here acc.sync_gradients is True: every process holds the window's all-reduced gradients
                grad_norm = self._clip(model)
                skip = self._spike(window_loss, grad_norm)
                self.control = self.callback_handler.on_pre_optimizer_step(args, self.state, self.control)
                if not skip:
                    optimizer.step()
                    self.control = self.callback_handler.on_optimizer_step(args, self.state, self.control)
                learning_rate = optimizer.param_groups[0]["lr"]  # the rate this step used
                if not skip and not acc.optimizer_step_was_skipped:  # a spike, an fp16 overflow
                    scheduler.step()
                optimizer.zero_grad()
                self.state.global_step += 1
                position = order.position
                if steps_per_epoch:
                    self.state.epoch = position["epoch"] + position["steps_in_epoch"] / steps_per_epoch
                self.control = self.callback_handler.on_step_end(args, self.state, self.control)
                self._log_evaluate_save(grad_norm, learning_rate)
                if self.control.should_epoch_stop or self.control.should_training_stop:
                    break
            if taken == 0:
                logger.warning("the train dataloader yielded no batch; stopping at step %d", self.state.global_step)
                self.control.should_training_stop = True
            self.control = self.callback_handler.on_epoch_end(args, self.state, self.control)
            self._log_evaluate_save(None, optimizer.param_groups[0]["lr"])
        steps = self.state.global_step - first_step
        training_loss = (self._logged_loss + acc.reduce(self._tr_loss, "sum").item()) / max(steps, 1)
        metrics = {"train_runtime": round(time.time() - start, 4), "train_loss": training_loss}
        self.log(dict(metrics))
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        self.save_model()
        if args.push_to_hub:
            self.push_to_hub()
        return TrainOutput(self.state.global_step, training_loss, metrics)

    def _clip(self, model: nn.Module) -> torch.Tensor | None:
        """Clip the gradients to ``max_grad_norm``; return their norm before clipping (also without clipping when
        the spike guard needs it)."""
        limit = self.args.max_grad_norm or (math.inf if self.spike_guard is not None else 0)
        return self.accelerator.clip_grad_norm_(model.parameters(), limit) if limit else None

    def _spike(self, window_loss: torch.Tensor, grad_norm: torch.Tensor | None) -> bool:
        """Whether the spike guard skips this step's update: the window's loss over all processes, the global norm."""
        if self.spike_guard is None or grad_norm is None:
            return False
        loss = self.accelerator.reduce(window_loss, "sum").item()
        return self.spike_guard.should_skip(self.state.global_step + 1, loss, float(grad_norm))

    def _accumulate(self, model: nn.Module, window: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """Forward and backward over one accumulation window; return this process's share of its loss.

        Each micro-batch's loss is its loss sum over the normalizer of the whole window on all
        processes, so the gradients of the window equal those of one big batch.
        """
        acc = self.accelerator
        total = window_normalizer(self.loss, window, acc)
        acc.gradient_accumulation_steps = len(window)  # the last window of an epoch may be shorter
        acc.step = 0  # accumulate() counts micro-steps from here and syncs on the window's last one
        hidden = self.loss.consumes == "hidden_states" and self.args.chunked_loss
        window_loss = torch.zeros((), device=acc.device)
        for batch in window:
            batch = send_to_device(batch, acc.device)
            self.token_counter.count(batch)
            with acc.accumulate(model):  # no gradient all-reduce before the window's last micro-batch
                with acc.autocast():
                    inputs, _ = forward_for_loss(model, batch, hidden, self.args.loss_chunk_size)
                    loss = loss_from_inputs(self.loss, inputs, total)
                # DDP averages gradients over processes, and backward() divides by the accumulation
                # steps (DeepSpeed when asked to): undo both, the window normalizer already did that job
                if acc.distributed_type == DistributedType.DEEPSPEED:
                    acc.backward(loss * acc.num_processes, scale_wrt_gas=False)
                else:
                    acc.backward(loss * acc.num_processes * len(window))
            window_loss += loss.detach()
        self._divergence.check(window_loss, self.state.global_step + 1, self.args.output_dir)
        return window_loss

    def _log_evaluate_save(self, grad_norm: torch.Tensor | None, learning_rate: float) -> None:
        """Act on what the callbacks decided for this step: log, evaluate, save a checkpoint."""
        if self.control.should_log and self.state.global_step > self._last_logged:
            steps = self.state.global_step - self._last_logged
            loss = self.accelerator.reduce(self._tr_loss, "sum").item()  # per target token, all processes
            self._tr_loss.zero_()
            self._logged_loss += loss
            self._last_logged = self.state.global_step
            logs = {"loss": loss / steps, "learning_rate": learning_rate}
            if grad_norm is not None:
                logs["grad_norm"] = float(grad_norm)
            self.log(logs)
        if self.control.should_evaluate:
            self.evaluate()
        if self.control.should_save:
            self._save_checkpoint()
            self.control = self.callback_handler.on_save(self.args, self.state, self.control)

    def log(self, logs: dict[str, float]) -> None:
        """Record ``logs`` in ``state.log_history`` (with token counts on training lines) and tell the callbacks."""
        if "loss" in logs:
            values, self._mfu = components.training_log_values(
                self.token_counter, self._mfu, self.model, self.args, self.accelerator
            )
            logs.update(values)
        if self.state.epoch is not None:
            logs["epoch"] = self.state.epoch
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self.control = self.callback_handler.on_log(self.args, self.state, self.control, logs)

    # ---- evaluation ------------------------------------------------------------------------------

    def evaluate(
        self, eval_dataset: Dataset | Mapping[str, Dataset] | None = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Exact token-weighted metrics over the eval set(s): ``eval_loss``, ``eval_perplexity``, ...

        The body is the Trainer's (``clmkit.training.components.evaluate_batches``), so every process
        gets the single-process value.
        """
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if dataset is None:
            raise ConfigError("ClmLoop.evaluate needs an eval_dataset.")
        if isinstance(dataset, Mapping):
            return {
                k: v for name, d in dataset.items() for k, v in self.evaluate(d, f"{metric_key_prefix}_{name}").items()
            }
        acc = self.accelerator
        model = self.model_wrapped if self.model_wrapped is not None else self.model.to(acc.device)
        was_training = model.training
        model.eval()
        batches = acc.prepare(self._eval_dataloader(dataset))
        counter = self.token_counter if self.state.global_step else None  # an eval during or after training
        metrics, _ = components.evaluate_batches(
            model, batches, self.args, acc, self._byte_lengths, acc.autocast, metric_key_prefix, self.loss, counter
        )
        model.train(was_training)
        self.log(dict(metrics))
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        return metrics

    # ---- data ------------------------------------------------------------------------------------

    def _eval_dataloader(self, dataset: Dataset | IterableDataset) -> DataLoader:
        """Built as the Trainer builds its own, in order; ``accelerator.prepare`` shards it over the processes."""
        args = self.args
        return DataLoader(
            dataset,
            batch_size=args.per_device_eval_batch_size,
            sampler=None if isinstance(dataset, torch.utils.data.IterableDataset) else SequentialSampler(dataset),
            collate_fn=self.collator,
            drop_last=args.dataloader_drop_last,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
        )

    # ---- state, checkpoints, saving -------------------------------------------------------------

    def _init_state(self, max_steps: int) -> None:
        self.state = TrainerState(stateful_callbacks=self._stateful_callbacks())
        self.state.compute_steps(self.args, max_steps)
        self.state.max_steps = max_steps
        self.state.train_batch_size = self.args.per_device_train_batch_size
        self.state.is_local_process_zero = self.accelerator.is_local_main_process
        self.state.is_world_process_zero = self.accelerator.is_main_process

    def _stateful_callbacks(self) -> list[Any]:  # TrainerState takes callbacks and the TrainerControl
        """The callbacks whose state a checkpoint keeps (e.g. ``TokenCounter``, which reads it back on resume)."""
        return [cb for cb in [*self.callback_handler.callbacks, self.control] if isinstance(cb, ExportableState)]

    def _settings(self) -> dict[str, dict[str, Any]]:
        model = self.accelerator.unwrap_model(self.model)
        return run_settings(model, self.args, self.processing_class, self.accelerator.num_processes)

    def check_resume(self, checkpoint: str | Path | bool) -> str:
        """The checkpoint folder ``train(resume_from_checkpoint=checkpoint)`` would resume from, checked.

        ``True`` (or ``"last"``) means the newest complete checkpoint of ``output_dir``. Raises
        ``CheckpointError`` if it is missing, incomplete, damaged or made with other settings; reads only the
        folder's files and manifest, loads nothing and writes nothing.
        """
        return str(self._check_resume(checkpoint)[0])

    def _check_resume(self, checkpoint: str | Path | bool) -> tuple[Path, dict[str, Any]]:
        folder, _ = resolve_resume(checkpoint, str(self.args.output_dir))
        return folder, read_checkpoint(folder, self._settings())

    def _save_checkpoint(self) -> None:
        """``checkpoint-N``: model and optimizer (accelerate), LR scheduler and RNG states (JSON), tokenizer,
        config, trainer state, and the data position (``clmkit.data.order``).

        Written as ``.partial-checkpoint-N``, completed (manifest last) and renamed, then older checkpoints are
        rotated away: a killed run always leaves a complete checkpoint (``clmkit.training.checkpoint``).
        """
        acc = self.accelerator
        self.token_counter.fold(acc)  # the checkpoint keeps exact counts (every process reduces)
        step, output_dir = self.state.global_step, str(self.args.output_dir)
        writer = CheckpointWriter(output_dir, step, acc.is_main_process, acc.wait_for_everyone)
        partial = writer.begin()
        try:
            save_loop_state(acc, partial, self.lr_scheduler)
            writer.reached("model and optimizer written")
            if acc.is_main_process:
                acc.unwrap_model(self.model).config.save_pretrained(partial)
                self.processing_class.save_pretrained(partial)
                writer.reached("config, tokenizer and scheduler written")
                self.state.stateful_callbacks = TrainerState(
                    stateful_callbacks=self._stateful_callbacks()
                ).stateful_callbacks
                self.state.save_to_json(str(partial / TRAINER_STATE_NAME))
            assert self.train_order is not None, "checkpoints are saved while training"
            final = writer.commit({"data": self.train_order.position}, self._settings())
        except (Exception, KeyboardInterrupt):  # not a kill: the unfinished folder goes
            writer.abort()
            raise
        if acc.is_main_process:
            rotate_checkpoints(output_dir, self.args.save_total_limit, keep=[final])
        acc.wait_for_everyone()

    def _resume(self, checkpoint: str | bool) -> None:
        """Check, then load a checkpoint: model, optimizer, scheduler, RNG states, trainer state and the data
        position, from which the global order continues without reading what came before."""
        folder, position = self._check_resume(checkpoint)  # raises before anything is loaded
        load_loop_state(self.accelerator, folder, self.lr_scheduler)
        assert self.train_order is not None, "train() builds the order first"
        self.train_order.resume(position["data"])
        self.state = TrainerState.load_from_json(os.path.join(folder, TRAINER_STATE_NAME))
        self.state.is_local_process_zero = self.accelerator.is_local_main_process
        self.state.is_world_process_zero = self.accelerator.is_main_process
        logger.info("resumed from %s at step %d (data position %s)", folder, self.state.global_step, position["data"])

    def save_model(self, output_dir: str | None = None) -> None:
        """Model (safetensors), config, generation config and tokenizer: ``ClmTrainer.save_model``'s layout, with no
        ``training_args.bin`` (a pickle; the CLI's ``training_args.yaml`` is the record).

        Every process must call it: FSDP and ZeRO-3 gather the full weights here; the main process writes.
        """
        acc = self.accelerator
        output_dir = output_dir or str(self.args.output_dir)
        model = self.model_wrapped if self.model_wrapped is not None else self.model
        state_dict = acc.get_state_dict(model)
        if acc.is_main_process:
            acc.unwrap_model(model).save_pretrained(output_dir, state_dict=state_dict)
            self.processing_class.save_pretrained(output_dir)
        acc.wait_for_everyone()

    def push_to_hub(self) -> None:
        """Upload ``output_dir`` without its checkpoints to ``hub_model_id`` (default: the folder's name)."""
        if self.accelerator.is_main_process:
            upload_output_folder(self.args)
        self.accelerator.wait_for_everyone()


def _next_window(batches: Iterator[dict[str, torch.Tensor]], size: int) -> list[dict[str, torch.Tensor]]:
    """The next accumulation window: ``size`` micro-batches, fewer at the end of an epoch, none after it."""
    return [batch for _, batch in zip(range(size), batches, strict=False)]


def enable_checkpointing(model: nn.Module, options: Mapping[str, Any] | None) -> None:
    """Turn on activation checkpointing as the Trainer does: ``every_n_layers`` and ``offload`` go to the model's
    method, the other options to ``torch.utils.checkpoint``; transformers before ``activation_checkpointing_enable``
    get ``gradient_checkpointing_enable``."""
    kwargs = dict(options or {})
    layers, offload = kwargs.pop("every_n_layers", 1), kwargs.pop("offload", False)
    enable: Any = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs or None, every_n_layers=layers, offload=offload)
    else:
        cast(Any, model).gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs or None)
