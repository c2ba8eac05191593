"""Exact resume on both paths from a run killed for real, and loop checkpoints that never load half."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers.trainer_utils import get_last_checkpoint

SCRIPTS = Path(__file__).parent / "dist_scripts"
sys.path.insert(0, str(SCRIPTS))

from common import write_inputs  # noqa: E402
from resumable import MAX_STEPS, train  # noqa: E402
from support import pinned_env  # noqa: E402

from clmkit import ClmTrainer  # noqa: E402
from clmkit.testing import tiny_tokenizer  # noqa: E402
from clmkit.training.checkpoint import CheckpointError  # noqa: E402
from clmkit.training.loop import ClmLoop  # noqa: E402

K = 3  # checkpoint step of the killed run: mid-way through its second epoch
BATCHES_BEFORE_K = 6  # 18 examples, global batch 8: 2 steps (4 micro-batches) per epoch, then step 3's 2


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, clmkit_corpus) -> Path:
    path = tmp_path_factory.mktemp("inputs")
    write_inputs(path, tiny_tokenizer(), clmkit_corpus)
    return path


def run_until_killed(workdir: Path, out: Path, path: str, optimizer: str, kind: str = "map") -> None:
    """Start resumable.py, SIGKILL it once its checkpoint at step K is written (it goes on, slowly, till then)."""
    log = (out / "output.txt").open("w")
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "resumable.py"), str(workdir), str(out), path, str(K), optimizer, kind],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=pinned_env(),
    )
    try:
        deadline = time.monotonic() + 240
        while not (out / f"saved-{K}").exists():
            assert process.poll() is None, (out / "output.txt").read_text()[-5000:]
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    assert process.returncode == -signal.SIGKILL


# map: tokenized examples, shuffled (with muon too: MuonAdamW's state and the wsd schedule); then each kind of
# prepared data: filtered raw text, a filtered stream, a packed stream, a mixture of streams with two chunkers
CASES = [("adamw", "map"), ("muon", "map"), ("adamw", "filtered"), ("adamw", "streamed"), ("adamw", "packed")]
CASES += [("adamw", "mixture")]


@pytest.mark.parametrize(("optimizer", "kind"), CASES)
@pytest.mark.parametrize("path", ["trainer", "loop"])
def test_killed_run_resumes_exactly(path, optimizer, kind, workdir, tmp_path):
    killed, uninterrupted = tmp_path / "killed", tmp_path / "uninterrupted"
    killed.mkdir()
    uninterrupted.mkdir()
    run_until_killed(workdir, killed, path, optimizer, kind)
    checkpoint = get_last_checkpoint(str(killed))
    assert checkpoint == str(killed / f"checkpoint-{K}")
    (killed / "batches.txt").unlink()  # from here on it records the resumed run's batches

    resumed = train(workdir, killed, path, save_steps=K, resume=checkpoint, optimizer=optimizer, kind=kind)
    reference = train(workdir, uninterrupted, path, save_steps=K, optimizer=optimizer, kind=kind)

    assert resumed.state.global_step == reference.state.global_step == MAX_STEPS
    ours, theirs = dict(resumed.model.named_parameters()), dict(reference.model.named_parameters())
    worst = max((ours[k] - theirs[k]).abs().max().item() for k in theirs)
    assert worst <= 1e-6, f"{path}: resumed parameters differ from the uninterrupted run's by {worst:.2e}"
    seen = (killed / "batches.txt").read_text().splitlines()
    assert seen == (uninterrupted / "batches.txt").read_text().splitlines()[BATCHES_BEFORE_K:]
    # the logs of steps 1-4 come from the killed run's checkpoint; the token count goes on from there
    logs, expected = ([e for e in r.state.log_history if "loss" in e] for r in (resumed, reference))
    assert [(e["step"], e["tokens_seen"]) for e in logs] == [(e["step"], e["tokens_seen"]) for e in expected]
    assert [e["loss"] for e in logs] == pytest.approx([e["loss"] for e in expected], abs=1e-6)


def test_loop_checkpoints_layout(workdir, tmp_path):
    train(workdir, tmp_path, "loop", save_steps=3)
    assert sorted(int(p.name.split("-")[-1]) for p in tmp_path.glob("*checkpoint-*")) == [3, 6, 9, MAX_STEPS]
    checkpoint = {p.name for p in (tmp_path / "checkpoint-6").iterdir()}
    state = {"model.safetensors", "optimizer.bin", "rng_state_0.json", "scheduler_state.json", "trainer_state.json"}
    assert state | {"config.json", "tokenizer.json", "clmkit_checkpoint.json"} <= checkpoint
    # what clmkit keeps itself is JSON: no pickle of accelerate's (custom_checkpoint_0.pkl, random_states_0.pkl)
    assert not [name for name in checkpoint if name.endswith(".pkl")]
    final = {p.name for p in tmp_path.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= final
    assert "training_args.bin" not in final  # a pickle: training_args.yaml is the record


# ---- bad checkpoints: named problems, nothing loaded (both paths) ---------------------------------

# path -> (class, its optimizer state file, its RNG state file)
PATHS = {
    "trainer": (ClmTrainer, "optimizer.pt", "rng_state.pth"),
    "loop": (ClmLoop, "optimizer.bin", "rng_state_0.json"),
}


@pytest.fixture(params=list(PATHS))
def first_run(request, tmp_path, clmkit_args, clmkit_model, clmkit_tokenizer, raw_datasets):
    """checkpoint-2 of a 2-step run (on the small validation split, to be quick); the class that wrote it."""
    cls = PATHS[request.param][0]
    args = clmkit_args(output_dir=str(tmp_path / "first"), max_steps=2, save_strategy="steps", save_steps=2)
    cls(model=clmkit_model(), args=args, processing_class=clmkit_tokenizer, train_dataset=raw_datasets["valid"]).train()
    return request.param, tmp_path / "first" / "checkpoint-2"


def resume(path: str, checkpoint: Path | bool, model, clmkit_args, tokenizer, raw_datasets, **overrides) -> None:
    args = clmkit_args(max_steps=4, **overrides)
    run = PATHS[path][0](model=model, args=args, processing_class=tokenizer, train_dataset=raw_datasets["valid"])
    run.train(resume_from_checkpoint=checkpoint if checkpoint is True else str(checkpoint))


def test_incomplete_checkpoint_names_what_is_missing_and_loads_nothing(
    first_run, clmkit_args, clmkit_model, clmkit_tokenizer, raw_datasets
):
    path, checkpoint = first_run
    _, optimizer_file, rng_file = PATHS[path]
    (checkpoint / optimizer_file).unlink()
    with (checkpoint / rng_file).open("r+b") as f:
        f.truncate(10)
    model = clmkit_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as error:
        resume(path, checkpoint, model, clmkit_args, clmkit_tokenizer, raw_datasets)
    assert f"missing {optimizer_file}" in str(error.value)
    assert f"truncated {rng_file} (10 of" in str(error.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_folder_without_state_file_is_refused(first_run, clmkit_args, clmkit_model, clmkit_tokenizer, raw_datasets):
    path, checkpoint = first_run
    (checkpoint / "clmkit_checkpoint.json").unlink()  # what a run killed while saving leaves
    with pytest.raises(CheckpointError, match="clmkit_checkpoint.json is missing"):
        resume(path, checkpoint, clmkit_model(), clmkit_args, clmkit_tokenizer, raw_datasets)


def test_other_model_and_chunker_settings_are_named(
    first_run, clmkit_args, clmkit_model, clmkit_tokenizer, raw_datasets
):
    path, checkpoint = first_run
    with pytest.raises(CheckpointError) as error:
        resume(
            path,
            checkpoint,
            clmkit_model(n_embd=32),
            clmkit_args,
            clmkit_tokenizer,
            raw_datasets,
            chunker="overflow",
            optimizer="muon",
        )
    message = str(error.value)
    assert "model n_embd: 64 in the checkpoint, 32 now" in message
    assert "data chunker: 'concat' in the checkpoint, 'overflow' now" in message
    assert "optimizer optimizer: 'adamw' in the checkpoint, 'muon' now" in message  # its state would not load
    assert "context_length" not in message  # only what differs


@pytest.mark.parametrize("path", list(PATHS))
def test_resume_true_without_checkpoint(path, tmp_path, clmkit_args, clmkit_model, clmkit_tokenizer, raw_datasets):
    (tmp_path / "out" / ".partial-checkpoint-9").mkdir(parents=True)  # what the loop leaves when killed mid-save
    with pytest.raises(CheckpointError, match="holds no checkpoint-N folder"):
        resume(path, True, clmkit_model(), clmkit_args, clmkit_tokenizer, raw_datasets)
