"""The ``packed`` chunker: whole documents per row, isolated by the collator and the model; fill rate; token counts."""

from __future__ import annotations

import random

import pytest
import torch
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling

from clmkit import ClmTrainer, Plugins
from clmkit.data.packing import best_fit_decreasing
from clmkit.data.preparation import compare_chunkers, compare_table
from clmkit.errors import ConfigError
from clmkit.training.forward import forward_for_loss


def build(kind: str, name: str, *args, **kwargs):
    return Plugins(autoload=False).build(kind, name, *args, **kwargs)


def segments(row_ids: list[int], positions: list[int]) -> list[list[int]]:
    """Split a packed row where its positions restart at 0."""
    starts = [i for i, p in enumerate(positions) if p == 0] + [len(row_ids)]
    return [row_ids[a:b] for a, b in zip(starts, starts[1:], strict=False)]


def test_best_fit_decreasing_puts_each_item_in_the_tightest_bin():
    # longest first: 6 opens a bin, 5 another, 4 fills the 6's bin exactly, 3 and 2 fill the 5's
    assert best_fit_decreasing([6, 5, 4, 3, 2], 10) == [[0, 2], [1, 3, 4]]
    lengths = [random.Random(i).randint(1, 64) for i in range(300)]
    bins = best_fit_decreasing(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(300))
    loads = sorted(sum(lengths[i] for i in b) for b in bins)
    assert loads[-1] <= 64
    assert loads[0] + loads[1] > 64  # no two bins could have been merged
    with pytest.raises(ValueError):
        best_fit_decreasing([65], 64)


def test_packed_keeps_every_token_and_restarts_positions_per_document(clmkit_corpus, clmkit_tokenizer):
    docs = clmkit_tokenizer(clmkit_corpus)["input_ids"]
    eos = clmkit_tokenizer.eos_token_id
    rows = build("chunkers", "packed", clmkit_tokenizer, 128)({"input_ids": docs})
    expected = [[*d, eos][s : s + 128] for d in docs for s in range(0, len(d) + 1, 128)]
    assert any(len(d) > 128 for d in docs)  # some documents are split
    got = [seg for ids, pos in zip(rows["input_ids"], rows["position_ids"], strict=True) for seg in segments(ids, pos)]
    assert sorted(got) == sorted(expected)  # every piece once, whole, nothing dropped
    for ids, pos in zip(rows["input_ids"], rows["position_ids"], strict=True):
        assert len(ids) == len(pos) <= 128
        assert all(p == 0 or p == q + 1 for q, p in zip(pos, pos[1:], strict=False))
    assert sum(map(len, rows["input_ids"])) == sum(len(d) + 1 for d in docs)


@pytest.fixture
def two_documents(clmkit_tokenizer, clmkit_corpus):
    """A (40 tokens) and B (20 tokens): BFD puts the longer A first, B after it, in one row of 64."""
    ids = clmkit_tokenizer(clmkit_corpus[3])["input_ids"]
    return ids[:40], ids[100:120]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("training", [False, True])
