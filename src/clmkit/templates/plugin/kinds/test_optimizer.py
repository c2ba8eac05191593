"""Tests of the optimizer ``plugin_template``; ``pip install -e .`` first (fixtures from ``clmkit.testing``)."""

import pytest
import torch
from clmkit_plugin_template.plugin_template import plugin_template

from clmkit.errors import ConfigError


def test_builds_sgd_over_the_groups(clmkit_model, clmkit_args):
    model = clmkit_model()
    groups = [{"params": list(model.parameters()), "weight_decay": 0.0}]
    optimizer = plugin_template(model, groups, clmkit_args(learning_rate=0.5), momentum=0.8)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["lr"] == 0.5
    assert optimizer.param_groups[0]["momentum"] == 0.8


def test_a_momentum_of_one_is_a_config_error(clmkit_model, clmkit_args):
    model = clmkit_model()
    with pytest.raises(ConfigError, match="momentum"):
        plugin_template(model, [{"params": list(model.parameters())}], clmkit_args(), momentum=1.0)


def test_trains_a_tiny_model(train_tiny):
    trainer = train_tiny(optimizer="plugin_template", optimizer_kwargs={"momentum": 0.8}, learning_rate=0.05)
    assert isinstance(getattr(trainer.optimizer, "optimizer", trainer.optimizer), torch.optim.SGD)
