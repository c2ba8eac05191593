"""The global order of training examples: the same batches on any number of processes, resumed at once.

Every optimizer step takes the next ``global_batch = per_device x processes x accumulation`` examples
of one global sequence, fixed by the dataset and the random seed (``data_seed``, else ``seed``) alone.
Micro-batch ``m`` of the step on process ``r`` is the step's slot ``m * processes + r`` (``per_device``
examples each) — accelerate's round-robin sharding of batches — so 2 processes x batch 8 and 1 process
x batch 8 x accumulation 2 see the same 16 examples per step. A map-style dataset is read in the order
of ``torch.randperm(n)`` seeded with that seed plus the epoch (the Trainer's seeded sampler; ``sequential`` reads
it in order); an epoch's last, incomplete global batch is left out, so every process always has a
full micro-batch. A stream (``datasets.IterableDataset``: streamed, filtered, packed, mixed) is read
whole on every process, which keeps its share.

``GlobalOrder.position`` says where the data stands after the last step taken: the epoch, the global
batches done, and for a stream its ``IterableDataset.state_dict()`` (shard, offset, the pending
batch of a ``map`` and a mixture's RNG). It is plain JSON, saved in every checkpoint; ``resume``
restores it without reading what came before (a stream re-reads at most the batch of documents it
was in).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset, IterableDataset

from clmkit.errors import DataError

logger = logging.getLogger(__name__)

PLACEHOLDER = None  # what a resumed ClmTrainer's data skip discards in place of the batches already trained on


@dataclass(frozen=True)
class BatchLayout:
    """How one optimizer step's examples are split: per device, over processes and accumulated micro-batches."""

    per_device: int
    accumulation: int
    processes: int
    rank: int

    @property
    def global_batch(self) -> int:
        """Examples per optimizer step, all processes and micro-batches together."""
        return self.per_device * self.accumulation * self.processes

    def slots(self) -> list[int]:
        """This process's slots of a step, in micro-batch order: ``m * processes + rank``."""
        return [m * self.processes + self.rank for m in range(self.accumulation)]


POSITION_KEYS = ("epoch", "steps_in_epoch", "steps", "stream")


def start_position() -> dict[str, Any]:
    """The position of a run that has taken no step."""
    return dict.fromkeys(POSITION_KEYS, 0) | {"stream": None}


