"""Streaming: chunkers and filters on IterableDataset give what they give on a Dataset, lazily, and train."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset, IterableDataset, load_dataset

from clmkit import ClmTrainer
from clmkit.data.streaming import stream_files
from clmkit.errors import ConfigError, DataError


@pytest.fixture
def jsonl_stream(tmp_path, clmkit_corpus):
    """The test corpus (plus a duplicate) as two jsonl shards, loaded with load_dataset(streaming=True)."""
    rows = [{"content": t, "path": f"f{i}.py"} for i, t in enumerate([*clmkit_corpus, clmkit_corpus[0]])]
    files = []
    for shard in range(2):
        path = tmp_path / f"shard{shard}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows[shard::2]))
        files.append(str(path))
    stream = load_dataset("json", data_files=files, split="train", streaming=True)
    return stream, Dataset.from_list([r for shard in range(2) for r in rows[shard::2]])


@pytest.mark.parametrize("chunker", ["concat", "packed"])
def test_a_stream_yields_the_examples_of_the_same_dataset(
    clmkit_tokenizer, clmkit_model, clmkit_args, jsonl_stream, chunker
):
    stream, dataset = jsonl_stream
    args = clmkit_args(chunker=chunker, max_steps=5, filters=["exact_dedup", "code_quality"])
    eager = ClmTrainer(clmkit_model(), args=args, processing_class=clmkit_tokenizer, train_dataset=dataset)
    lazy = ClmTrainer(clmkit_model(), args=args, processing_class=clmkit_tokenizer, train_dataset=stream)
    assert isinstance(lazy.train_dataset, IterableDataset) and "train" not in lazy.data_stats
    expected = eager.train_dataset.to_list()
    assert len(expected) == eager.data_stats["train"].examples > 0
    assert list(lazy.train_dataset) == expected
    assert list(lazy.train_dataset) == expected  # a second pass (epoch) filters the same: dedup state is reset
    removed = {r.name: r.removed for r in lazy.filter_reports["train"]}
    assert removed == {r.name: r.removed for r in eager.filter_reports["train"]} and removed["exact_dedup"] == 1


def test_training_on_files_streamed_from_disk(clmkit_tokenizer, clmkit_model, clmkit_args, clmkit_corpus, tmp_path):
    paths = []
    for i, text in enumerate(clmkit_corpus[:8]):
        paths.append(tmp_path / f"m{i}.py")
        paths[-1].write_text(text)
    stream = stream_files(paths)
    assert stream.n_shards == 8
    trainer = ClmTrainer(
        clmkit_model(),
        clmkit_args(chunker="packed", max_steps=3),
        processing_class=clmkit_tokenizer,
        train_dataset=stream,
    )
    trainer.train()
    assert trainer.state.global_step == 3
    assert trainer.state.log_history[-1]["train_loss"] > 0


def test_a_stream_without_max_steps_is_refused(clmkit_tokenizer, clmkit_model, clmkit_args, raw_datasets):
    with pytest.raises(ConfigError, match="max_steps"):
        ClmTrainer(
            clmkit_model(),
            args=clmkit_args(),
            processing_class=clmkit_tokenizer,
            train_dataset=raw_datasets["train"].to_iterable_dataset(),
        )


def test_a_stream_emptied_by_a_filter_names_it(clmkit_tokenizer, clmkit_model, clmkit_args, raw_datasets):
    stream = raw_datasets["train"].to_iterable_dataset()
    args = clmkit_args(max_steps=3, filters=[{"keywords": {"words": ["no such word anywhere"]}}])
    with pytest.raises(DataError, match="filter 'keywords' removed 23 of 23 documents"):
        ClmTrainer(clmkit_model(), args=args, processing_class=clmkit_tokenizer, train_dataset=stream)


def test_a_stream_without_a_schema_is_read_for_its_columns(clmkit_tokenizer, clmkit_model, clmkit_args, clmkit_corpus):
    def documents():
        for text in clmkit_corpus:
            yield {"body": text}

    stream = IterableDataset.from_generator(documents)
    assert stream.column_names is None
    with pytest.raises(DataError, match=r"no text column 'content'; its columns are \['body'\]"):
        ClmTrainer(
            clmkit_model(), args=clmkit_args(max_steps=2), processing_class=clmkit_tokenizer, train_dataset=stream
        )
    trainer = ClmTrainer(
        clmkit_model(),
        args=clmkit_args(max_steps=2, text_column="body"),
        processing_class=clmkit_tokenizer,
        train_dataset=stream,
    )
    assert len(next(iter(trainer.train_dataset))["input_ids"]) == 64
