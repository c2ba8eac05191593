"""Output folders: clmkit removes or replaces only what it wrote, never a protected folder or an input, one run
at a time, with the permissions of the user's umask."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_flags import TINY
from support.bad_inputs import assert_refused, assert_unchanged, run_cli, snapshot

from clmkit.outputs import LOCK, MARKER, OutputFolder
from clmkit.report import write_text

PREPARE = ["prepare", "--vocab_size", "300", "--context_length", "32", "--valid_split_percentage", "30"]


def prepare(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [*PREPARE, "--dataset", str(corpus), "--output_dir", str(out), *extra]


@pytest.fixture
def workspace(tmp_path, corpus_dir, monkeypatch):
    """A working directory with a user's file and a copy of the corpus, and a home directory beside it."""
    root = tmp_path / "work"
    (root / "corpus").mkdir(parents=True)
    for path in corpus_dir.iterdir():
        (root / "corpus" / path.name).write_bytes(path.read_bytes())
    (root / "notes.txt").write_text("mine")
    monkeypatch.chdir(root)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return root


@pytest.mark.parametrize(
    ("output", "words"),
    [
        (".", ["the current directory"]),
        ("..", ["an ancestor of the current directory"]),
        ("~", ["the home directory"]),
        ("corpus", ["holds the run's input"]),
        ("corpus/..", ["current directory"]),
    ],
)
def test_prepare_overwrite_never_touches_protected_folders(workspace, output, words):
    before = snapshot(workspace.parent)
    result = run_cli([*PREPARE, "--dataset", "corpus", "--output_dir", output, "--overwrite"])
    assert_refused(result, *words, "--output_dir")
    assert_unchanged(before, snapshot(workspace.parent))


@pytest.mark.parametrize("output", [".", "~", "corpus"])
def test_train_overwrite_never_touches_protected_folders(workspace, output):
    before = snapshot(workspace.parent)
    result = run_cli(["train", "--dataset", "corpus", *TINY, "--max_steps", "1", "--output_dir", output, "--overwrite"])
    assert_refused(result, "--overwrite would replace files in", "--output_dir")
    assert_unchanged(before, snapshot(workspace.parent))


def test_prepare_without_overwrite_refuses_a_non_empty_folder(workspace):
    (workspace / "out").mkdir()
    (workspace / "out" / "keep.txt").write_text("keep")
    before = snapshot(workspace)
    assert_refused(run_cli(prepare(Path("corpus"), Path("out"))), "is not empty", "--overwrite")
    assert_unchanged(before, snapshot(workspace))


def test_prepare_refuses_to_replace_a_users_file_even_with_overwrite(workspace):
    (workspace / "out").mkdir()
    (workspace / "out" / "dataset_dict.json").write_text("{}")  # a name clmkit prepare writes
    before = snapshot(workspace)
    assert_refused(run_cli(prepare(Path("corpus"), Path("out"), "--overwrite")), "dataset_dict.json", "did not write")
    assert_unchanged(before, snapshot(workspace))


def test_prepare_overwrite_replaces_its_own_files_and_keeps_the_users(workspace):
    out = workspace / "out"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    assert run_cli(prepare(Path("corpus"), out, "--overwrite")).code == 0
    first = snapshot(out)
    assert {"dataset_dict.json", MARKER, "keep.txt"} <= {p.split("/")[0] for p in first}
    assert_refused(run_cli(prepare(Path("corpus"), out)), "is not empty")  # no silent replacement
    assert run_cli(prepare(Path("corpus"), out, "--overwrite", "--context_length", "16")).code == 0
    assert (out / "keep.txt").read_text() == "keep"
    assert snapshot(out)["prepare_stats.json"] != first["prepare_stats.json"]
    assert OutputFolder(out, "prepared").foreign() == ["keep.txt"]


def test_train_refuses_to_replace_a_users_file_even_with_overwrite(workspace):
    out = workspace / "run"
    out.mkdir()
    (out / "README.md").write_text("my project's readme")
    before = snapshot(workspace)
    result = run_cli(["train", "--dataset", "corpus", *TINY, "--max_steps", "1", "--output_dir", "run", "--overwrite"])
    assert_refused(result, "README.md", "clmkit did not write", "Move them away")
    assert_unchanged(before, snapshot(workspace))


