"""The checkpoint chain: a kill at any stage of a save leaves a complete checkpoint to resume from, rotation
deletes only clmkit's checkpoints, token counters are exact across resume, and no pickle is left for the user
(both paths)."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from clmkit import ClmTrainer
from clmkit.training import checkpoint
from clmkit.training.checkpoint import (
    STATE_FILE,
    CheckpointError,
    newest_complete_checkpoint,
    resolve_resume,
    rotate_checkpoints,
)
from clmkit.training.interrupt import SaveOnInterrupt
from clmkit.training.loop import ClmLoop

RUNNERS = {"trainer": ClmTrainer, "loop": ClmLoop}
MAX_STEPS = 4


class Killed(BaseException):
    """A kill: the save stops where it is, and no cleanup (``except Exception``, ``except KeyboardInterrupt``) runs."""


@pytest.fixture
def make_run(clmkit_args, clmkit_model, clmkit_tokenizer, raw_datasets):
    """``make(path, out, **overrides)``: a 4-step run on either path, checkpoints every 2 steps."""

    def make(path: str, out: Path, **overrides):
        settings = {"max_steps": MAX_STEPS, "save_strategy": "steps", "save_steps": 2, **overrides}
        args = clmkit_args(output_dir=str(out), **settings)
        return RUNNERS[path](
            model=clmkit_model(), args=args, processing_class=clmkit_tokenizer, train_dataset=raw_datasets["valid"]
        )

    return make


def parameters(run) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in run.model.state_dict().items()}


def record_stages(monkeypatch) -> list[str]:
    stages: list[str] = []
    monkeypatch.setattr(checkpoint, "fault_point", stages.append)
    return stages


def kill_at(monkeypatch, call: int) -> None:
    """Make the ``call``-th stage reached (counted from 0 over the whole run) a kill."""
    reached = []

    def fault(stage: str) -> None:
        reached.append(stage)
        if len(reached) - 1 == call:
            raise Killed(stage)

    monkeypatch.setattr(checkpoint, "fault_point", fault)


def complete(folder: Path) -> bool:
    return not checkpoint.checkpoint_problems(folder)[0]


# ---- a kill at every stage of a save -------------------------------------------------------------------


@pytest.mark.parametrize("path", list(RUNNERS))
def test_a_kill_at_any_stage_of_a_save_leaves_a_complete_checkpoint(path, make_run, tmp_path, monkeypatch):
    """A 6-step run keeping one checkpoint: kill the save of step 4 (which rotates checkpoint-2 away) at each of
    its stages. The newest complete checkpoint is always there, and resuming it ends with the uninterrupted
    run's parameters."""
    stages = record_stages(monkeypatch)
    reference = make_run(path, tmp_path / "reference", max_steps=6, save_total_limit=1)
    reference.train()
    expected = parameters(reference)
    assert sorted(p.name for p in (tmp_path / "reference").glob("*checkpoint-*")) == ["checkpoint-6"]
    starts = [i for i, stage in enumerate(stages) if stage == "partial folder made"]
    assert len(starts) == 3, stages  # the saves of steps 2, 4 and 6
    second = range(starts[1], starts[2])
    renamed_at = starts[1] + stages[starts[1] : starts[2]].index("renamed")  # reached after the rename
    for stage in ("files written", "manifest written", "rotating"):
        assert stage in stages[starts[1] : starts[2]], (stage, stages)

    for call in second:
        out = tmp_path / f"killed-{call}"
        kill_at(monkeypatch, call)
        with pytest.raises(Killed):
            make_run(path, out, max_steps=6, save_total_limit=1).train()
        monkeypatch.setattr(checkpoint, "fault_point", lambda stage: None)

        found, skipped = newest_complete_checkpoint(out)
        assert found is not None, (stages[call], sorted(p.name for p in out.iterdir()))
        assert found.name == ("checkpoint-4" if call >= renamed_at else "checkpoint-2"), stages[call]
        assert all(complete(p) for p in out.glob("checkpoint-*")), stages[call]  # no half folder under that name
        if call < renamed_at:  # the unfinished save is named, never picked
            assert [s.split(":")[0] for s in skipped] == [".partial-checkpoint-4"], (stages[call], skipped)

        resumed = make_run(path, out, max_steps=6, save_total_limit=1)
        resumed.train(resume_from_checkpoint=True)
        assert resumed.state.global_step == 6
        got = parameters(resumed)
        assert all(torch.equal(got[k], v) for k, v in expected.items()), f"{path}: killed at {stages[call]!r}"
        assert newest_complete_checkpoint(out)[0] == out / "checkpoint-6"
        assert not list(out.glob(".deleting-*")), stages[call]  # the next rotation removed what the kill left


