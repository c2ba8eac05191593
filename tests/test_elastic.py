"""Elastic resume: the global order of examples does not depend on the number of processes (torchrun, gloo).

A run of 2 processes x batch 8 and a run of 1 process x batch 8 x accumulation 2 must see the same 16 examples
at every step and end with the same parameters; a checkpoint of either resumes on the other and continues the
same sequence to the same parameters (within 1e-6 relative: only the order of the sums differs).
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from safetensors.torch import load_file

SCRIPTS = Path(__file__).parent / "dist_scripts"
sys.path.insert(0, str(SCRIPTS))

from common import write_inputs  # noqa: E402
from elastic import SAVE_STEPS, run  # noqa: E402
from resumable import MAX_STEPS  # noqa: E402
from support import pinned_env  # noqa: E402
from test_distributed import free_port  # noqa: E402

from clmkit.testing import tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, clmkit_corpus) -> Path:
    path = tmp_path_factory.mktemp("inputs")
    write_inputs(path, tiny_tokenizer(), clmkit_corpus)
    return path


def torchrun(workdir: Path, out: Path, path: str, kind: str, resume: Path | None = None) -> None:
    """``elastic.py`` on 2 processes."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    command += [str(free_port()), str(SCRIPTS / "elastic.py"), str(workdir), str(out), path, kind, "2"]
    command += [str(resume)] if resume else []
    done = subprocess.run(command, cwd=SCRIPTS, env=pinned_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]


def global_steps(out: Path, processes: int) -> list[Counter[str]]:
    """The examples of each optimizer step, all processes and micro-batches together (as a multiset)."""
    per_process = [2 // processes] * processes  # micro-batches per step on each process
    files = [out / ("batches.txt" if rank == 0 else f"batches-{rank}.txt") for rank in range(processes)]
    lines = [f.read_text().splitlines() for f in files]
    steps = len(lines[0]) // per_process[0]
    return [
        Counter(
            example
            for rank, size in enumerate(per_process)
            for line in lines[rank][k * size : (k + 1) * size]
            for example in line.split(",")
        )
        for k in range(steps)
    ]


def assert_same_parameters(out: Path, reference: Path) -> None:
    ours, theirs = load_file(out / "model.safetensors"), load_file(reference / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        scale = tensor.abs().max().clamp(min=1e-12)
        assert ((ours[name] - tensor).abs().max() / scale).item() <= 1e-6, name


@pytest.mark.parametrize(("path", "kind"), [("trainer", "map"), ("loop", "streamed")])
def test_elastic_runs_and_resumes(path, kind, workdir, tmp_path):
    two, one, two_on_one, one_on_two = (tmp_path / name for name in ("two", "one", "two-on-one", "one-on-two"))
    for folder in (two, one, two_on_one, one_on_two):
        folder.mkdir()  # the batch logs are written from the first batch on
    torchrun(workdir, two, path, kind)  # 2 processes x batch 8
    run(workdir, one, path, kind, processes=1)  # 1 process x batch 8 x accumulation 2
    steps = global_steps(two, 2)
    assert len(steps) == MAX_STEPS and all(sum(s.values()) == 16 for s in steps)
    assert steps == global_steps(one, 1)  # the same examples at every step
    assert_same_parameters(two, one)

    checkpoint = f"checkpoint-{SAVE_STEPS}"
    run(workdir, two_on_one, path, kind, processes=1, resume=str(two / checkpoint))
    torchrun(workdir, one_on_two, path, kind, resume=one / checkpoint)
    for resumed, processes in ((two_on_one, 1), (one_on_two, 2)):
        assert global_steps(resumed, processes) == steps[SAVE_STEPS:]  # the same sequence continues
        assert_same_parameters(resumed, one)


def test_another_global_batch_is_refused(workdir, tmp_path):
    from resumable import train

    from clmkit.training.checkpoint import CheckpointError

    (tmp_path / "one").mkdir()
    run(workdir, tmp_path / "one", "loop", "map", processes=1)
    checkpoint = str(tmp_path / "one" / f"checkpoint-{SAVE_STEPS}")
    with pytest.raises(CheckpointError, match="global_batch_size: 16 in the checkpoint, 8 now"):
        train(workdir, tmp_path / "other", "loop", save_steps=3, resume=checkpoint, per_device=8, accumulation=1)