def test_a_packed_document_does_not_see_the_one_before_it(
    clmkit_tokenizer, clmkit_model, two_documents, attn, training
):
    a, b = two_documents
    chunker = build("chunkers", "packed", clmkit_tokenizer, 64)
    collate = build("collators", "causal", clmkit_tokenizer)
    model = clmkit_model(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # dropout off: train mode stays deterministic
    model.set_attn_implementation(attn)
    model.train(training)
    assert model.config._attn_implementation == attn and model.config.use_cache  # GPT-2 builds a KV cache by default

    def logits_and_batch(first):
        row = chunker({"input_ids": [first, b]})
        assert len(row["input_ids"]) == 1 and row["input_ids"][0][len(first) + 1 :] == [
            *b,
            clmkit_tokenizer.eos_token_id,
        ]
        batch = collate([{"input_ids": row["input_ids"][0], "position_ids": row["position_ids"][0]}])
        with torch.no_grad():
            return forward_for_loss(model, batch, hidden_states=False)[0].logits[0], batch

    start = len(a) + 1  # B's first token
    original, batch = logits_and_batch(a)
    changed, _ = logits_and_batch([(t + 7) % 500 + 1 for t in a])
    assert not torch.equal(original[:start], changed[:start])
    torch.testing.assert_close(changed[start:], original[start:], rtol=0, atol=1e-6)
    # B in the packed row is B alone
    alone = collate([{"input_ids": [*b, clmkit_tokenizer.eos_token_id]}])
    with torch.no_grad():
        by_itself = model(input_ids=alone["input_ids"]).logits[0]
    torch.testing.assert_close(original[start:], by_itself, rtol=0, atol=1e-5)
    labels = batch["labels"][0]
    assert labels[start] == -100 and (labels[1:start] >= 0).all() and (labels[start + 1 :] >= 0).all()
    # control: the same row with a plain padding mask lets B attend to A
    with torch.no_grad():
        plain = [model(input_ids=x, attention_mask=batch["attention_mask"]).logits[0] for x in (batch["input_ids"],)]
        ids = batch["input_ids"].clone()
        ids[0, : len(a)] = torch.tensor([(t + 7) % 500 + 1 for t in a])
        plain.append(model(input_ids=ids, attention_mask=batch["attention_mask"]).logits[0])
    assert (plain[0][start:] - plain[1][start:]).abs().max() > 1e-3


def test_packed_refuses_a_collator_that_cannot_keep_documents_apart(
    clmkit_tokenizer, clmkit_model, clmkit_args, raw_datasets
):
    with pytest.raises(ConfigError) as info:
        ClmTrainer(
            clmkit_model(),
            clmkit_args(chunker="packed"),
            data_collator=DataCollatorForLanguageModeling(clmkit_tokenizer, mlm=False),
            processing_class=clmkit_tokenizer,
            train_dataset=raw_datasets["train"],
        )
    message = str(info.value)
    assert (
        "'packed'" in message
        and "DataCollatorForLanguageModeling" in message
        and "supports_document_boundaries" in message
    )


def test_packed_trains_and_its_token_counters_continue_on_resume(
    clmkit_tokenizer, clmkit_model, clmkit_args, clmkit_corpus, tmp_path
):
    """slots, non-padding tokens and targets differ with packing; a resumed run ends with the same totals."""
    corpus = Dataset.from_dict({"content": [t[200 : 210 + 2 * i] for i, t in enumerate(clmkit_corpus[:30])]})  # 17 rows
    context = 32

    def trainer(output_dir):
        args = clmkit_args(
            output_dir=str(output_dir),
            context_length=context,
            chunker="packed",
            collator_kwargs={"pad_to_multiple_of": context},  # every row padded to 32 slots
            per_device_train_batch_size=4,
            num_train_epochs=1,
            save_strategy="steps",
            save_steps=3,
            logging_strategy="steps",
            logging_steps=1,
        )
        return ClmTrainer(
            clmkit_model(context_length=context), args, processing_class=clmkit_tokenizer, train_dataset=corpus
        )

    first = trainer(tmp_path / "run")
    first.train()
    # the epoch's rows in the global order (randperm seeded with the seed), without the incomplete last batch
    order = torch.randperm(len(first.train_dataset), generator=torch.Generator().manual_seed(first.args.seed))
    rows = first.train_dataset.select(order[: len(order) // 4 * 4].tolist())
    assert len(rows) < len(first.train_dataset) == first.data_stats["train"].examples
    lengths = [len(ids) for ids in rows["input_ids"]]
    documents_per_row = [pos.count(0) for pos in rows["position_ids"]]
    final = first.state.log_history[-2]  # the last training log (the final one holds the run summary)
    assert final["token_slots_seen"] == len(rows) * context
    assert final["tokens_seen"] == sum(lengths)
    assert final["target_tokens_seen"] == sum(n - d for n, d in zip(lengths, documents_per_row, strict=True))
    assert final["token_slots_seen"] > final["tokens_seen"] > final["target_tokens_seen"]

    resumed = trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-3"))
    again = resumed.state.log_history[-2]
    for key in ("token_slots_seen", "tokens_seen", "target_tokens_seen"):
        assert again[key] == final[key], key
    at_checkpoint = next(log for log in first.state.log_history if log.get("step") == 3 and "loss" in log)
    session = resumed.token_counter._session_tokens  # tokens/s of the resumed run counts only these
    assert 0 < session == final["tokens_seen"] - at_checkpoint["tokens_seen"]


def test_compare_chunkers_accounts_for_every_token(raw_datasets, clmkit_tokenizer):
    corpus = raw_datasets["train"]
    rows = {r["chunker"]: r for r in compare_chunkers(corpus, clmkit_tokenizer, ["overflow", "concat", "packed"], 64)}
    lengths = [len(ids) for ids in clmkit_tokenizer(list(corpus["content"]))["input_ids"]]
    for row in rows.values():
        assert row["documents"] == len(corpus)
        assert row["tokens_kept"] + row["tokens_dropped"] == row["tokens"]
        assert row["padding"] == row["examples"] * 64 - row["tokens_kept"]
        assert row["fill_rate"] == pytest.approx(row["tokens_kept"] / (row["examples"] * 64), abs=1e-4)
    assert rows["overflow"]["tokens"] == sum(lengths)
    assert rows["concat"]["tokens"] == rows["packed"]["tokens"] == sum(lengths) + len(corpus)  # one EOS each
    assert rows["overflow"]["fill_rate"] == rows["concat"]["fill_rate"] == 1.0
    assert (
        rows["packed"]["tokens_dropped"] == 0 and rows["overflow"]["tokens_dropped"] > rows["concat"]["tokens_dropped"]
    )
    assert rows["packed"]["examples"] >= -(-rows["packed"]["tokens"] // 64)
    assert 0.9 < rows["packed"]["fill_rate"] < 1.0
    table = compare_table(list(rows.values())).splitlines()
    assert len(table) == 5 and table[0].startswith("| chunker | documents | tokens |")
    assert table[4] == (
        f"| `packed` | {len(corpus)} | {rows['packed']['tokens']:,} | {rows['packed']['examples']:,} | "
        f"{rows['packed']['tokens_kept']:,} | 0 | {rows['packed']['padding']:,} | {rows['packed']['fill_rate']:.4f} |"
    )