class GlobalOrder(torch.utils.data.IterableDataset):
    """This process's collated micro-batches of the global order, ``layout.accumulation`` per optimizer step.

    Iterating a map-style dataset yields the rest of the current epoch (an epoch is ``len(self)``
    micro-batches; a dataset smaller than one global batch is a ``DataError``); iterating a stream
    never ends (it reads the stream again when it runs out), the run's ``max_steps`` ends it.
    ``position`` is updated when a step's examples are taken, so after a step it says exactly what the
    step consumed.
    """

    def __init__(
        self,
        dataset: Dataset | IterableDataset,
        collate: Callable[[list[dict[str, Any]]], Mapping[str, Any]],
        layout: BatchLayout,
        seed: int,
        shuffle: bool = True,
    ) -> None:
        self.dataset, self.collate, self.layout, self.seed, self.shuffle = dataset, collate, layout, seed, shuffle
        self.streamed = isinstance(dataset, IterableDataset)
        if not self.streamed and len(dataset) < layout.global_batch:
            raise DataError(
                f"the train split holds {len(dataset)} examples, fewer than one global batch of {layout.global_batch} "
                f"({layout.per_device} per device x {layout.processes} processes x {layout.accumulation} accumulation "
                "steps). Use a smaller per_device_train_batch_size or gradient_accumulation_steps, or more text."
            )
        self.position = start_position()
        self._placeholders = 0
        self._stream: Iterator[dict[str, Any]] | None = None
        self._permutation: tuple[int, list[int]] | None = None
        if not self.streamed and len(dataset) % layout.global_batch:
            logger.info(
                "each epoch leaves out the last %d of %d examples (an incomplete global batch of %d)",
                len(dataset) % layout.global_batch,
                len(dataset),
                layout.global_batch,
            )

    # ---- sizes ------------------------------------------------------------------------------------

    def steps_per_epoch(self) -> int | None:
        """Optimizer steps in one epoch of a map-style dataset; ``None`` for a stream."""
        return None if self.streamed else len(self.dataset) // self.layout.global_batch

    def __len__(self) -> int:
        """Micro-batches per epoch on this process; a stream has no length (``TypeError``, as ``len`` expects)."""
        steps = self.steps_per_epoch()
        if steps is None:
            raise TypeError("a streamed dataset has no length")
        return steps * self.layout.accumulation

    # ---- resuming ---------------------------------------------------------------------------------

    def resume(self, position: Mapping[str, Any], placeholders: bool = False) -> None:
        """Continue from ``position`` (what ``position`` held after some step of a run with the same global batch).

        With ``placeholders``, the next iteration first yields ``PLACEHOLDER`` once per micro-batch the
        Trainer will skip when it resumes (those of the current epoch already trained on; for a stream,
        of the whole run), so its own skipping discards them without reading or collating anything.
        """
        self.position = dict(position)
        if self.streamed:
            if position["stream"] is not None:
                self.dataset.load_state_dict(position["stream"])
            self._stream = None
        done = position["steps"] if self.streamed else position["steps_in_epoch"]
        self._placeholders = done * self.layout.accumulation if placeholders else 0

    # ---- iterating --------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        yield from itertools.repeat(PLACEHOLDER, self._placeholders)
        self._placeholders = 0
        while True:
            epoch = self.position["epoch"]
            examples = self._next_step()
            if examples is None:  # a stream ran out: read it again, as its next epoch
                continue
            per_device = self.layout.per_device
            for slot in range(self.layout.accumulation):
                yield self.collate(examples[slot * per_device : (slot + 1) * per_device])
            if self.position["epoch"] != epoch:
                return  # a map-style epoch is over; the next iteration starts the next one

    def _next_step(self) -> list[dict[str, Any]] | None:
        """This process's examples of the next step (in micro-batch order); ``None`` when a stream runs out.

        The step is counted in ``position`` as it is taken; the last step of a map-style epoch moves
        ``position`` to the start of the next epoch, so a checkpoint made then resumes there.
        """
        if self.streamed:
            examples = self._next_stream_step()
            if examples is None:
                if self.position["steps_in_epoch"] == 0:
                    raise DataError(
                        f"the train stream holds fewer examples than one global batch of {self.layout.global_batch}, "
                        "so no step can be taken. Use a smaller per_device_train_batch_size or "
                        "gradient_accumulation_steps, or more text."
                    )
                self.position.update(epoch=self.position["epoch"] + 1, steps_in_epoch=0, stream=None)
                return None
        else:
            examples = self._next_dataset_step()
        self.position["steps_in_epoch"] += 1
        self.position["steps"] += 1
        if self.position["steps_in_epoch"] == self.steps_per_epoch():
            self.position.update(epoch=self.position["epoch"] + 1, steps_in_epoch=0)
        return examples

    def _next_dataset_step(self) -> list[dict[str, Any]]:
        order = self._order(self.position["epoch"])
        size, base = self.layout.per_device, self.position["steps_in_epoch"] * self.layout.global_batch
        indices = [order[base + slot * size + i] for slot in self.layout.slots() for i in range(size)]
        return self.dataset.__getitems__(indices)  # what a DataLoader would fetch

    def _order(self, epoch: int) -> list[int]:
        """The epoch's order of example indices: ``randperm`` seeded with the run's seed plus the epoch, as the
        Trainer's sampler."""
        if self._permutation is None or self._permutation[0] != epoch:
            n = len(self.dataset)
            if self.shuffle:
                order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
            else:
                order = list(range(n))
            self._permutation = (epoch, order)
        return self._permutation[1]

    def _next_stream_step(self) -> list[dict[str, Any]] | None:
        stream = self.dataset
        assert isinstance(stream, IterableDataset)
        if self._stream is None:
            stream.set_epoch(self.position["epoch"])
            self._stream = iter(stream)
        taken = list(itertools.islice(self._stream, self.layout.global_batch))
        if len(taken) < self.layout.global_batch:  # the stream ran out: its incomplete last global batch is left out
            self._stream = None
            return None
        self.position["stream"] = stream.state_dict()
        size = self.layout.per_device
        return [taken[slot * size + i] for slot in self.layout.slots() for i in range(size)]
