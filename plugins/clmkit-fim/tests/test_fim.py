"""clmkit-fim: the transformation keeps every character, follows its rates, is reproducible, and trains."""

from __future__ import annotations

import math

import pytest
import torch
from clmkit_fim import FillInTheMiddle, infill, prepare, sentinel_ids
from clmkit_fim import plugin as fim_plugin
from datasets import Dataset

from clmkit import ClmTrainer
from clmkit.builtins.chunkers import Concat
from clmkit.errors import ConfigError, DataError


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def split(tokens, sentinels):
    """A rearranged document as (order, prefix, suffix, middle) token lists; SPM's prefix holds prefix + middle."""
    pre, suf, mid = sentinels
    assert tokens.count(pre) == tokens.count(suf) == tokens.count(mid) == 1
    if tokens[:2] == [pre, suf]:
        return "spm", tokens[tokens.index(mid) + 1 :], tokens[2 : tokens.index(mid)], []
    assert tokens[0] == pre
    return (
        "psm",
        tokens[1 : tokens.index(suf)],
        tokens[tokens.index(suf) + 1 : tokens.index(mid)],
        tokens[tokens.index(mid) + 1 :],
    )


@pytest.fixture
def fim_tokenizer(clmkit_tokenizer):
    """The test tokenizer with the FIM sentinels, as the plugin's clmkit_prepare_model leaves it."""
    prepare(clmkit_tokenizer)
    return clmkit_tokenizer


@pytest.fixture
def documents(clmkit_tokenizer, clmkit_corpus):
    """400 token documents of 5 to 80 tokens cut from real code."""
    stream = [t for text in clmkit_corpus for t in encode(clmkit_tokenizer, text)]
    lengths = [5 + (i * 31) % 76 for i in range(400)]
    starts = [sum(lengths[:i]) for i in range(400)]
    return [stream[s : s + n] for s, n in zip(starts, lengths, strict=True)]


@pytest.mark.parametrize("spm_rate", [0.0, 1.0])
def test_rearranged_documents_keep_every_character_in_the_chosen_order(fim_tokenizer, clmkit_corpus, spm_rate):
    chunker = FillInTheMiddle(fim_tokenizer, 64, rate=1.0, spm_rate=spm_rate)
    decode = fim_tokenizer.decode
    cuts = []
    for text in clmkit_corpus[:8]:
        order, prefix, suffix, middle = split(chunker.permute(encode(fim_tokenizer, text)), chunker.sentinels)
        assert order == ("spm" if spm_rate else "psm")
        assert decode(prefix) + decode(middle) + decode(suffix) == text
        cuts.append(len(decode(suffix)))
    assert len(set(cuts)) > 4, "split positions should vary from document to document"


def test_rates_are_the_fractions_of_documents_rearranged_and_in_spm(fim_tokenizer, documents):
    chunker = FillInTheMiddle(fim_tokenizer, 64, rate=0.5, spm_rate=0.25)
    outputs = [chunker.permute(doc) for doc in documents]
    rearranged = [out for out, doc in zip(outputs, documents, strict=True) if out != doc]
    spm = [out for out in rearranged if out[1] == chunker.sentinels.suffix]
    assert abs(len(rearranged) / len(documents) - 0.5) < 0.08
    assert abs(len(spm) / len(rearranged) - 0.25) < 0.08
    assert all(out == doc for out, doc in zip(outputs, documents, strict=True) if chunker.sentinels.prefix not in out)


def test_the_same_seed_and_tokens_give_the_same_result_whatever_the_batch(fim_tokenizer, documents):
    chunker = FillInTheMiddle(fim_tokenizer, 64, seed=3)
    alone = chunker({"input_ids": documents[7:8]})["input_ids"]
    again = FillInTheMiddle(fim_tokenizer, 64, seed=3)({"input_ids": documents[7:8]})["input_ids"]
    assert alone == again
    assert [chunker.permute(d) for d in documents[:50]] == [chunker.permute(d) for d in documents[:50]]
    in_batch = FillInTheMiddle(fim_tokenizer, 64, seed=3)({"input_ids": [documents[7], *documents[:7]]})
    stream = [t for block in in_batch["input_ids"] for t in block]
    expected = chunker.permute(documents[7])
    assert stream[: len(expected)] == expected  # first in the stream, so not in the dropped tail
    other = FillInTheMiddle(fim_tokenizer, 64, seed=4)
    assert [other.permute(d) for d in documents[:50]] != [chunker.permute(d) for d in documents[:50]]