def test_a_finished_run_is_replaced_only_with_overwrite_and_a_users_checkpoint_folder_stays(workspace):
    args = ["train", "--dataset", "corpus", *TINY, "--max_steps", "2", "--output_dir", "run"]
    assert run_cli(args).code == 0
    before = snapshot(workspace)
    assert_refused(run_cli(args), "already holds this run", "model.safetensors", "--overwrite")
    assert_unchanged(before, snapshot(workspace))
    user = workspace / "run" / "checkpoint-old"
    user.mkdir()
    (user / "weights.txt").write_text("the user's")
    assert_refused(run_cli([*args, "--overwrite"]), "checkpoint-old", "did not write")
    user.rename(workspace / "run" / "old-weights")
    result = run_cli([*args, "--overwrite"])
    assert result.code == 0, result.stderr
    assert "--overwrite: removed the previous run's" in result.stderr
    assert (workspace / "run" / "old-weights" / "weights.txt").read_text() == "the user's"


def test_remove_owned_keeps_what_clmkit_did_not_write(tmp_path):
    folder = OutputFolder(tmp_path / "out", "train")
    folder.path.mkdir()
    (folder.path / "metrics.json").write_text("{}")
    (folder.path / "checkpoint-old").mkdir()  # no clmkit manifest: a user's folder
    (folder.path / "notes.txt").write_text("mine")
    folder.record(["metrics.json"])
    assert folder.remove_owned() == ["metrics.json"]
    assert sorted(p.name for p in folder.path.iterdir()) == [MARKER, "checkpoint-old", "notes.txt"]


LOCK_HOLDER = """
import sys, time
from clmkit.outputs import OutputFolder
with OutputFolder(sys.argv[1], "prepared").locked():
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_run_into_a_locked_folder_is_refused_and_a_dead_runs_lock_is_not_stale(workspace):
    out = workspace / "out"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = snapshot(workspace)
        result = run_cli(prepare(Path("corpus"), out))
        assert_refused(result, "in use by another clmkit run", f"process {holder.pid}", "another --output_dir")
        assert_unchanged(before, snapshot(workspace))
    finally:
        holder.kill()
        holder.wait()
    assert (out / LOCK).is_file()  # the killed run's lock file stays, but its OS lock died with it
    assert run_cli(prepare(Path("corpus"), out)).code == 0


def test_a_failed_start_leaves_no_output_folder(workspace):
    result = run_cli(["train", "--dataset", "corpus", *TINY, "--loss_kwargs", '{"alpha": 1}', "--output_dir", "new"])
    assert result.code == 2
    assert not (workspace / "new").exists()


def test_written_files_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
        os.umask(0o077)
        write_text(tmp_path / "b.txt", "x")
        assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o600
    finally:
        os.umask(previous)


def test_saved_models_and_checkpoints_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        folder = OutputFolder(tmp_path / "out", "train")
        folder.path.mkdir()

        def write(tmp: str) -> None:  # as safetensors does: a 0600 file
            (Path(tmp) / "model.safetensors").write_bytes(b"weights")
            os.chmod(Path(tmp) / "model.safetensors", 0o600)

        folder.write_with(write)
        assert stat.S_IMODE((folder.path / "model.safetensors").stat().st_mode) == 0o644
    finally:
        os.umask(previous)


def test_lock_is_released_after_the_run(workspace):
    folder = OutputFolder(workspace / "out", "prepared")
    started = time.monotonic()
    for _ in range(2):  # taken twice in a row: released in between
        with folder.locked():
            folder.record(["x"])
    assert time.monotonic() - started < 5


def test_two_runs_started_together_into_one_folder(workspace):
    """Both pass the early checks; the lock lets one train, the other exits 2 naming it (or, if the first
    already finished, its finished model) — never two 'model saved'."""
    from support import pinned_env

    command = [sys.executable, "-m", "clmkit.cli", "train", "--dataset", "corpus", *TINY, "--max_steps", "8"]
    runs = [
        subprocess.Popen([*command, "--output_dir", "run"], stderr=subprocess.PIPE, text=True, env=pinned_env())
        for _ in range(2)
    ]
    results = [(run.wait(timeout=300), run.stderr.read() if run.stderr else "") for run in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "Traceback" not in refused
    assert "in use by another clmkit run" in refused or "already holds this run" in refused
    assert (workspace / "run" / "model.safetensors").is_file() and (workspace / "notes.txt").read_text() == "mine"
