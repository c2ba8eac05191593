"""Tests of the collator ``plugin_template``; ``pip install -e .`` first (the fixtures come from ``clmkit.testing``)."""

from clmkit_plugin_template.plugin_template import PluginTemplate

from clmkit.testing import assert_collator_contract, padded_examples


def test_keeps_the_collator_contract(clmkit_tokenizer):
    newline = clmkit_tokenizer.convert_tokens_to_ids("Ċ")
    batch = assert_collator_contract("plugin_template", collator_kwargs={"ignore_token_ids": [newline]})
    assert not ((batch["input_ids"] == newline) & (batch["labels"] != -100)).any()


def test_the_ignored_tokens_are_no_target_and_the_others_are(clmkit_tokenizer):
    examples = list(padded_examples(clmkit_tokenizer, count=4))
    ignored = examples[1]["input_ids"][0]
    batch = PluginTemplate(clmkit_tokenizer, ignore_token_ids=[ignored])(examples)
    real = batch["attention_mask"] == 1
    assert (batch["labels"][batch["input_ids"] == ignored] == -100).all()
    assert (batch["labels"][real & (batch["input_ids"] != ignored)] != -100).all()


def test_trains_a_tiny_model(train_tiny):
    trainer = train_tiny(collator="plugin_template", collator_kwargs={"ignore_token_ids": [0]})
    assert isinstance(trainer.data_collator, PluginTemplate)