def test_rate_zero_is_concat_and_the_sentinels_are_added_once(clmkit_tokenizer, documents):
    before = len(clmkit_tokenizer)
    sentinels = prepare(clmkit_tokenizer)
    assert len(clmkit_tokenizer) == before + 3
    fim = FillInTheMiddle(clmkit_tokenizer, 64, rate=0.0)
    assert fim({"input_ids": documents}) == Concat(clmkit_tokenizer, 64)({"input_ids": documents})
    assert prepare(clmkit_tokenizer) == fim.sentinels == sentinels
    assert len(clmkit_tokenizer) == before + 3


def test_a_tokenizer_without_sentinels_is_refused_with_the_fix(clmkit_tokenizer):
    with pytest.raises(DataError, match=r"clmkit_fim.prepare\(tokenizer, model\)"):
        FillInTheMiddle(clmkit_tokenizer, 64)


@pytest.mark.parametrize("kwargs", [{"rate": 1.5}, {"spm_rate": -0.1}, {"seed": -1}])
def test_bad_arguments_are_config_errors(clmkit_tokenizer, kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        FillInTheMiddle(clmkit_tokenizer, 64, **kwargs)


def test_prepare_resizes_the_model_and_keeps_its_head_tied(clmkit_tokenizer, clmkit_model):
    model = clmkit_model()
    sentinels = prepare(clmkit_tokenizer, model)
    assert model.get_input_embeddings().num_embeddings == len(clmkit_tokenizer) == max(sentinels) + 1
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_infill_needs_the_sentinels_and_room_in_the_context(clmkit_tokenizer, clmkit_model):
    model = clmkit_model(context_length=32)
    with pytest.raises(DataError, match="no FIM sentinel"):
        infill(model, clmkit_tokenizer, "def f(", "):")
    prepare(clmkit_tokenizer, model)
    with pytest.raises(ConfigError, match="context is 32 tokens"):
        infill(model, clmkit_tokenizer, "def f(x):\n    return x + 1\n" * 3, "", max_new_tokens=8)


def test_trains_a_tiny_model_with_chunker_fim_and_infills(clmkit_tokenizer, clmkit_model, clmkit_args, clmkit_corpus):
    model = clmkit_model()  # sized to the tokenizer without sentinels: the plugin grows it
    args = clmkit_args(
        chunker="fim", chunker_kwargs={"rate": 0.9}, max_steps=8, logging_strategy="steps", logging_steps=4
    )
    trainer = ClmTrainer(
        model=model,
        args=args,
        processing_class=clmkit_tokenizer,
        train_dataset=Dataset.from_dict({"content": clmkit_corpus}),
        plugins=[fim_plugin],
    )
    sentinels = sentinel_ids(clmkit_tokenizer)
    embeddings = model.get_input_embeddings()
    assert embeddings.num_embeddings == len(clmkit_tokenizer)
    assert sum(sentinels.middle in ex for ex in trainer.train_dataset["input_ids"]) > 10
    rows_before = embeddings.weight[list(sentinels)].detach().clone()
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert not torch.equal(model.get_input_embeddings().weight[list(sentinels)], rows_before), (
        "the sentinels' embeddings were not trained: the model was resized after the optimizer was built"
    )
    middle = infill(model, clmkit_tokenizer, "def add(a, b):\n    return ", "\n", max_new_tokens=8)
    assert isinstance(middle, str)
    assert len(encode(clmkit_tokenizer, middle)) <= 8
