"""The plugin authors' kit: contract checks that pass for the built-ins and catch each broken rule, gradients on
demand, and the kit's import error without pytest."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
import torch

import clmkit
from clmkit.builtins.chunkers import Concat, Overflow
from clmkit.builtins.collators import CausalCollator
from clmkit.builtins.filters import ExactDedup
from clmkit.data.chunking import Chunker
from clmkit.data.filters import DocumentFilter
from clmkit.testing import (
    assert_chunker_contract,
    assert_collator_contract,
    assert_exact_under_accumulation,
    assert_filter_contract,
    first_step_gradients,
    tiny_model,
    tiny_tokenizer,
)

# ---- chunkers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["overflow", "concat", "packed"])
def test_builtin_chunkers_keep_the_contract(name):
    stats = assert_chunker_contract(name)
    assert stats.tokens_kept + stats.tokens_dropped == stats.tokens and stats.documents_too_short == 3
    assert stats.fill_rate == 1.0 if name != "packed" else 0.9 < stats.fill_rate < 1.0


class Padding(Chunker):
    """Pads every document's tail to the context with EOS: padding that would become targets."""

    def __call__(self, batch):
        size = self.context_length
        pieces = [ids[i : i + size] for ids in batch["input_ids"] for i in range(0, len(ids), size)]
        return {"input_ids": [p + [self.eos_token_id] * (size - len(p)) for p in pieces if p]}


class TooLong(Chunker):
    def __call__(self, batch):
        return {"input_ids": [ids[: self.context_length + 1] for ids in batch["input_ids"] if ids]}


class EosUnannounced(Concat):
    adds_eos = False


class BoundariesClaimed(Concat):
    """Claims document boundaries, but its position ids run straight across the documents of a block."""

    emits_document_boundaries = True

    def __call__(self, batch):
        blocks = super().__call__(batch)["input_ids"]
        return {"input_ids": blocks, "position_ids": [list(range(len(b))) for b in blocks]}


class Shuffled(Chunker):
    def __call__(self, batch):
        ids = [t for doc in batch["input_ids"] for t in doc]
        random.shuffle(ids)
        return {"input_ids": [ids[i : i + self.context_length] for i in range(0, len(ids), self.context_length)]}


class AddsATokenItself(Overflow):
    def __init__(self, tokenizer, context_length):
        super().__init__(tokenizer, context_length)
        tokenizer.add_tokens(["<mine>"])


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (Padding, "Never pad"),
        (TooLong, "65 tokens; an example has 1 to context_length=64"),
        (EosUnannounced, "set the class attribute adds_eos = True"),
        (BoundariesClaimed, "no contiguous piece of one"),
        (Shuffled, "Make it deterministic"),
        (AddsATokenItself, "changed the tokenizer"),
    ],
    ids=["pads", "too-long", "eos-unannounced", "boundaries", "random", "tokenizer"],
)
def test_the_chunker_contract_catches_each_broken_rule(factory, message):
    with pytest.raises(AssertionError, match=message):
        assert_chunker_contract(factory)


def test_tokens_a_chunker_adds_on_purpose_are_declared(clmkit_tokenizer):
    clmkit_tokenizer.add_tokens(["<sentinel>"])
    sentinel = clmkit_tokenizer.convert_tokens_to_ids("<sentinel>")

    class Sentinel(Concat):
        def __call__(self, batch):
            return {"input_ids": [[sentinel, *row[1:]] for row in super().__call__(batch)["input_ids"]]}

    with pytest.raises(AssertionError, match=f"emits token {sentinel}"):
        assert_chunker_contract(Sentinel, tokenizer=clmkit_tokenizer)
    assert assert_chunker_contract(Sentinel, tokenizer=clmkit_tokenizer, added_token_ids={sentinel}).examples > 0


def test_the_chunker_contract_builds_a_registered_chunker_with_its_kwargs():
    with pytest.raises(clmkit.ConfigError, match="accepts: none"):
        assert_chunker_contract("concat", chunker_kwargs={"stride": 2})


# ---- collators and filters ----------------------------------------------------------------------


def test_the_builtin_collator_keeps_the_contract():
    batch = assert_collator_contract("causal", collator_kwargs={"pad_to_multiple_of": 16})
    assert batch["input_ids"].shape[1] % 16 == 0


