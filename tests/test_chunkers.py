"""Built-in chunkers: ``overflow`` is the course's ``tokenize()``, ``concat`` drops one tail, stats are exact."""

from __future__ import annotations

import pytest
from datasets import Dataset

from clmkit import ClmTrainer, Plugins
from clmkit.data.chunking import chunk_dataset, chunk_stats, tokenize_documents
from clmkit.errors import DataError


def seed_tokenize(tokenizer, context_length):
    """The course recipe's ``tokenize``, verbatim, closed over the two globals it reads."""

    def tokenize(element):
        outputs = tokenizer(
            element["content"],
            truncation=True,
            max_length=context_length,
            return_overflowing_tokens=True,
            return_length=True,
        )
        input_batch = []
        for length, input_ids in zip(outputs["length"], outputs["input_ids"]):  # noqa: B905
            if length == context_length:
                input_batch.append(input_ids)
        return {"input_ids": input_batch}

    return tokenize


def chunk(dataset: Dataset, tokenizer, name: str, context_length: int):
    """Tokenize and chunk ``dataset`` the way ClmTrainer does; returns (tokenized, chunked, chunker)."""
    chunker = Plugins(autoload=False).build("chunkers", name, tokenizer, context_length)
    tokenized = tokenize_documents(dataset, tokenizer, "content")
    return tokenized, chunk_dataset(tokenized, chunker), chunker


@pytest.mark.parametrize("context_length", [64, 128])
def test_overflow_equals_the_seeds_tokenize(raw_datasets, clmkit_tokenizer, context_length):
    corpus = raw_datasets["train"]
    expected = corpus.map(
        seed_tokenize(clmkit_tokenizer, context_length), batched=True, remove_columns=corpus.column_names
    )
    _, ours, _ = chunk(corpus, clmkit_tokenizer, "overflow", context_length)
    assert len(expected) > 100
    assert ours["input_ids"][:] == expected["input_ids"][:]


def test_concat_joins_documents_with_eos_and_keeps_all_but_the_tail(clmkit_corpus, clmkit_tokenizer):
    docs = clmkit_tokenizer(clmkit_corpus)["input_ids"]
    stream = [t for ids in docs for t in [*ids, clmkit_tokenizer.eos_token_id]]
    chunker = Plugins(autoload=False).build("chunkers", "concat", clmkit_tokenizer, 128)
    blocks = chunker({"input_ids": docs})["input_ids"]
    assert all(len(block) == 128 for block in blocks)
    assert [t for block in blocks for t in block] == stream[: len(blocks) * 128]
    assert 0 <= len(stream) - len(blocks) * 128 < 128
    # each map batch keeps all of its own stream but its tail
    halves = [chunker({"input_ids": part})["input_ids"] for part in (docs[:10], docs[10:])]
    assert 0 <= len(stream) - sum(len(h) for h in halves) * 128 < 2 * 128


@pytest.mark.parametrize("name", ["overflow", "concat"])
def test_chunk_stats_match_a_hand_count(clmkit_corpus, clmkit_tokenizer, name):
    corpus = [*clmkit_corpus, "x = 1\n", "def f():\n    return 2\n"]
    lengths = [len(ids) for ids in clmkit_tokenizer(corpus)["input_ids"]]
    tokenized, chunked, chunker = chunk(Dataset.from_dict({"content": corpus}), clmkit_tokenizer, name, 128)
    stats = chunk_stats(tokenized, chunked, chunker)

    tokens = sum(lengths) + (len(corpus) if name == "concat" else 0)
    examples = tokens // 128 if name == "concat" else sum(n // 128 for n in lengths)
    assert stats.as_dict() == {
        "documents": len(corpus),
        "tokens": tokens,
        "examples": examples,
        "tokens_kept": examples * 128,
        "tokens_dropped": tokens - examples * 128,
        "documents_too_short": sum(n < 128 for n in lengths),
        "fill_rate": 1.0,  # full rows only
    }
    assert stats.documents_too_short == 2 and len(chunked) == examples


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("iterable", [False, True])
def test_missing_text_column_lists_the_columns(clmkit_tokenizer, clmkit_args, iterable):
    dataset = Dataset.from_dict({"text": ["a = 1"], "path": ["a.py"]})
    with pytest.raises(DataError) as info:
        ClmTrainer(
            args=clmkit_args(),
            processing_class=clmkit_tokenizer,
            train_dataset=dataset.to_iterable_dataset() if iterable else dataset,
        )
    message = str(info.value)
    assert "'content'" in message and "'text'" in message and "'path'" in message and "text_column" in message


def test_overflow_without_a_full_chunk_counts_short_documents_and_suggests_concat(
    clmkit_tokenizer, clmkit_args, clmkit_model
):
    short = Dataset.from_dict({"content": ["def f(x):\n    return x + 1\n" * 3] * 6})
    with pytest.raises(DataError) as info:
        ClmTrainer(
            clmkit_model(), clmkit_args(chunker="overflow"), processing_class=clmkit_tokenizer, train_dataset=short
        )
    assert "6 of 6 documents are shorter than the context length 64" in str(info.value)
    assert "'concat'" in str(info.value)
    # the suggested fix works on the same corpus
    trainer = ClmTrainer(
        clmkit_model(), clmkit_args(chunker="concat"), processing_class=clmkit_tokenizer, train_dataset=short
    )
    assert trainer.data_stats["train"].examples >= 1
