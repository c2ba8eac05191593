"""The plugin packages of plugins/ installed for real, used by name, and the plugin test kit's fixtures."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from support import PLUGIN_PACKAGES, install_plugin_packages

from clmkit import ClmTrainer, Loss, Plugins, hookimpl
from clmkit.cli import main
from clmkit.testing import assert_exact_under_accumulation

PACKAGES = {"fim": PLUGIN_PACKAGES["clmkit-fim"], "zloss": PLUGIN_PACKAGES["clmkit-zloss"]}


@pytest.fixture(scope="module")
def installed():
    """pip-install each package of plugins/ unless this very version is installed; return their modules."""
    install_plugin_packages()
    import clmkit_fim
    import clmkit_zloss

    return clmkit_fim, clmkit_zloss


@pytest.fixture(autouse=True)
def autoload_env(monkeypatch):
    monkeypatch.delenv("CLMKIT_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("CLMKIT_PLUGINS", raising=False)


def project(folder: Path) -> dict:
    return tomllib.loads((folder / "pyproject.toml").read_text())["project"]


# ---- the packages of plugins/ -----------------------------------------------------------------


@pytest.mark.parametrize("folder", PACKAGES.values(), ids=PACKAGES.keys())
def test_each_package_stands_alone(folder):
    meta = project(folder)
    assert meta["name"] == folder.name and any(dep.startswith("clmkit") for dep in meta["dependencies"])
    assert list(meta["entry-points"]["clmkit"]) == [{"clmkit-fim": "fim", "clmkit-zloss": "zloss"}[folder.name]]
    assert (folder / "README.md").read_text().startswith(f"# {folder.name}")
    assert list((folder / "tests").glob("test_*.py"))


def test_clmkit_plugins_lists_them_with_their_distribution_and_names(installed, capsys):
    assert main(["plugins"]) == 0
    records = {record["plugin"]: record for record in json.loads(capsys.readouterr().out)}
    fim, zloss = records["fim"], records["zloss"]
    clmkit_fim, clmkit_zloss = installed
    assert (fim["distribution"], fim["version"]) == ("clmkit-fim", clmkit_fim.__version__)
    assert (zloss["distribution"], zloss["version"]) == ("clmkit-zloss", clmkit_zloss.__version__)
    assert fim["registered"] == {"chunkers": ["fim"]}
    assert fim["hooks"] == ["clmkit_prepare_model", "clmkit_register_chunkers"]
    assert zloss["registered"] == {"losses": ["z_loss", "label_smoothing"]}


def test_clmkit_trainer_uses_them_by_name(installed, clmkit_tokenizer, clmkit_model, clmkit_args, clmkit_corpus):
    clmkit_fim, clmkit_zloss = installed
    args = clmkit_args(chunker="fim", loss="z_loss", loss_kwargs={"z_coef": 1e-3}, max_steps=4)
    args.logging_strategy, args.logging_steps = "steps", 2
    trainer = ClmTrainer(
        model=clmkit_model(),
        args=args,
        processing_class=clmkit_tokenizer,
        train_dataset=Dataset.from_dict({"content": clmkit_corpus}),
    )
    assert isinstance(trainer.chunker, clmkit_fim.FillInTheMiddle)
    assert isinstance(trainer.loss, clmkit_zloss.ZLoss) and trainer.loss.z_coef == 1e-3
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


def test_clmkit_train_uses_them_by_name_and_the_saved_model_infills(installed, corpus_dir, tmp_path):
    clmkit_fim, _ = installed
    out = tmp_path / "run"
    argv = ["train", "--dataset", str(corpus_dir), "--output_dir", str(out), "--model-preset", "test"]
    argv += [
        "--config_overrides",
        "num_hidden_layers=1",
        "--vocab_size",
        "400",
        "--context_length",
        "64",
        "--max_steps",
        "6",
    ]
    argv += ["--per_device_train_batch_size", "8", "--valid_split_percentage", "20", "--max_new_tokens", "4"]
    argv += ["--chunker", "fim", "--chunker_kwargs", '{"rate": 0.9}', "--loss", "z_loss", "--disable_tqdm", "true"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(metrics["eval_loss"]) and metrics["global_step"] == 6
    loaded = {p["plugin"]: (p["distribution"], p["version"]) for p in metrics["plugins"]}
    assert loaded["fim"] == ("clmkit-fim", clmkit_fim.__version__) and loaded["zloss"][0] == "clmkit-zloss"
    assert f"fim (clmkit-fim {clmkit_fim.__version__})" in (out / "README.md").read_text()  # the model card names it

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert max(clmkit_fim.sentinel_ids(tokenizer)) == len(tokenizer) - 1  # the saved tokenizer has the sentinels
    assert model.get_input_embeddings().num_embeddings >= len(tokenizer)  # and the saved model their embeddings
    assert min(model.generation_config.suppress_tokens or [len(tokenizer)]) == len(tokenizer)  # only padding rows
    assert isinstance(clmkit_fim.infill(model, tokenizer, "def f(x):\n    return ", "\n", max_new_tokens=4), str)


# ---- clmkit.testing -----------------------------------------------------------------------------


def test_pytest_finds_the_kit_through_its_entry_point(pytestconfig):
    assert pytestconfig.pluginmanager.has_plugin("clmkit")


@pytest.mark.parametrize(
    ("loss", "loss_kwargs"), [("cross_entropy", {}), ("keytoken", {"keywords": ["self", "return", "def"]})]
)
def test_builtin_losses_pass_the_exactness_check(loss, loss_kwargs):
    assert_exact_under_accumulation(loss, loss_kwargs=loss_kwargs)


class MeanOfMicroBatchMeans(Loss):
    """The course recipe's mistake: each micro-batch averaged on its own, so a window is a mean of means."""

    def __init__(self, tokenizer=None):
        pass

    def normalizer(self, batch):
        return torch.tensor(1.0)

    def loss_sum(self, inputs):
        return inputs.cross_entropy() / (inputs.targets != -100).sum()


