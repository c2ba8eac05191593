"""The plugin system: a real installed distribution, plugin objects, and every way a plugin can be wrong."""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from transformers import TrainerCallback

from clmkit import ClmTrainer, Loss, Plugins, hookimpl
from clmkit.cli import main
from clmkit.errors import PluginError, UnknownNameError

PLUGIN_DIST = Path(__file__).resolve().parent / "plugin_dist"
PLUGIN_MODULE = "clmkit_test_plugin"


@pytest.fixture(scope="session")
def installed_plugin():
    """pip-install tests/plugin_dist (once; CI installs it beforehand) and return its imported module."""
    spec = importlib.util.find_spec(PLUGIN_MODULE)
    current = spec is not None and Path(spec.origin).read_bytes() == (PLUGIN_DIST / f"{PLUGIN_MODULE}.py").read_bytes()
    if not current or "testplugin" not in entry_points(group="clmkit").names:
        offline = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", *offline, "-q", str(PLUGIN_DIST)], check=True
        )
        importlib.invalidate_caches()
    return importlib.import_module(PLUGIN_MODULE)


@pytest.fixture(autouse=True)
def autoload_env(monkeypatch):
    """Each test starts from the default: third-party plugins autoloaded, no allow list."""
    monkeypatch.delenv("CLMKIT_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("CLMKIT_PLUGINS", raising=False)


def install_fake_distribution(root: Path, dist: str, entry_point: str, module: str, source: str | None) -> None:
    """Put a distribution with one ``clmkit`` entry point (and its module, unless None) into ``root``."""
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[clmkit]\n{entry_point} = {module}\n")
    if source is not None:
        (root / f"{module}.py").write_text(source)


@pytest.fixture
def broken_plugin_on_path(tmp_path, monkeypatch):
    """An installed distribution whose plugin module raises at import."""
    install_fake_distribution(
        tmp_path / "site", "clmkit-broken-plugin", "broken", "clmkit_broken_mod", 'raise RuntimeError("boom at import")'
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


def plugin_records(plugins: Plugins) -> dict[str, dict]:
    return {record["plugin"]: record for record in plugins.describe()}


# ---- discovery of the installed distribution ------------------------------------------------------


def test_clmkit_plugins_lists_the_installed_distribution(installed_plugin, capsys):
    assert main(["plugins"]) == 0
    records = {record["plugin"]: record for record in json.loads(capsys.readouterr().out)}
    assert records == plugin_records(Plugins())
    assert records["testplugin"] == {
        "plugin": "testplugin",
        "distribution": "clmkit-test-plugin",
        "version": "0.3.1",
        "hooks": ["clmkit_callbacks", "clmkit_register_chunkers", "clmkit_register_losses"],
        "registered": {"chunkers": ["every_other"], "losses": ["first_half"]},
    }
    builtin = records["clmkit.builtins.losses"]
    assert builtin["distribution"] == "clmkit"
    assert builtin["registered"] == {"losses": ["cross_entropy", "keytoken"]}


def test_installed_plugin_is_used_by_name_in_training(
    installed_plugin, clmkit_tokenizer, clmkit_model, raw_datasets, clmkit_args
):
    args = clmkit_args(chunker="every_other", loss="first_half", max_steps=4, per_device_train_batch_size=4)
    trainer = ClmTrainer(clmkit_model(), args, processing_class=clmkit_tokenizer, train_dataset=raw_datasets["train"])
    result = trainer.train()

    assert isinstance(trainer.chunker, installed_plugin.EveryOther)
    assert isinstance(trainer.loss, installed_plugin.FirstHalf)
    stream = sum(len(ids) + 1 for ids in clmkit_tokenizer(list(raw_datasets["train"]["content"]))["input_ids"])
    assert trainer.data_stats["train"].examples == math.ceil((stream // 64) / 2)
    counters = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, installed_plugin.StepCounter)]
    assert len(counters) == 1 and counters[0].steps == 4
    assert math.isfinite(result.training_loss)


def test_clmkit_plugins_reports_a_broken_plugin(broken_plugin_on_path, capsys):
    assert main(["plugins"]) == 2
    assert "'broken'" in capsys.readouterr().err


# ---- plugin objects through the Python API -----------------------------------------------------------


class CountingCrossEntropy(Loss):
    """Cross-entropy that counts the micro-batches it scored."""

    def __init__(self, tokenizer=None) -> None:
        self.calls = 0

    def loss_sum(self, inputs):
        self.calls += 1
        return super().loss_sum(inputs)


class TrainEndRecorder(TrainerCallback):
    def __init__(self) -> None:
        self.ended_at: int | None = None

    def on_train_end(self, args, state, control, **kwargs):
        self.ended_at = state.global_step


class ObjectPlugin:
    """A plugin passed as an object: a loss and a callback."""

    def __init__(self) -> None:
        self.recorder = TrainEndRecorder()

    @hookimpl
    def clmkit_register_losses(self, register):
        register("counting_ce", CountingCrossEntropy)

    @hookimpl
    def clmkit_callbacks(self, args):
        return [self.recorder]


def test_plugin_objects_passed_to_the_trainer_are_used(
    clmkit_tokenizer, clmkit_model, raw_datasets, clmkit_args, monkeypatch
):
    monkeypatch.setenv("CLMKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugin = ObjectPlugin()
    args = clmkit_args(loss="counting_ce", max_steps=3, gradient_accumulation_steps=2, per_device_train_batch_size=4)
    trainer = ClmTrainer(
        clmkit_model(), args, processing_class=clmkit_tokenizer, train_dataset=raw_datasets["train"], plugins=[plugin]
    )
    trainer.train()
    assert isinstance(trainer.loss, CountingCrossEntropy) and trainer.loss.calls == 6
    assert plugin.recorder.ended_at == 3
    assert plugin_records(trainer.plugins)["ObjectPlugin"]["registered"] == {"losses": ["counting_ce"]}


# ---- names: unknown and duplicate -------------------------------------------------------------------


def test_unknown_name_lists_the_names_that_exist(installed_plugin, clmkit_tokenizer, clmkit_args):
    with pytest.raises(UnknownNameError) as info:
        ClmTrainer(args=clmkit_args(loss="focal"), processing_class=clmkit_tokenizer)
    message = str(info.value)
    assert "unknown loss 'focal'" in message
    for name in ("cross_entropy", "keytoken", "first_half"):
        assert name in message


class DuplicateConcat:
    @hookimpl
    def clmkit_register_chunkers(self, register):
        register("concat", object)


def test_duplicate_name_from_a_plugin_object_names_both_plugins(clmkit_tokenizer, clmkit_args):
    with pytest.raises(PluginError) as info:
        ClmTrainer(args=clmkit_args(), processing_class=clmkit_tokenizer, plugins=[DuplicateConcat()])
    assert "'concat'" in str(info.value)
    assert "clmkit.builtins.chunkers" in str(info.value) and "DuplicateConcat" in str(info.value)


def test_duplicate_name_between_installed_distributions_names_both(installed_plugin, tmp_path, monkeypatch):
    rival = "from clmkit import hookimpl\n\n@hookimpl\ndef clmkit_register_chunkers(register):\n"
    rival += "    register('every_other', list)\n"
    install_fake_distribution(tmp_path, "clmkit-rival-plugin", "rival", "clmkit_rival_mod", rival)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="'every_other' is registered twice") as info:
        Plugins().registry("chunkers")
    assert "'testplugin'" in str(info.value) and "'rival'" in str(info.value)


# ---- broken plugins --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "source", "cause", "detail"),
    [
        ("clmkit_raises_mod", 'raise RuntimeError("boom at import")', RuntimeError, "boom at import"),
        ("clmkit_missing_mod", None, ModuleNotFoundError, "clmkit_missing_mod"),
    ],
)
def test_import_failure_names_entry_point_and_distribution(tmp_path, monkeypatch, module, source, cause, detail):
    install_fake_distribution(tmp_path, "clmkit-broken-plugin", "broken", module, source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as info:
        Plugins()
    message = str(info.value)
    assert "'broken'" in message and f"'{module}'" in message and "'clmkit-broken-plugin'" in message
    assert "CLMKIT_DISABLE_PLUGIN_AUTOLOAD" in message
    assert isinstance(info.value.__cause__, cause) and detail in str(info.value.__cause__)


class MisspelledHook:
    @hookimpl
    def clmkit_register_chunkerz(self, register):
        register("never", object)


class WrongArgument:
    @hookimpl
    def clmkit_register_losses(self, registr):
        registr("never", object)


@pytest.mark.parametrize(
    ("plugin", "detail"), [(MisspelledHook(), "clmkit_register_chunkerz"), (WrongArgument(), "registr")]
)
def test_hookimpl_that_matches_no_hook_names_the_plugin(plugin, detail):
    with pytest.raises(PluginError) as info:
        Plugins(extra=[plugin], autoload=False)
    assert type(plugin).__name__ in str(info.value) and detail in str(info.value)


def test_misspelled_hook_of_an_installed_plugin_names_its_entry_point(tmp_path, monkeypatch):
    source = "from clmkit import hookimpl\n\n@hookimpl\ndef clmkit_callback(args):\n    return []\n"
    install_fake_distribution(tmp_path, "clmkit-typo-plugin", "typo", "clmkit_typo_mod", source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"'typo'.*clmkit_callback"):
        Plugins()


# ---- autoload controls -----------------------------------------------------------------------------


def test_disable_autoload_hides_installed_plugins(installed_plugin, broken_plugin_on_path, monkeypatch):
    monkeypatch.setenv("CLMKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins = Plugins()  # the broken plugin is never imported
    assert {r["distribution"] for r in plugins.describe()} == {"clmkit"}
    with pytest.raises(UnknownNameError, match="every_other"):
        plugins.get("chunkers", "every_other")


def test_allow_list_loads_only_the_named_plugins(installed_plugin, broken_plugin_on_path, monkeypatch):
    monkeypatch.setenv("CLMKIT_PLUGINS", "testplugin")
    plugins = Plugins()
    records = plugin_records(plugins)
    assert "testplugin" in records and "broken" not in records
    assert plugins.get("losses", "first_half").plugin == "testplugin"


def test_allow_list_with_an_unknown_name_is_an_error(installed_plugin, monkeypatch):
    monkeypatch.setenv("CLMKIT_PLUGINS", "testplugin,not_installed")
    with pytest.raises(PluginError, match=r"not_installed.*testplugin"):
        Plugins()
