"""The training data of both paths: the run's global order of examples (``clmkit.data.order``) and its loader."""

from __future__ import annotations

from typing import Any

import torch
from datasets import Dataset, IterableDataset
from torch.utils.data import DataLoader

from clmkit.args import ClmTrainingArguments
from clmkit.data.order import BatchLayout, GlobalOrder


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
