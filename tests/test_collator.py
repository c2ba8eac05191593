"""Built-in collator ``causal``: the course recipe's collator with pad = EOS, except that a real EOS stays a target."""

from __future__ import annotations

import torch
from transformers import DataCollatorForLanguageModeling

from clmkit import Plugins


def causal(tokenizer, **kwargs):
    return Plugins(autoload=False).build("collators", "causal", tokenizer, **kwargs)


def examples_from(tokenizer, texts, lengths, with_eos):
    """Examples cut from real text; ``with_eos`` puts a real EOS in the middle of each."""
    ids = tokenizer(texts[0])["input_ids"]
    out = []
    for i, n in enumerate(lengths):
        row = ids[i * 70 : i * 70 + n]
        if with_eos:
            row[n // 2] = tokenizer.eos_token_id
        out.append({"input_ids": row})
    return out


def test_unpadded_batch_without_eos_is_identical_to_the_seeds_collator(clmkit_tokenizer, clmkit_corpus):
    examples = examples_from(clmkit_tokenizer, clmkit_corpus, [32, 32, 32], with_eos=False)
    seed = DataCollatorForLanguageModeling(clmkit_tokenizer, mlm=False)(examples)
    ours = causal(clmkit_tokenizer)(examples)
    assert set(ours) == set(seed) == {"input_ids", "attention_mask", "labels"}
    for key in seed:
        assert torch.equal(ours[key], seed[key]), key


def test_padding_is_eos_and_only_padding_is_masked(clmkit_tokenizer, clmkit_corpus):
    eos = clmkit_tokenizer.eos_token_id
    examples = examples_from(clmkit_tokenizer, clmkit_corpus, [40, 25, 33], with_eos=True)
    batch = causal(clmkit_tokenizer)(examples)
    seed = DataCollatorForLanguageModeling(clmkit_tokenizer, mlm=False)(examples)

    assert torch.equal(batch["input_ids"], seed["input_ids"])
    assert torch.equal(batch["attention_mask"], seed["attention_mask"])
    padding = batch["attention_mask"] == 0
    real_eos = (batch["input_ids"] == eos) & ~padding
    assert padding.sum() == (40 - 25) + (40 - 33) and real_eos.sum() == 3
    assert (batch["input_ids"][padding] == eos).all()
    assert ((batch["labels"] == -100) == padding).all()
    assert torch.equal(batch["labels"][~padding], batch["input_ids"][~padding])
    # the course recipe's collator masks every EOS by its id, so the model never learns to end a document
    assert (seed["labels"][real_eos] == -100).all() and (batch["labels"][real_eos] == eos).all()
    assert torch.equal(seed["labels"][~real_eos], batch["labels"][~real_eos])


def test_pad_to_multiple_of_and_extra_columns(clmkit_tokenizer, clmkit_corpus):
    examples = examples_from(clmkit_tokenizer, clmkit_corpus, [10, 7], with_eos=False)
    for ex in examples:
        ex["position_ids"] = list(range(len(ex["input_ids"])))
    batch = causal(clmkit_tokenizer, pad_to_multiple_of=8)(examples)
    assert batch["input_ids"].shape == batch["position_ids"].shape == (2, 16)
    assert batch["position_ids"][1].tolist() == [*range(7), *[0] * 9]
    assert (batch["labels"][1, 7:] == -100).all() and (batch["labels"][0, :10] >= 0).all()
