"""Tests of the architecture ``plugin_template``; ``pip install -e .`` first (fixtures from ``clmkit.testing``)."""

import pytest
from clmkit_plugin_template import plugin_template

from clmkit.errors import ConfigError
from clmkit.models import model_config


def test_each_preset_gives_a_config_of_its_size(clmkit_plugins):
    plugins = clmkit_plugins(plugin_template)
    config = model_config("plugin_template", "test", 512, 64, 0, plugins=plugins)
    assert (config.num_hidden_layers, config.hidden_size, config.max_position_embeddings) == (4, 32, 64)


def test_an_unknown_preset_names_the_presets(clmkit_plugins):
    with pytest.raises(ConfigError, match="presets: test, tiny, small"):
        model_config("plugin_template", "huge", 512, 64, 0, plugins=clmkit_plugins(plugin_template))


def test_trains_a_tiny_model(train_tiny):
    trainer = train_tiny(architecture="plugin_template")
    assert trainer.model.config.num_hidden_layers == 4
