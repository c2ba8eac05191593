"""Tests of the chunker ``plugin_template``; ``pip install -e .`` first (the fixtures come from ``clmkit.testing``)."""

import pytest
from clmkit_plugin_template.plugin_template import PluginTemplate

from clmkit.errors import ConfigError
from clmkit.testing import assert_chunker_contract


def test_keeps_the_chunker_contract():
    stats = assert_chunker_contract("plugin_template", chunker_kwargs={"max_document_tokens": 100})
    assert stats.tokens_dropped > 0 and stats.fill_rate == 1.0


def test_cuts_each_document_before_joining(clmkit_tokenizer):
    eos = clmkit_tokenizer.eos_token_id
    chunker = PluginTemplate(clmkit_tokenizer, 4, max_document_tokens=2)
    assert chunker({"input_ids": [[1, 2, 3], [4, 5, 6]]})["input_ids"] == [[1, 2, eos, 4]]


def test_a_max_document_tokens_below_one_is_a_config_error(clmkit_tokenizer):
    with pytest.raises(ConfigError, match="max_document_tokens"):
        PluginTemplate(clmkit_tokenizer, 64, max_document_tokens=0)


def test_trains_a_tiny_model(train_tiny):
    trainer = train_tiny(chunker="plugin_template", chunker_kwargs={"max_document_tokens": 512})
    assert isinstance(trainer.chunker, PluginTemplate)
