"""The global order of examples (clmkit.data.order): split-independent, resumable at once, JSON positions."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from typing import Any

import pytest
import torch
from accelerate.data_loader import SeedableRandomSampler
from datasets import Dataset, IterableDataset

from clmkit import ClmTrainer
from clmkit.data.mixtures import Mixture, Source
from clmkit.data.order import BatchLayout, GlobalOrder
from clmkit.errors import DataError

READ: list[int] = []  # documents the test stream has yielded


def ids(examples: list[dict[str, Any]]) -> list[tuple[int, ...]]:
    """A collator that keeps each example's tokens, to compare orders."""
    return [tuple(e["input_ids"]) for e in examples]


def numbered(n: int) -> Dataset:
    return Dataset.from_dict({"input_ids": [[i, i + 1] for i in range(n)]})


def steps(order: GlobalOrder, count: int, batches: Any = None) -> list[list[tuple[int, ...]]]:
    """The examples of ``count`` steps of ``order`` (its micro-batches of each step, concatenated)."""
    batches = batches or iter(order)
    return [sum((next(batches) for _ in range(order.layout.accumulation)), []) for _ in range(count)]


def test_the_split_of_a_step_does_not_change_its_examples() -> None:
    data = numbered(70)
    one = GlobalOrder(data, ids, BatchLayout(per_device=8, accumulation=2, processes=1, rank=0), seed=3)
    two = [GlobalOrder(data, ids, BatchLayout(8, 1, 2, rank), seed=3) for rank in (0, 1)]
    assert len(one) == 4 * 2 and len(two[0]) == 4  # 70 // 16 steps; the last 6 examples are left out
    ones, twos = steps(one, 4), [steps(o, 4) for o in two]
    for k in range(4):
        assert Counter(ones[k]) == Counter(twos[0][k] + twos[1][k])
        assert ones[k] == twos[0][k] + twos[1][k]  # micro-batch m of process r is slot m * processes + r
    assert len({e for step in ones for e in step}) == 64  # no example twice within an epoch


def test_one_process_reads_in_the_trainers_seeded_order() -> None:
    data = numbered(40)
    order = GlobalOrder(data, ids, BatchLayout(4, 1, 1, 0), seed=7)
    sampler = SeedableRandomSampler(range(40), data_seed=7)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        expected = [(i, i + 1) for i in list(sampler)]
        assert [e for batch in order for e in batch] == expected  # one iteration: one epoch


def test_sequential_order_and_epochs() -> None:
    order = GlobalOrder(numbered(10), ids, BatchLayout(2, 2, 1, 0), seed=0, shuffle=False)
    first = [e for batch in order for e in batch]
    assert first == [(i, i + 1) for i in range(8)]
    assert order.position == {"epoch": 1, "steps_in_epoch": 0, "steps": 2, "stream": None}
    assert [e for batch in order for e in batch] == first  # epoch 2, in order again


def test_a_dataset_smaller_than_one_global_batch_is_refused() -> None:
    with pytest.raises(DataError, match="fewer than one global batch of 16"):
        GlobalOrder(numbered(10), ids, BatchLayout(8, 1, 2, 0), seed=0)
    order = GlobalOrder(numbered(10).to_iterable_dataset(), ids, BatchLayout(8, 1, 2, 0), seed=0)
    with pytest.raises(DataError, match="stream holds fewer examples than one global batch of 16"):
        next(iter(order))  # not a loop that never yields


def read(shards: list[range]) -> Any:
    for shard in shards:
        for i in shard:
            READ.append(i)
            yield {"input_ids": [i, i * 7 % 13]}


def stream(count: int = 5000) -> IterableDataset:
    """``count`` one-example documents in shards of 100 (as files would be), filtered and mapped lazily."""
    shards = [range(start, min(start + 100, count)) for start in range(0, count, 100)]
    data = IterableDataset.from_generator(read, gen_kwargs={"shards": shards})
    data = data.filter(lambda e: e["input_ids"][0] % 5 != 0)
    return data.map(lambda b: {"input_ids": [x + [0] for x in b["input_ids"]]}, batched=True, batch_size=100)


@pytest.mark.parametrize("mixed", [False, True])
def test_a_stream_resumes_from_its_position_without_reading_what_came_before(mixed: bool) -> None:
    def make() -> IterableDataset:
        if not mixed:
            return stream()
        from datasets import interleave_datasets

        return interleave_datasets([stream(), stream(3000)], probabilities=[0.3, 0.7], seed=5)

    layout = BatchLayout(8, 2, 1, 0)
    whole = GlobalOrder(make(), ids, layout, seed=0)
    reference = steps(whole, 150)

    first = GlobalOrder(make(), ids, layout, seed=0)
    assert steps(first, 120) == reference[:120]
    position = json.loads(json.dumps(first.position))  # plain JSON: what the checkpoint holds
    assert position["steps"] == 120 and position["stream"] is not None

    READ.clear()
    resumed = GlobalOrder(make(), ids, layout, seed=0)
    resumed.resume(position)
    batches = iter(resumed)
    first = next(batches) + next(batches)
    # 2,400 documents lie behind the checkpoint (a fifth are filtered out); to its first step a resume reads,
    # per source, the shard of 100 it stood in (datasets skips within a shard without mapping) and one
    # batch of 100 for the map, and what the step takes
    assert len(READ) <= (2 if mixed else 1) * 300 < 2400
    assert [first, *steps(resumed, 29, batches)] == reference[120:]


def test_resume_can_leave_placeholders_for_the_trainers_skip() -> None:
    order = GlobalOrder(numbered(40), ids, BatchLayout(4, 2, 1, 0), seed=1)
    reference = list(itertools.chain.from_iterable(iter(order)))
    order2 = GlobalOrder(numbered(40), ids, BatchLayout(4, 2, 1, 0), seed=1)
    batches = iter(order2)
    for _ in range(4):  # two steps
        next(batches)
    position = dict(order2.position)
    order3 = GlobalOrder(numbered(40), ids, BatchLayout(4, 2, 1, 0), seed=1)
    order3.resume(position, placeholders=True)
    items = list(order3)
    assert items[:4] == [None] * 4  # the micro-batches of the 2 steps the Trainer skips
    assert [e for batch in items[4:] for e in batch] == reference[16:]


def test_clmtrainer_trains_on_the_global_order(clmkit_args, clmkit_model, clmkit_tokenizer, tmp_path) -> None:
    """A mixture of two streams through ClmTrainer: its position is in the checkpoint's manifest, as JSON."""
    texts = [f"def f{i}(x):\n    return x * {i}\n" * 3 for i in range(200)]
    sources = [Source(Dataset.from_dict({"content": texts}).to_iterable_dataset(), chunker="packed")]
    sources += [Source(Dataset.from_dict({"content": texts[::-1]}).to_iterable_dataset(), weight=2.0)]
    args = clmkit_args(output_dir=str(tmp_path), max_steps=3, save_strategy="steps", save_steps=3)
    trainer = ClmTrainer(clmkit_model(), args, processing_class=clmkit_tokenizer, train_dataset=Mixture(sources))
    trainer.train()
    manifest = json.loads((tmp_path / "checkpoint-3" / "clmkit_checkpoint.json").read_text())
    assert manifest["position"]["data"] == trainer.train_order.position
    assert manifest["position"]["data"]["steps"] == 3 and manifest["position"]["data"]["stream"]
    assert torch.is_tensor(next(iter(trainer.get_train_dataloader()))["input_ids"])
