"""Tests of clmkit-plugin-template; ``pip install -e .`` first (the fixtures come from ``clmkit.testing``)."""

from __future__ import annotations

import math
from importlib.metadata import entry_points

import clmkit_plugin_template
import pytest
import torch
from clmkit_plugin_template import PluginTemplate
from datasets import Dataset

from clmkit import ClmTrainer
from clmkit.errors import ConfigError
from clmkit.testing import assert_exact_under_accumulation


def test_the_installed_entry_point_loads_this_plugin():
    found = {ep.name: ep for ep in entry_points(group="clmkit")}
    assert "plugin_template" in found, "not installed: run `pip install -e .` in the plugin's folder"
    assert found["plugin_template"].load() is clmkit_plugin_template


def test_registers_its_loss_by_name(clmkit_plugins, clmkit_tokenizer):
    plugins = clmkit_plugins(clmkit_plugin_template)
    loss = plugins.build("losses", "plugin_template", tokenizer=clmkit_tokenizer, skip_first=2)
    assert isinstance(loss, PluginTemplate) and loss.skip_first == 2


def test_scores_only_targets_after_the_first_skip_first():
    labels = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, -100, -100]])
    weights = PluginTemplate(skip_first=2).token_weights({"labels": labels})
    assert weights.tolist() == [[0, 0, 1, 1], [0, 0, 0, 0]]


def test_exact_under_gradient_accumulation():
    assert_exact_under_accumulation("plugin_template", loss_kwargs={"skip_first": 4}, plugins=[clmkit_plugin_template])


def test_a_negative_skip_first_is_a_config_error():
    with pytest.raises(ConfigError, match="skip_first"):
        PluginTemplate(skip_first=-1)


def test_trains_a_tiny_model(clmkit_tokenizer, clmkit_model, clmkit_args, clmkit_corpus):
    args = clmkit_args(
        loss="plugin_template", loss_kwargs={"skip_first": 8}, max_steps=8, logging_strategy="steps", logging_steps=4
    )
    trainer = ClmTrainer(
        model=clmkit_model(),
        args=args,
        processing_class=clmkit_tokenizer,
        train_dataset=Dataset.from_dict({"content": clmkit_corpus}),
    )
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
