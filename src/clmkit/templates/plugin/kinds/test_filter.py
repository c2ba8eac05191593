"""Tests of the filter ``plugin_template``; ``pip install -e .`` first (the fixtures come from ``clmkit.testing``)."""

import pytest
from clmkit_plugin_template.plugin_template import PluginTemplate

from clmkit.errors import ConfigError
from clmkit.testing import assert_filter_contract


def test_keeps_the_filter_contract():
    reasons = assert_filter_contract("plugin_template", filter_kwargs={"min_lines": 2})
    assert "fewer than 2 lines" in reasons and None in reasons


def test_drops_short_documents_only():
    assert PluginTemplate(min_lines=2).reason("x = 1\n\n") == "fewer than 2 lines"
    assert PluginTemplate(min_lines=2).reason("x = 1\ny = 2\n") is None


def test_a_negative_min_lines_is_a_config_error():
    with pytest.raises(ConfigError, match="min_lines"):
        PluginTemplate(min_lines=-1)


def test_trains_a_tiny_model(train_tiny):
    trainer = train_tiny(filters=[{"plugin_template": {"min_lines": 20}}])
    assert trainer.data_stats["train"].documents < 30