@pytest.mark.parametrize("path", list(RUNNERS))
def test_a_kill_while_a_step_is_saved_again_keeps_a_complete_checkpoint(path, make_run, tmp_path, monkeypatch):
    """Resumed from checkpoint-2, a run saves step 4 again over the old checkpoint-4: killed at any stage of
    that save, a complete checkpoint remains."""
    out = tmp_path / "out"
    make_run(path, out).train()
    stages = record_stages(monkeypatch)
    probe = copy_run(out, tmp_path / "probe")
    make_run(path, probe).train(resume_from_checkpoint=str(probe / "checkpoint-2"))
    assert "previous copy moved aside" in stages
    for call in range(len(stages)):
        work = copy_run(out, tmp_path / f"killed-{call}")
        kill_at(monkeypatch, call)
        with pytest.raises(Killed):
            make_run(path, work).train(resume_from_checkpoint=str(work / "checkpoint-2"))
        monkeypatch.setattr(checkpoint, "fault_point", lambda stage: None)
        found, _ = newest_complete_checkpoint(work)
        assert found is not None and found.name in {"checkpoint-2", "checkpoint-4"}, stages[call]
        assert complete(work / "checkpoint-2")
        if (work / "checkpoint-4").exists():
            assert complete(work / "checkpoint-4"), stages[call]  # the old copy or the new one, never half


def copy_run(out: Path, to: Path) -> Path:
    shutil.copytree(out, to)
    return to


def test_an_exception_during_a_save_leaves_no_unfinished_folder(make_run, tmp_path, monkeypatch):
    def fail(stage: str) -> None:
        if stage == "files written" and (tmp_path / "out" / "checkpoint-2").exists():
            raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "fault_point", fail)
    with pytest.raises(OSError, match="disk full"):
        make_run("trainer", tmp_path / "out").train()
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if "checkpoint" in p.name) == ["checkpoint-2"]


# ---- which checkpoint `last` takes -------------------------------------------------------------------------


@pytest.mark.parametrize("path", list(RUNNERS))
def test_last_takes_the_newest_complete_checkpoint_and_names_what_it_skipped(path, make_run, tmp_path, caplog):
    out = tmp_path / "out"
    make_run(path, out, max_steps=6).train()
    (out / "checkpoint-6" / STATE_FILE).unlink()  # a save killed before clmkit's manifest (an older clmkit)
    with (out / "checkpoint-4" / "model.safetensors").open("r+b") as f:  # same size, other content
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    (out / "checkpoint-9").mkdir()  # a user's folder
    (out / ".partial-checkpoint-8").mkdir()  # a save a kill interrupted

    found, skipped = newest_complete_checkpoint(out)
    assert found == out / "checkpoint-2"
    assert [s.split(":")[0] for s in skipped] == [
        ".partial-checkpoint-8",
        "checkpoint-9",
        "checkpoint-6",
        "checkpoint-4",
    ]
    assert "changed model.safetensors (same size, other content)" in skipped[-1]
    assert f"{STATE_FILE} is missing" in skipped[2]

    resumed = make_run(path, out, max_steps=6)
    with caplog.at_level("WARNING"):
        assert resumed.check_resume(True) == str(out / "checkpoint-2")
    assert "checkpoint-6" in caplog.text and "checkpoint-4" in caplog.text
    assert resolve_resume("last", out) == (out / "checkpoint-2", skipped)


