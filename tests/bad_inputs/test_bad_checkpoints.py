"""Bad checkpoints, both paths: damage of any kind is refused before anything is loaded, with nothing changed
on disk, and no file of a checkpoint can run code when resumed, even one whose manifest was rewritten."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from support.bad_inputs import assert_unchanged, snapshot

from clmkit import ClmTrainer
from clmkit.training.checkpoint import STATE_FILE, CheckpointError, verify_checkpoint, write_checkpoint_state
from clmkit.training.loop import ClmLoop

RUNNERS = {"trainer": ClmTrainer, "loop": ClmLoop}
# every pickle-format name a checkpoint folder of transformers or accelerate may hold, per path
PICKLES = {
    "trainer": [
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "scaler.pt",
        "pytorch_model.bin",
        "training_args.bin",
        "custom_checkpoint_0.pkl",
        "random_states_0.pkl",
    ],
    "loop": [
        "optimizer.bin",
        "scheduler.bin",
        "sampler.bin",
        "scaler.pt",
        "dl_state_dict.bin",
        "pytorch_model.bin",
        "training_args.bin",
        "custom_checkpoint_0.pkl",
        "random_states_0.pkl",
    ],
}


class Payload:
    """Unpickled without restriction, it creates ``marker``: what a tampered checkpoint file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.fixture(params=list(RUNNERS))
def saved(request, tmp_path, clmkit_args, clmkit_model, clmkit_tokenizer, raw_datasets):
    """``(path, checkpoint-2, resume)`` of a 2-step run; ``resume()`` continues it in place to step 4."""
    path, out = request.param, tmp_path / "run"

    def make(model=None, **overrides):
        args = clmkit_args(output_dir=str(out), save_strategy="steps", save_steps=2, **overrides)
        return RUNNERS[path](
            model=model or clmkit_model(),
            args=args,
            processing_class=clmkit_tokenizer,
            train_dataset=raw_datasets["valid"],
        )

    make(max_steps=2).train()

    def resume(model=None):
        make(model, max_steps=4).train(resume_from_checkpoint=str(out / "checkpoint-2"))

    return path, out / "checkpoint-2", resume


def refused_unchanged(checkpoint: Path, resume, *words: str, model=None) -> str:
    """The resume raises ``CheckpointError`` holding ``words``; no file of the run changed, the model neither."""
    before = snapshot(checkpoint.parent)
    weights = {k: v.clone() for k, v in model.state_dict().items()} if model is not None else {}
    with pytest.raises(CheckpointError) as error:
        resume(model)
    for word in words:
        assert word in str(error.value), (word, str(error.value))
    assert "Nothing was loaded" in str(error.value)
    assert_unchanged(before, snapshot(checkpoint.parent))
    assert all(torch.equal(weights[k], v) for k, v in (model.state_dict().items() if model is not None else []))
    return str(error.value)


def flip_last_byte(path: Path) -> None:
    with path.open("r+b") as f:
        f.seek(-1, 2)
        byte = f.read(1)[0]
        f.seek(-1, 2)
        f.write(bytes([byte ^ 0xFF]))


def test_same_size_damage_is_refused_before_loading(saved, clmkit_model):
    path, checkpoint, resume = saved
    size = (checkpoint / "model.safetensors").stat().st_size
    flip_last_byte(checkpoint / "model.safetensors")
    assert (checkpoint / "model.safetensors").stat().st_size == size
    message = refused_unchanged(
        checkpoint, resume, "changed model.safetensors (same size, other content)", model=clmkit_model()
    )
    assert "Resume from another checkpoint-N folder" in message


def test_a_file_the_save_did_not_write_is_refused(saved, tmp_path):
    path, checkpoint, resume = saved
    marker = tmp_path / "ran"
    torch.save(Payload(marker), checkpoint / "custom_checkpoint_0.pkl")
    refused_unchanged(checkpoint, resume, "unexpected custom_checkpoint_0.pkl (not written by the save)")
    assert not marker.exists()


@pytest.mark.parametrize("which", ["optimizer", "rng"])
def test_a_replaced_pickle_is_refused(saved, tmp_path, which):
    path, checkpoint, resume = saved
    name = {
        "trainer": {"optimizer": "optimizer.pt", "rng": "rng_state.pth"},
        "loop": {"optimizer": "optimizer.bin", "rng": "rng_state_0.json"},
    }[path][which]
    marker = tmp_path / "ran"
    torch.save(Payload(marker), checkpoint / name)
    message = refused_unchanged(checkpoint, resume, name)
    assert "truncated" in message or "changed" in message
    assert not marker.exists()


def test_the_payload_would_run_if_unpickled(tmp_path):
    """The check of the tests below is real: unrestricted unpickling of the planted file runs its code."""
    torch.save(Payload(tmp_path / "ran"), tmp_path / "payload.pt")
    torch.load(tmp_path / "payload.pt", weights_only=False)
    assert (tmp_path / "ran").exists()


def test_no_planted_pickle_runs_even_with_a_rewritten_manifest(saved, tmp_path):
    """The attacker plants a payload under each pickle name and rewrites the manifest to match: resuming may
    fail or go on, but the payload never runs."""
    path, checkpoint, resume = saved
    pristine = tmp_path / "pristine"
    shutil.copytree(checkpoint.parent, pristine)
    for name in PICKLES[path]:
        shutil.rmtree(checkpoint.parent)
        shutil.copytree(pristine, checkpoint.parent)
        marker = tmp_path / f"ran-{name}"
        torch.save(Payload(marker), checkpoint / name)
        state = json.loads((checkpoint / STATE_FILE).read_text())
        write_checkpoint_state(checkpoint, state["position"], state["settings"])
        verify_checkpoint(checkpoint)  # the manifest matches: only loading stands between the file and the run
        try:
            resume()
        except Exception:  # noqa: BLE001  # refusing is fine; running the payload is not
            pass
        assert not marker.exists(), f"{path}: the planted {name} ran code on resume"


def test_a_manifest_of_an_older_clmkit_is_refused(saved):
    path, checkpoint, resume = saved
    state = json.loads((checkpoint / STATE_FILE).read_text())
    state["files"] = {name: entry["size"] for name, entry in state["files"].items()}
    del state["format"], state["version"]
    (checkpoint / STATE_FILE).write_text(json.dumps(state))
    refused_unchanged(checkpoint, resume, "written by an older clmkit", "the data position", "start a new run")


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ("{ not json", ("is damaged or not clmkit's",)),
        (json.dumps({"files": {}}), ("is damaged or not clmkit's",)),
        ("outside", ("names files outside the folder: ../outside.txt",)),
    ],
)
def test_a_damaged_manifest_is_refused(saved, damage, words):
    path, checkpoint, resume = saved
    if damage == "outside":
        state = json.loads((checkpoint / STATE_FILE).read_text())
        state["files"]["../outside.txt"] = {"size": 1, "sha256": "0" * 64}
        damage = json.dumps(state)
    (checkpoint / STATE_FILE).write_text(damage)
    refused_unchanged(checkpoint, resume, *words)


def test_a_missing_checkpoint_folder_is_named(saved):
    path, checkpoint, resume = saved
    shutil.rmtree(checkpoint)
    message = refused_unchanged(checkpoint, resume, "does not exist")
    assert "resume_from_checkpoint=True" in message