class TargetsAtPadding(CausalCollator):
    def __call__(self, examples):
        batch = super().__call__(examples)
        return {**batch, "labels": batch["input_ids"].clone()}


class BoundariesIgnored(CausalCollator):
    def __call__(self, examples):
        batch = super().__call__(examples)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return {**batch, "labels": labels}


class Edits(CausalCollator):
    def __call__(self, examples):
        for example in examples:
            example["input_ids"] = example["input_ids"][:-1] or [0]
        return super().__call__(examples)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (TargetsAtPadding, "a target at a padding position"),
        (BoundariesIgnored, "where position_ids restart at 0"),
        (Edits, "changed the examples"),
    ],
)
def test_the_collator_contract_catches_each_broken_rule(factory, message):
    with pytest.raises(AssertionError, match=message):
        assert_collator_contract(factory)


@pytest.mark.parametrize(
    ("name", "kwargs"), [("exact_dedup", {}), ("keywords", {"words": ["def"]}), ("code_quality", {})]
)
def test_builtin_filters_keep_the_contract(name, kwargs):
    reasons = assert_filter_contract(name, filter_kwargs=kwargs)
    assert any(r is None for r in reasons) and any(r is not None for r in reasons)


class NeverForgets(ExactDedup):
    def reset(self):
        pass


class Silent(DocumentFilter):
    def reason(self, text):
        return "" if not text.strip() else None


@pytest.mark.parametrize(
    ("factory", "message"), [(NeverForgets, r"Clear its state in reset\(\)"), (Silent, "non-empty")]
)
def test_the_filter_contract_catches_each_broken_rule(factory, message):
    with pytest.raises(AssertionError, match=message):
        assert_filter_contract(factory)


# ---- gradients on demand ------------------------------------------------------------------------


def test_first_step_gradients_are_every_parameters_gradient_at_the_optimizer():
    tokenizer = tiny_tokenizer()
    step = first_step_gradients("cross_entropy", batch_size=8, accumulation=2, tokenizer=tokenizer)
    names = {n for n, p in tiny_model(tokenizer).named_parameters() if p.requires_grad}
    assert set(step.gradients) == names and step.loss > 0
    assert all(torch.isfinite(g).all() for g in step.gradients.values())
    assert any(g.abs().sum() > 0 for g in step.gradients.values())


def test_exactness_returns_the_measured_differences_per_setup():
    differences = assert_exact_under_accumulation("cross_entropy", setups=((16, 1), (8, 2), (2, 8)))
    assert [(d.batch_size, d.accumulation, d.processes) for d in differences] == [(8, 2, 1), (2, 8, 1)]
    assert all(0 <= d.max_gradient_difference < 1e-5 and d.loss_difference < 1e-5 for d in differences)


def test_exactness_on_two_processes():
    keywords = {"keywords": ["self", "return", "def"]}
    setups = ((16, 1), (4, 2))
    (difference,) = assert_exact_under_accumulation("keytoken", loss_kwargs=keywords, setups=setups, processes=2)
    assert difference.processes == 2 and difference.max_gradient_difference < 1e-5


def test_several_processes_need_a_loss_they_can_import():
    with pytest.raises(ValueError, match="pass the loss by its registered name"):
        first_step_gradients(clmkit.CrossEntropy, batch_size=4, processes=2)


@pytest.mark.parametrize("setups", [((32, 1),), ((32, 1), (8, 2))])
def test_exactness_refuses_setups_of_different_sizes(setups):
    with pytest.raises(ValueError, match="see 32 examples"):
        assert_exact_under_accumulation("cross_entropy", setups=setups)


# ---- small things -------------------------------------------------------------------------------


def test_importing_the_kit_without_pytest_names_the_fix():
    code = "import sys; sys.modules['pytest'] = None; import clmkit.testing"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1
    assert 'pip install "clmkit[test]"' in done.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    "name", ["Overflow", "Concat", "Packed", "CausalCollator", "ExactDedup", "Keywords", "CodeQuality", "KeyToken"]
)
def test_builtin_classes_plugins_subclass_are_public(name):
    assert name in clmkit.__all__ and getattr(clmkit, name).__module__.startswith("clmkit.builtins.")
