"""CLI paths into the other subsystems: the Accelerate loop, chunker comparison, the plugin template."""

from __future__ import annotations

import json
import tomllib

import pytest
from cli_flags import TINY

from clmkit.cli import main


def test_train_with_the_accelerate_loop_leaves_the_same_layout(corpus_dir, tmp_path):
    trainer_out, loop_out = tmp_path / "trainer", tmp_path / "loop"
    common = ["train", "--dataset", str(corpus_dir), *TINY, "--max_steps", "10"]
    assert main([*common, "--output_dir", str(trainer_out)]) == 0
    assert main([*common, "--output_dir", str(loop_out), "--loop", "accelerate"]) == 0
    made_by_trainer = {p.name for p in trainer_out.iterdir() if not p.name.startswith("checkpoint-")}
    made_by_loop = {p.name for p in loop_out.iterdir() if not p.name.startswith("checkpoint-")}
    assert {"model.safetensors", "config.json", "metrics.json", "loss_curve.png", "README.md"} <= made_by_loop
    assert made_by_trainer <= made_by_loop
    trainer_metrics = json.loads((trainer_out / "metrics.json").read_text())
    loop_metrics = json.loads((loop_out / "metrics.json").read_text())
    assert loop_metrics["global_step"] == trainer_metrics["global_step"] == 10
    assert loop_metrics["eval_loss"] == pytest.approx(trainer_metrics["eval_loss"], abs=1e-3)


def test_loop_refuses_a_trainer_only_option(corpus_dir, tmp_path, capsys):
    args = ["train", "--dataset", str(corpus_dir), *TINY, "--max_steps", "2", "--loop", "accelerate"]
    assert main([*args, "--output_dir", str(tmp_path / "o"), "--save_only_model", "true"]) == 2
    err = capsys.readouterr().err
    assert "save_only_model" in err and "Traceback" not in err


def test_prepare_compare_prints_one_row_per_chunker_and_saves_nothing(corpus_dir, tmp_path, capsys):
    out = tmp_path / "prepared"
    argv = ["prepare", "--dataset", str(corpus_dir), "--vocab_size", "512", "--context_length", "64"]
    assert main([*argv, "--output_dir", str(out), "--compare", "overflow,concat,packed"]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [row.split("|")[1].strip() for row in rows] == ["`overflow`", "`concat`", "`packed`"]
    assert not out.exists()


def test_new_plugin_writes_an_installable_package(tmp_path, capsys):
    assert main(["new-plugin", "focal-loss", "--dest", str(tmp_path)]) == 0
    package = tmp_path / "clmkit-focal-loss"
    assert capsys.readouterr().out.strip() == str(package)
    project = tomllib.loads((package / "pyproject.toml").read_text())
    assert "clmkit" in project["project"]["entry-points"]
    assert main(["new-plugin", "focal-loss", "--dest", str(tmp_path)]) == 2  # never overwrites
