"""The CLI knows the installed plugins: `--help` of `train` and `prepare` lists every registered name, third-party
ones included, and plugin arguments are checked by name and type before the tokenizer trains."""

from __future__ import annotations

import types

import pytest
from support.bad_inputs import assert_refused, run_cli

from clmkit import Chunker, DocumentFilter, Loss, hookimpl
from clmkit.plugins import KINDS, Plugins


class Heads(Chunker):
    """Each document's first ``max_tokens`` tokens."""

    def __init__(self, tokenizer, context_length, max_tokens: int = 16) -> None:
        super().__init__(tokenizer, context_length)
        self.max_tokens = max_tokens

    def __call__(self, batch):
        return {"input_ids": [ids[: min(self.max_tokens, self.context_length)] for ids in batch["input_ids"] if ids]}


class Loud(Loss):
    def __init__(self, tokenizer=None, volume: float = 1.0) -> None:
        self.volume = volume


class NoTests(DocumentFilter):
    def reason(self, text):
        return "a test" if "def test_" in text else None


PLUGIN = types.SimpleNamespace(
    clmkit_register_chunkers=hookimpl(lambda register: register("heads", Heads)),
    clmkit_register_losses=hookimpl(lambda register: register("loud", Loud)),
    clmkit_register_filters=hookimpl(lambda register: register("no_tests", NoTests)),
)


@pytest.fixture
def installed(clmkit_install_plugin, monkeypatch):
    monkeypatch.delenv("CLMKIT_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("CLMKIT_PLUGINS", raising=False)
    clmkit_install_plugin(PLUGIN, "mine", distribution="clmkit-mine")


def help_text(command: str) -> str:
    """``clmkit COMMAND --help`` on one line."""
    result = run_cli([command, "--help"])
    assert result.code == 0
    return " ".join(result.stdout.split())


@pytest.mark.parametrize("command", ["train", "prepare"])
def test_help_lists_every_registered_name_third_party_included(installed, command):
    registries, text = Plugins(), help_text(command)
    shown = {"train": list(KINDS), "prepare": [k for k in KINDS if k.name in ("chunkers", "filters")]}[command]
    for kind in KINDS:
        listing = f"Registered {kind.name}: {', '.join(sorted(registries.registry(kind.name)))}."
        assert (listing in text) == (kind in shown), listing
    assert "heads, overflow" in text and "no_tests" in text and ("loud" in text) == (command == "train")


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (
            ["--chunker", "heads", "--chunker_kwargs", '{"max_tokens": "ten"}'],
            ["chunker 'heads'", "max_tokens", "a whole number"],
        ),
        (
            ["--chunker", "heads", "--chunker_kwargs", '{"max_token": 10}'],
            ["chunker 'heads'", "max_token", "accepts: max_tokens"],
        ),
    ],
    ids=["type", "name"],
)
@pytest.mark.parametrize("command", ["train", "prepare"])
def test_third_party_kwargs_are_checked_before_the_tokenizer_trains(
    installed, corpus_dir, tmp_path, monkeypatch, command, extra, words
):
    def no_training(*args, **kwargs):
        raise AssertionError("the tokenizer trained before the plugin arguments were checked")

    monkeypatch.setattr("clmkit.data.tokenizer.train_tokenizer", no_training)
    result = run_cli([command, "--dataset", str(corpus_dir), "--output_dir", str(tmp_path / "out"), *extra])
    assert_refused(result, *words)
    assert not (tmp_path / "out").exists()


def test_a_loss_kwarg_of_the_wrong_type_is_refused_by_train(installed, corpus_dir, tmp_path):
    argv = ["train", "--dataset", str(corpus_dir), "--output_dir", str(tmp_path / "out"), "--loss", "loud"]
    assert_refused(run_cli([*argv, "--loss_kwargs", '{"volume": "high"}']), "loss 'loud'", "volume", "a number")


def test_a_plugin_module_passed_again_is_registered_once(installed):
    """An installed plugin passed in ``plugins=[...]`` too is de-duplicated, not a name registered twice."""
    plugins = Plugins(extra=[PLUGIN, PLUGIN])
    assert plugins.get("chunkers", "heads").plugin == "mine"
    assert [record["plugin"] for record in plugins.describe()].count("mine") == 1
