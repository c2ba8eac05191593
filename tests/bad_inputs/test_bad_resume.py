"""Resuming from the command line: a refused resume changes nothing, ``last`` takes the newest complete
checkpoint and names the ones it skipped, damage is found before anything is read."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
from cli_flags import TINY
from support.bad_inputs import assert_refused, assert_unchanged, run_cli, snapshot

from clmkit.outputs import default_mode


@pytest.fixture(scope="module")
def finished(tmp_path_factory, corpus_dir):
    """A 4-step run of `clmkit train` that kept checkpoint-3 and checkpoint-4."""
    root = tmp_path_factory.mktemp("resume")
    args = ["train", "--dataset", str(corpus_dir), *TINY, "--max_steps", "4", "--save_total_limit", "2"]
    result = run_cli([*args, "--output_dir", str(root / "run")])
    assert result.code == 0, result.stderr
    assert sorted(p.name for p in (root / "run").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    return root / "run", args


@pytest.fixture
def run(finished, tmp_path):
    """A private copy of the finished run, and the arguments that made it."""
    folder, args = finished
    copy = tmp_path / "run"
    shutil.copytree(folder, copy)
    return copy, args


def damage(path: Path) -> None:
    """Flip one byte in the middle: same size, other content."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_model_and_checkpoint_files_follow_the_umask(finished):
    folder, _ = finished
    for path in (folder / "model.safetensors", folder / "checkpoint-4" / "model.safetensors", folder / "metrics.json"):
        assert stat.S_IMODE(path.stat().st_mode) == default_mode(), path


def test_a_resume_with_other_settings_is_refused_and_changes_nothing(run):
    folder, args = run
    before = snapshot(folder.parent)
    resume = [*args, "--per_device_train_batch_size", "4", "--max_steps", "6", "--output_dir", str(folder)]
    result = run_cli([*resume, "--resume_from_checkpoint", "last"])
    assert_refused(result, "other settings", "global_batch_size: 8 in the checkpoint, 4 now", "any split of")
    assert_unchanged(before, snapshot(folder.parent))  # training_args.yaml too: the documented resume still works


def test_a_damaged_checkpoint_is_refused_before_anything_reads_it(run):
    folder, args = run
    damage(folder / "checkpoint-4" / "model.safetensors")
    before = snapshot(folder.parent)
    resume = [*args, "--max_steps", "6", "--output_dir", str(folder), "--resume_from_checkpoint"]
    assert_refused(run_cli([*resume, str(folder / "checkpoint-4")]), "model.safetensors", "changed")
    assert_unchanged(before, snapshot(folder.parent))


def test_last_skips_incomplete_checkpoints_and_names_them(run):
    folder, args = run
    damage(folder / "checkpoint-4" / "model.safetensors")
    (folder / "checkpoint-9").mkdir()  # a user's folder: no manifest
    (folder / "checkpoint-9" / "notes.txt").write_text("mine")
    result = run_cli([*args, "--max_steps", "5", "--output_dir", str(folder), "--resume_from_checkpoint", "last"])
    assert result.code == 0, result.stderr
    assert "skipped checkpoint checkpoint-9" in result.stderr and "skipped checkpoint checkpoint-4" in result.stderr
    assert (folder / "checkpoint-9" / "notes.txt").read_text() == "mine"  # never rotated away


def test_a_half_written_checkpoint_is_never_named_as_the_one_to_resume(run):
    folder, args = run
    cut = folder / ".partial-checkpoint-5"  # a save of step 5 killed before its manifest (written last)
    shutil.copytree(folder / "checkpoint-4", cut)
    (cut / "clmkit_checkpoint.json").unlink()
    result = run_cli([*args, "--max_steps", "5", "--output_dir", str(folder), "--resume_from_checkpoint", "last"])
    assert result.code == 0, result.stderr
    assert (folder / "checkpoint-5" / "clmkit_checkpoint.json").is_file() and not cut.exists()