def test_the_exactness_check_catches_a_loss_that_is_not_exact():
    with pytest.raises(AssertionError, match="not exact under gradient accumulation"):
        assert_exact_under_accumulation(MeanOfMicroBatchMeans)


class Shout:
    @hookimpl
    def clmkit_register_losses(self, register):
        register("shout", MeanOfMicroBatchMeans)


def test_install_plugin_fixture_makes_an_object_look_installed_for_one_test(clmkit_install_plugin, capsys):
    clmkit_install_plugin(Shout(), "shout", distribution="clmkit-shout")
    assert main(["plugins"]) == 0
    records = {record["plugin"]: record for record in json.loads(capsys.readouterr().out)}
    assert records["shout"]["distribution"] == "clmkit-shout"
    assert records["shout"]["registered"] == {"losses": ["shout"]}


def test_the_installed_object_is_gone_in_the_next_test():
    assert "shout" not in Plugins().registry("losses")


def test_plugins_fixture_holds_the_builtins_and_the_given_objects_only(installed, clmkit_plugins):
    plugins = clmkit_plugins(Shout())
    assert set(plugins.registry("losses")) == {"cross_entropy", "keytoken", "shout"}
    assert "fim" not in plugins.registry("chunkers")


def test_tokenizer_fixture_is_a_fresh_copy_per_test(clmkit_tokenizer):
    clmkit_tokenizer.add_special_tokens({"extra_special_tokens": ["<only_here>"]})
    assert "<only_here>" in clmkit_tokenizer.get_vocab()


def test_tokenizer_fixture_did_not_keep_the_token_of_the_previous_test(clmkit_tokenizer):
    assert "<only_here>" not in clmkit_tokenizer.get_vocab() and len(clmkit_tokenizer) == 512
