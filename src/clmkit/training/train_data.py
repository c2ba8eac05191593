"""The training data of both paths: the run's global order of examples (``clmkit.data.order``), its loader,
and a token budget (``max_tokens``)."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from typing import Any

import pyarrow.compute as pc
import torch
from datasets import Dataset, IterableDataset
from torch.utils.data import DataLoader
from transformers import TrainerCallback
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from clmkit.args import ClmTrainingArguments
from clmkit.data.order import BatchLayout, GlobalOrder
from clmkit.errors import DataError
from clmkit.training.accounting import TokenCounter

logger = logging.getLogger(__name__)


def global_order(
    dataset: Dataset | IterableDataset, collator: Any, args: ClmTrainingArguments, accelerator: Any
) -> GlobalOrder:
    """This process's share of the run's global order: seeded with ``data_seed`` (else ``seed``) as the Trainer's
    sampler is, in order when ``train_sampling_strategy`` is ``sequential``."""
    layout = BatchLayout(
        per_device=args.per_device_train_batch_size,
        accumulation=args.gradient_accumulation_steps,
        processes=accelerator.num_processes,
        rank=accelerator.process_index,
    )
    seed = args.data_seed if args.data_seed is not None else args.seed
    return GlobalOrder(dataset, collator, layout, seed, shuffle=args.train_sampling_strategy != "sequential")


def order_loader(order: GlobalOrder, args: ClmTrainingArguments, device: torch.device) -> DataLoader:
    """A ``DataLoader`` over ``order``'s collated micro-batches, read in this process (no workers), so the order's
    position is exactly what the steps consumed; memory is pinned for a GPU when ``dataloader_pin_memory``.

    It has a generator of its own: a ``DataLoader`` draws a seed from its generator whenever it starts an
    iteration, which from the global RNG would shift the dropout of a resumed run against the uninterrupted one.
    """
    pin = args.dataloader_pin_memory and device.type == "cuda"
    return DataLoader(order, batch_size=None, num_workers=0, pin_memory=pin, generator=torch.Generator())


def global_batch_size(args: ClmTrainingArguments, num_processes: int) -> int:
    """Examples per optimizer step, all processes and accumulated micro-batches together."""
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * num_processes


BUDGET_CAP = 1.1  # max_steps under a token budget: the estimated steps, plus this share, so the budget decides
SAMPLED_EXAMPLES = 256  # examples of a stream read to estimate its target tokens per example


def targets_per_example(dataset: Dataset | IterableDataset) -> float:
    """Target tokens per example as clmkit's collators count them: every token but the first of each document
    (a row without ``position_ids`` is one document). Exact for a map-style dataset; a stream's first examples."""
    if isinstance(dataset, IterableDataset):
        rows = list(itertools.islice(dataset, SAMPLED_EXAMPLES))
        tokens = sum(len(r["input_ids"]) for r in rows)
        starts = sum(list(r["position_ids"]).count(0) if "position_ids" in r else 1 for r in rows)
        return (tokens - starts) / max(len(rows), 1)
    table = dataset.data
    tokens = pc.sum(pc.list_value_length(table.column("input_ids"))).as_py() or 0
    if "position_ids" in dataset.column_names:
        starts = pc.sum(pc.equal(pc.list_flatten(table.column("position_ids")), 0)).as_py() or 0
    else:
        starts = len(dataset)
    return (tokens - starts) / max(len(dataset), 1)


def token_budget_steps(args: ClmTrainingArguments, dataset: Dataset | IterableDataset, num_processes: int) -> int:
    """The optimizer steps ``args.max_tokens`` target tokens take, estimated from the data's target density."""
    assert args.max_tokens is not None
    per_step = global_batch_size(args, num_processes) * targets_per_example(dataset)
    if per_step <= 0:
        raise DataError("the train data holds no target token (every label is masked), so max_tokens is never reached.")
    return max(1, math.ceil(args.max_tokens / per_step))


def token_budget(
    args: ClmTrainingArguments,
    dataset: Dataset | IterableDataset | None,
    num_processes: int,
    counter: TokenCounter,
    accelerator: Callable[[], Any],
) -> tuple[int | None, list[TrainerCallback]]:
    """Under ``max_tokens``: the steps the schedule spans and the callback that stops the run; ``max_steps`` is set
    ``BUDGET_CAP`` above those steps, so the budget ends the run. Without a budget: ``(None, [])``."""
    if args.max_tokens is None or dataset is None:
        return None, []
    steps = token_budget_steps(args, dataset, num_processes)
    args.max_steps = math.ceil(steps * BUDGET_CAP)
    return steps, [TokenBudget(counter, args.max_tokens, accelerator)]


class TokenBudget(TrainerCallback):
    """Stops training at the first step after which ``max_tokens`` target tokens (all processes) have been seen.

    It folds the token counter every step (an all-reduce of three numbers), so the stop is exact and, since
    the counts are checkpointed, the same after a resume. ``accelerator`` returns the run's accelerator
    (the Trainer makes its own after its callbacks are given).
    """

    def __init__(self, counter: TokenCounter, max_tokens: int, accelerator: Callable[[], Any]) -> None:
        self.counter, self.max_tokens, self.accelerator = counter, max_tokens, accelerator

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.counter.targets >= self.max_tokens:  # resumed from the checkpoint that reached the budget
            control.should_training_stop = True

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.counter.fold(self.accelerator())
        if self.counter.targets >= self.max_tokens and not control.should_training_stop:
            control.should_training_stop = True  # and, as at max_steps, a last evaluation and checkpoint
            control.should_evaluate |= args.eval_strategy == IntervalStrategy.STEPS
            control.should_save |= args.save_strategy == SaveStrategy.STEPS

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.counter.targets < self.max_tokens and state.global_step >= state.max_steps:
            logger.warning(
                "the run reached max_steps %d with %d of max_tokens %d target tokens: the data holds fewer target "
                "tokens per step than estimated",
                state.global_step,
                self.counter.targets,
                self.max_tokens,
            )
