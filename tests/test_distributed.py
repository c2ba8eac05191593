"""Both training paths on 2 CPU processes (gloo), under torchrun and under accelerate launch.

One launch per launcher runs tests/dist_scripts/first_step.py, which trains every built-in loss on
both paths; this process runs the same script with one process for the reference. Two processes
with 16 examples each must hold, before the first optimizer step, the gradients of one process with
32 examples (so every loss normalizer spans both processes); evaluation over an eval set that does
not divide evenly over the processes must give the single-process metrics; and gradient
accumulation must all-reduce once per optimizer step, not once per micro-batch.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

SCRIPTS = Path(__file__).parent / "dist_scripts"
sys.path.insert(0, str(SCRIPTS))

from common import write_inputs  # noqa: E402
from first_step import losses, run  # noqa: E402
from support import pinned_env  # noqa: E402

from clmkit.testing import tiny_tokenizer  # noqa: E402

PATHS = ("trainer", "loop")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(command: list[str], timeout: float = 240) -> None:
    """Run a launcher command; on failure show the end of its output."""
    env = pinned_env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    done = subprocess.run(command, cwd=SCRIPTS, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{(done.stdout + done.stderr)[-5000:]}"


CONFIGS = Path(__file__).parent.parent / "docs" / "accelerate_configs"
LAUNCHERS = {
    "torchrun": lambda: [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                         "--master_port", str(free_port())],
    # the DDP config of the docs, shrunk to 2 processes in fp32; the script's use_cpu=True picks gloo
    "accelerate": lambda: [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(CONFIGS / "ddp.yaml"), "--num_processes", "2", "--mixed_precision", "no",
                           "--main_process_port", str(free_port())],
}  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, clmkit_corpus) -> Path:
    path = tmp_path_factory.mktemp("inputs")
    write_inputs(path, tiny_tokenizer(), clmkit_corpus)
    return path


@pytest.fixture(scope="module")
def single(workdir, tmp_path_factory) -> Path:
    """The same script, in this process: 1 process x batch 32."""
    out = tmp_path_factory.mktemp("single")
    run(workdir, out)
    return out


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_processes_match_one(launcher, workdir, single, tmp_path, clmkit_tokenizer):
    launch([*LAUNCHERS[launcher](), "first_step.py", str(workdir), str(tmp_path)])
    for path in PATHS:
        report, reference = (json.loads((d / f"{path}.json").read_text()) for d in (tmp_path, single))
        assert (report["world_size"], reference["world_size"]) == (2, 1)
        for name in losses(clmkit_tokenizer):
            two, one = (load_file(d / f"{path}-{name}.safetensors") for d in (tmp_path, single))
            assert two.keys() == one.keys()
            worst = max(((two[k] - one[k]).norm() / one[k].norm()).item() for k in one)
            assert worst < 1e-5, f"{path} {name}: gradients of 2 x 16 differ from 1 x 32 by {worst:.2e} (relative)"
        # 13 eval examples in batches of 4 over 2 processes: the padded duplicates must not count
        assert report["eval"]["eval_tokens"] == reference["eval"]["eval_tokens"]
        assert report["eval"]["eval_perplexity"] == pytest.approx(reference["eval"]["eval_perplexity"], rel=1e-6)
        # accumulating 4 micro-batches must not all-reduce more often than 1 micro-batch per step
        assert report["all_reduces"]["4"] == report["all_reduces"]["1"] > 0


@pytest.mark.parametrize(
    ("name", "kind"),
    [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed_zero2", "DEEPSPEED"), ("deepspeed_zero3", "DEEPSPEED")],
)
def test_example_configs_are_valid_accelerate_configs(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))  # unknown or misspelled keys raise
    assert config.distributed_type == kind


def test_clmkit_train_runs_under_torchrun_and_every_process_exits_cleanly(tmp_path, clmkit_corpus):
    """`torchrun -m clmkit.cli train`: both ranks train, rank 0 writes the folder, and both exit 0 (they end the
    process group together; a rank exiting first can abort the other after a finished run)."""
    from cli_flags import TINY

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(clmkit_corpus[:10]):
        (corpus / f"f{i}.py").write_text(text)
    out = tmp_path / "out"
    flags = ["--dataset", str(corpus), *TINY, "--per_device_train_batch_size", "4", "--max_steps", "3"]
    launch([*LAUNCHERS["torchrun"](), "-m", "clmkit.cli", "train", *flags, "--output_dir", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 3 and metrics["tokens_seen"] == 3 * 2 * 4 * 64  # 2 processes x batch 4
    written = set(json.loads((out / ".clmkit").read_text())["entries"])  # kept by the main process alone
    assert {"model.safetensors", "metrics.json", "README.md", "training_args.yaml"} <= written
