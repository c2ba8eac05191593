"""The pytest fixtures of ``clmkit.testing``, all prefixed ``clmkit_``: tiny real inputs and plugins for one test."""

from __future__ import annotations

import importlib
import re
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from clmkit.testing.tiny import tiny_args, tiny_corpus, tiny_model, tiny_tokenizer

if TYPE_CHECKING:
    from typing import Any

    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from clmkit.args import ClmTrainingArguments
    from clmkit.plugins import Plugins


def _write_distribution(site: Path, distribution: str, entry_point: str, value: str) -> None:
    """Put a distribution with one ``clmkit`` entry point into the folder ``site``."""
    info = site / f"{distribution.replace('-', '_')}-0.0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.0.0\n")
    (info / "entry_points.txt").write_text(f"[clmkit]\n{entry_point} = {value}\n")


@pytest.fixture(scope="session")
def clmkit_corpus() -> list[str]:
    """Real Python source: the standard library's ``json`` and ``email`` packages (about 30 files)."""
    return list(tiny_corpus())


@pytest.fixture
def clmkit_tokenizer() -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer of 512 tokens trained on ``clmkit_corpus``; a fresh copy per test."""
    return tiny_tokenizer()


@pytest.fixture
def clmkit_model(clmkit_tokenizer: PreTrainedTokenizerBase) -> Callable[..., PreTrainedModel]:
    """``make(context_length=64, seed=0, architecture="gpt2", **config_overrides)``: a tiny model sized to
    ``clmkit_tokenizer``."""

    def make(context_length: int = 64, seed: int = 0, **overrides: Any) -> PreTrainedModel:
        return tiny_model(clmkit_tokenizer, context_length, seed, **overrides)

    return make


@pytest.fixture
def clmkit_args(tmp_path: Path) -> Callable[..., ClmTrainingArguments]:
    """``make(**overrides)``: ``ClmTrainingArguments`` for a quick, quiet CPU run in ``tmp_path / "out"``.

    Any field can be overridden, ``output_dir`` included.
    """

    def make(**overrides: Any) -> ClmTrainingArguments:
        return tiny_args(overrides.pop("output_dir", tmp_path / "out"), **overrides)

    return make


@pytest.fixture
def clmkit_plugins() -> Callable[..., Plugins]:
    """``make(*plugins)``: a ``Plugins`` holding the built-ins and these plugin objects, nothing installed."""
    from clmkit.plugins import Plugins

    def make(*plugins: object) -> Plugins:
        return Plugins(extra=plugins, autoload=False)

    return make


@pytest.fixture
def clmkit_install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``install(plugin, name, distribution=None)``: the plugin object looks installed for this test.

    It gets a ``clmkit`` entry point ``name`` in a distribution (default ``clmkit-testing-<name>``)
    on ``sys.path``, so plugin discovery finds it in this process; both vanish after the test.
    """
    site = tmp_path / "clmkit-installed-plugins"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def install(plugin: object, name: str, distribution: str | None = None) -> None:
        module = types.ModuleType("clmkit_testing_plugin_" + re.sub(r"\W", "_", name))
        module.plugin = plugin  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, module.__name__, module)
        _write_distribution(site, distribution or f"clmkit-testing-{name}", name, f"{module.__name__}:plugin")
        importlib.invalidate_caches()

    return install
