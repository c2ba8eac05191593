"""`clmkit new-plugin`: a template for every kind, whose tests pass as generated, and the walkthrough from an empty
folder to `clmkit train --loss ... --chunker ...` with a package of one's own."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from support import install_plugin_package, pinned_env

import clmkit
from clmkit.cli import main
from clmkit.errors import ConfigError
from clmkit.plugins import KINDS
from clmkit.templates import KIND_FLAGS, new_plugin
from clmkit.testing import assert_chunker_contract, assert_exact_under_accumulation

# the generated tests of one plugin of each kind, plus one per entry point that it is installed
GENERATED_TESTS = {
    "loss": 5,
    "chunker": 4,
    "collator": 3,
    "filter": 4,
    "param_grouper": 2,
    "optimizer": 3,
    "model": 3,
    "callback": 2,
}


def run_generated_tests(folder: Path, site: Path) -> str:
    """pytest in the generated package's folder, with the package installed into ``site``; its summary line."""
    env = pinned_env(PYTHONPATH=str(site), HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=folder, env=env, capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_the_kinds_are_clmkits_registries_and_callbacks():
    registries = {kind.singular.replace(" ", "_") for kind in KINDS}
    assert set(KIND_FLAGS) == (registries - {"architecture"}) | {"model", "callback"}


def test_one_package_with_every_kind_passes_its_generated_tests(tmp_path):
    for kind in KIND_FLAGS:
        assert new_plugin(f"my-{kind}", tmp_path, kind, package="clmkit-everything", version="2.0.1")
    folder = tmp_path / "clmkit-everything"
    project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["clmkit"] == {f"my_{k}": f"clmkit_everything.my_{k}" for k in KIND_FLAGS}
    major, minor = clmkit.__version__.split(".")[:2]
    assert project["dependencies"] == [f"clmkit>={major}.{minor},<{major}.{int(minor) + 1}"]
    assert project["dynamic"] == ["version"]
    site = tmp_path / "site"
    install_plugin_package(folder, target=site)
    assert (site / "clmkit_everything-2.0.1.dist-info").is_dir()
    total = sum(GENERATED_TESTS.values()) + len(KIND_FLAGS)
    assert run_generated_tests(folder, site).startswith(f"{total} passed")


def test_the_cli_takes_the_name_as_its_first_argument(tmp_path, capsys):
    assert main(["new-plugin", "focal-loss", "--dest", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "clmkit-focal-loss")
    assert (tmp_path / "clmkit-focal-loss" / "src" / "clmkit_focal_loss" / "focal_loss.py").is_file()
    assert main(["new-plugin", "--name", "focal", "--dest", str(tmp_path)]) == 2
    assert main(["new-plugin", "--help"]) == 0
    usage = " ".join(capsys.readouterr().out.split("\n\n")[0].split())
    assert usage.startswith("usage: clmkit new-plugin [-h] [--kind") and usage.endswith("NAME")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["x", "--kind", "tokenizer"], "invalid choice: 'tokenizer'"),
        (["Focal"], "plugin name 'Focal' is not a lowercase name"),
        (["x", "--package", "my package"], "package name 'my package' is not a lowercase name"),
        (["x", "--version", "one"], "version 'one' is no Python package version"),
    ],
)
def test_bad_cli_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    code = main(["new-plugin", *argv, "--dest", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["Focal", "9lives", "two--dashes", "clmkit-", "focal loss", "installed"])
def test_new_plugin_refuses_a_name_that_is_no_module_name(name, tmp_path):
    with pytest.raises(ConfigError, match="not a lowercase name|taken by a file"):
        new_plugin(name, tmp_path)


def test_a_package_takes_another_plugin_but_not_one_of_the_same_name(tmp_path):
    new_plugin("focal", tmp_path, "loss", package="clmkit-mine")
    new_plugin("head", tmp_path, "chunker", package="clmkit-mine")
    with pytest.raises(ConfigError, match="already has a plugin 'focal'"):
        new_plugin("focal", tmp_path, "filter", package="clmkit-mine")


def test_a_folder_that_is_not_the_package_is_refused(tmp_path):
    (tmp_path / "clmkit-focal").mkdir()
    with pytest.raises(ConfigError, match="already exists and is not the plugin package 'clmkit-focal'"):
        new_plugin("focal", tmp_path)


def test_walkthrough_a_loss_and_a_chunker_from_template_to_clmkit_train(tmp_path, corpus_dir, monkeypatch, capsys):
    """The page "Write a chunker plugin" in short: generate, prove with the kit, install, train by name."""
    monkeypatch.delenv("CLMKIT_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("CLMKIT_PLUGINS", raising=False)
    dest = str(tmp_path)
    assert main(["new-plugin", "late-loss", "--kind", "loss", "--package", "clmkit-walk", "--dest", dest]) == 0
    assert main(["new-plugin", "head-chunker", "--kind", "chunker", "--package", "clmkit-walk", "--dest", dest]) == 0
    folder, site = tmp_path / "clmkit-walk", tmp_path / "site"
    install_plugin_package(folder, target=site)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()

    # proven with the kit, by the names the installed entry points register
    differences = assert_exact_under_accumulation("late_loss", loss_kwargs={"skip_first": 2})
    assert differences[0].max_gradient_difference < 1e-5
    stats = assert_chunker_contract("head_chunker", chunker_kwargs={"max_document_tokens": 200})
    assert stats.tokens_dropped > 0
    assert run_generated_tests(folder, site).startswith(
        f"{GENERATED_TESTS['loss'] + GENERATED_TESTS['chunker'] + 2} passed"
    )

    capsys.readouterr()
    out = tmp_path / "run"
    argv = ["train", "--dataset", str(corpus_dir), "--output_dir", str(out), "--model-preset", "test"]
    argv += ["--config_overrides", "num_hidden_layers=1", "--vocab_size", "400", "--context_length", "64"]
    argv += ["--max_steps", "4", "--per_device_train_batch_size", "8", "--valid_split_percentage", "20"]
    argv += ["--max_new_tokens", "4", "--disable_tqdm", "true", "--loss", "late_loss", "--chunker", "head_chunker"]
    argv += ["--loss_kwargs", '{"skip_first": 4}', "--chunker_kwargs", '{"max_document_tokens": 300}']
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        metrics["global_step"] == 4 and math.isfinite(metrics["eval_loss"]) and math.isfinite(metrics["eval_objective"])
    )
    loaded = {p["plugin"]: p["distribution"] for p in metrics["plugins"]}
    assert loaded["late_loss"] == loaded["head_chunker"] == "clmkit-walk"
    assert metrics["data"]["train"]["tokens_dropped"] > 0  # the chunker cut the documents