def test_no_complete_checkpoint_is_named_with_what_was_skipped(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    with pytest.raises(CheckpointError) as error:
        resolve_resume("last", tmp_path)
    message = str(error.value)
    assert "holds no checkpoint-N folder that is complete" in message and "checkpoint-3" in message
    assert "Start without resuming" in message


# ---- rotation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", list(RUNNERS))
def test_rotation_deletes_only_clmkit_checkpoints(path, make_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("checkpoint-old", "checkpoint-1", "checkpoint-7"):  # users' folders, no clmkit manifest
        (out / name).mkdir()
        (out / name / "notes.txt").write_text("mine\n")
    make_run(path, out, max_steps=6, save_total_limit=1).train()
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == [
        "checkpoint-1",
        "checkpoint-6",
        "checkpoint-7",
        "checkpoint-old",
    ]
    assert all(
        (out / n / "notes.txt").read_text() == "mine\n" for n in ("checkpoint-old", "checkpoint-1", "checkpoint-7")
    )


def test_rotation_keeps_the_limit_the_newest_and_what_it_is_told(tmp_path):
    for step in (2, 4, 6, 8):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        checkpoint.write_checkpoint_state(folder, {"global_step": step}, {})
    (tmp_path / ".deleting-checkpoint-1").mkdir()  # a rotation a kill interrupted: clmkit's owner file is left
    (tmp_path / ".deleting-checkpoint-1" / checkpoint.OWNER_FILE).touch()
    (tmp_path / ".deleting-checkpoint-3").mkdir()  # a user's folder of that name: never deleted
    (tmp_path / ".deleting-checkpoint-3" / "notes.txt").write_text("mine\n")
    deleted = rotate_checkpoints(tmp_path, 2, keep=[tmp_path / "checkpoint-2"])
    assert [p.name for p in deleted] == ["checkpoint-4", "checkpoint-6"]
    assert (tmp_path / ".deleting-checkpoint-3" / "notes.txt").read_text() == "mine\n"
    shutil.rmtree(tmp_path / ".deleting-checkpoint-3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-8"]
    assert rotate_checkpoints(tmp_path, None) == [] and rotate_checkpoints(tmp_path, 1, keep=[None]) == [
        tmp_path / "checkpoint-2"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-8"]  # the newest is never deleted


@pytest.mark.parametrize(
    ("folder", "refusal"),
    [
        ("checkpoint-2", "is not a clmkit checkpoint, so clmkit will not replace it"),
        # a ``.partial-checkpoint-N`` goes only when its owner file says a save of clmkit's left it
        (".partial-checkpoint-2", "clmkit did not write it .* will not delete or replace it. Move it"),
    ],
)
@pytest.mark.parametrize("path", list(RUNNERS))
def test_a_user_folder_with_a_checkpoint_name_is_never_replaced_or_deleted(path, folder, refusal, make_run, tmp_path):
    out = tmp_path / "out"
    (out / folder).mkdir(parents=True)
    (out / folder / "notes.txt").write_text("mine\n")
    with pytest.raises(CheckpointError, match=refusal):
        make_run(path, out).train()
    assert [p.name for p in (out / folder).iterdir()] == ["notes.txt"]
    if folder == "checkpoint-2":  # refused before the save began: no partial folder of its own was left either
        assert not (out / ".partial-checkpoint-2").exists()


# ---- exact counters, no pickles in the output ------------------------------------------------------------


@pytest.mark.parametrize("path", list(RUNNERS))
def test_resuming_a_finished_run_trains_no_step(path, make_run, tmp_path):
    """Both paths looked for the end only after a step: a resume from the final checkpoint trained one more."""
    finished = make_run(path, tmp_path)
    finished.train()
    resumed = make_run(path, tmp_path)
    output = resumed.train(resume_from_checkpoint=str(tmp_path / f"checkpoint-{MAX_STEPS}"))
    assert resumed.state.global_step == output.global_step == MAX_STEPS
    assert not (tmp_path / f"checkpoint-{MAX_STEPS + 1}").exists()
    expected, got = parameters(finished), parameters(resumed)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("path", list(RUNNERS))
def test_token_counters_are_exact_across_resume(path, make_run, tmp_path):
    """No log step before the checkpoint (logging_strategy "no"): the counts since the last log are kept too."""
    counts = ("tokens_seen", "target_tokens_seen", "token_slots_seen")
    uninterrupted = make_run(path, tmp_path / "uninterrupted")
    uninterrupted.train()
    expected = uninterrupted.token_counter.logs(uninterrupted.accelerator)
    make_run(path, tmp_path / "first").train()
    resumed = make_run(path, tmp_path / "first")
    resumed.train(resume_from_checkpoint=str(tmp_path / "first" / "checkpoint-2"))
    got = resumed.token_counter.logs(resumed.accelerator)
    assert {k: got[k] for k in counts} == {k: expected[k] for k in counts}
    assert 0 < expected["target_tokens_seen"] < expected["tokens_seen"] <= expected["token_slots_seen"]


@pytest.mark.parametrize("path", list(RUNNERS))
def test_no_training_args_pickle_in_the_output(path, make_run, tmp_path):
    out = tmp_path / "out"
    run = make_run(path, out)
    run.train()
    run.save_model()
    assert not list(out.rglob("training_args.bin"))
    assert not [p for p in out.rglob("*") if p.suffix == ".pkl"]


def test_save_model_leaves_a_training_args_bin_it_did_not_write(make_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "training_args.bin").write_bytes(b"the user's")
    make_run("trainer", out).save_model()
    assert (out / "training_args.bin").read_bytes() == b"the user's"
    assert (out / "model.safetensors").is_file() and not list(out.glob(".training_args*"))


@pytest.mark.parametrize("path", list(RUNNERS))
@pytest.mark.parametrize("stage", ["model written", "files written", "manifest written"])
def test_a_second_ctrl_c_during_the_save_leaves_the_previous_checkpoint(path, stage, make_run, tmp_path, monkeypatch):
    """Ctrl-C after step 3 asks for a checkpoint; Ctrl-C again while it is written stops at once: the unfinished
    folder goes, and the newest complete checkpoint (what a resume command may name) is checkpoint-2."""
    interrupt = SaveOnInterrupt()

    class CtrlCAfterStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                interrupt._handle(signal.SIGINT, None)

    def second_ctrl_c(reached: str) -> None:
        if reached == stage and interrupt.requested:
            interrupt._handle(signal.SIGINT, None)

    if path == "loop" and stage == "model written":
        stage = "model and optimizer written"
    monkeypatch.setattr(checkpoint, "fault_point", second_ctrl_c)
    out = tmp_path / "out"
    run = make_run(path, out)
    run.add_callback(CtrlCAfterStep3())
    run.add_callback(interrupt)
    with pytest.raises(KeyboardInterrupt):
        run.train()
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-2"]
    assert newest_complete_checkpoint(out) == (out / "checkpoint-2", [])
