"""Tests of the param grouper ``plugin_template``; ``pip install -e .`` first (fixtures from ``clmkit.testing``)."""

from clmkit_plugin_template.plugin_template import plugin_template


def test_every_trainable_parameter_is_in_exactly_one_group(clmkit_model):
    model = clmkit_model()
    groups = plugin_template(model, 0.1)
    grouped = [id(p) for group in groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and groups[1]["weight_decay"] == 0.0


def test_trains_a_tiny_model(train_tiny):
    train_tiny(param_grouper="plugin_template", weight_decay=0.1)
