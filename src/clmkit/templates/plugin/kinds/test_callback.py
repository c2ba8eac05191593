"""Tests of the callback plugin ``plugin_template``; ``pip install -e .`` first (fixtures from ``clmkit.testing``)."""

from clmkit_plugin_template import plugin_template
from clmkit_plugin_template.plugin_template import PluginTemplate


def test_every_run_gets_the_callback(clmkit_plugins, clmkit_args):
    (callback,) = clmkit_plugins(plugin_template).callbacks(clmkit_args())
    assert isinstance(callback, PluginTemplate)


def test_times_every_step_of_a_tiny_run(train_tiny):
    trainer = train_tiny()
    (callback,) = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, PluginTemplate)]
    assert len(callback.step_seconds) == 8 and all(s > 0 for s in callback.step_seconds)
