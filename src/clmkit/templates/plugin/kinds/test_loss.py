"""Tests of the loss ``plugin_template``; ``pip install -e .`` first (the fixtures come from ``clmkit.testing``)."""

import pytest
import torch
from clmkit_plugin_template import plugin_template
from clmkit_plugin_template.plugin_template import PluginTemplate

from clmkit.errors import ConfigError
from clmkit.testing import assert_exact_under_accumulation


def test_registered_by_name(clmkit_plugins, clmkit_tokenizer):
    loss = clmkit_plugins(plugin_template).build("losses", "plugin_template", tokenizer=clmkit_tokenizer, skip_first=2)
    assert isinstance(loss, PluginTemplate) and loss.skip_first == 2


def test_scores_only_targets_after_the_first_skip_first():
    labels = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, -100, -100]])
    assert PluginTemplate(skip_first=2).token_weights({"labels": labels}).tolist() == [[0, 0, 1, 1], [0, 0, 0, 0]]


def test_exact_under_gradient_accumulation():
    differences = assert_exact_under_accumulation("plugin_template", loss_kwargs={"skip_first": 4})
    assert differences[0].max_gradient_difference < 1e-5


def test_a_negative_skip_first_is_a_config_error():
    with pytest.raises(ConfigError, match="skip_first"):
        PluginTemplate(skip_first=-1)


def test_trains_a_tiny_model(train_tiny):
    trainer = train_tiny(loss="plugin_template", loss_kwargs={"skip_first": 8})
    assert isinstance(trainer.loss, PluginTemplate)
