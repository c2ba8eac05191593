"""bench/gpu.py's smoke mode runs every section of the GPU bench for real, at toy size, and its record holds up."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import pytest
import torch
from support import ROOT, pinned_env

SCRIPT = ROOT / "bench" / "gpu.py"
SIDES = {"raw", "raw_compiled", "trainer", "clmkit", "clmkit_compiled", "clmkit_unchunked"}
VOCABS = (50257, 128256)
GPU = torch.cuda.is_available()  # the smoke run uses the GPU where there is one: memory is measured there


def run_bench(*options: str) -> subprocess.CompletedProcess[str]:
    """``python bench/gpu.py options`` in a fresh process, offline, with this process's thread count."""
    env = pinned_env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, str(SCRIPT), *options], capture_output=True, text=True, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """The JSON record and the printed report of one smoke run."""
    path = tmp_path_factory.mktemp("gpu-bench") / "record.json"
    done = run_bench("--smoke", "--json", str(path))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(path.read_text()), done.stdout


def test_every_training_side_is_measured_with_its_ratios(smoke):
    record, _ = smoke
    assert record["mode"] == "smoke" and record["skipped"] == []
    assert set(record["sides"]) == SIDES
    for name, side in record["sides"].items():
        assert side["tokens_per_second"] > 0 and side["step_seconds"] > 0, name
        assert side["mfu_measured"] > 0, name
        assert (side["peak_memory_gib"] > 0) if GPU else (side["peak_memory_gib"] is None), name
        raw_tokens = record["sides"]["raw"]["tokens_per_second"]
        assert math.isclose(side["ratio_to_raw"], side["tokens_per_second"] / raw_tokens), name
        compiled = record["sides"]["raw_compiled"]["tokens_per_second"]
        expected = side["tokens_per_second"] / compiled if "compiled" in name else None
        assert side["ratio_to_raw_compiled"] == pytest.approx(expected), name
    assert record["sides"]["raw"]["ratio_to_raw"] == 1.0
    assert record["batch"] == 2 and record["settings"]["steps"] == 2
    assert record["model"]["flops_per_token"] > 0 and record["peak_tflops"]["measured"] > 0


def test_head_and_loss_rows_agree_and_liger_is_measured_or_skipped_with_a_reason(smoke):
    record, _ = smoke
    rows = {(r["vocab"], r["path"]): r for r in record["head_loss"]}
    assert set(rows) == {(v, p) for v in VOCABS for p in ("transformers", "clmkit", "liger")}
    for vocab in VOCABS:
        hf, clmkit = rows[vocab, "transformers"], rows[vocab, "clmkit"]
        assert clmkit["loss"] == pytest.approx(hf["loss"], rel=1e-5)
        assert clmkit["loss"] == pytest.approx(math.log(vocab), rel=0.2)  # random logits near uniform
        assert hf["time_ratio"] == 1.0 and clmkit["time_ratio"] == pytest.approx(clmkit["time_s"] / hf["time_s"])
        assert (clmkit["memory_ratio"] > 0) if GPU else (clmkit["memory_ratio"] is None)
        liger = rows[vocab, "liger"]
        assert (liger["loss"] == pytest.approx(hf["loss"], rel=1e-3)) if "loss" in liger else liger["skipped"]
        assert GPU or "CUDA" in liger["skipped"]
    sweep = record["chunk_sweep"]
    for vocab in VOCABS:
        mine = [r for r in sweep if r["vocab"] == vocab]
        assert [r["chunk_elements"] for r in mine] == [2**20, 2**22, 2**24]
        assert sum(r["suggested"] for r in mine) == 1 and all(r["time_s"] > 0 for r in mine)


def test_targets_and_the_markdown_report(smoke):
    record, out = smoke
    targets = {t["target"]: t for t in record["targets"]}
    speed = targets["ClmTrainer / raw loop, tokens/s"]
    assert speed["value"] == record["sides"]["clmkit"]["ratio_to_raw"] and speed["met"] == (speed["value"] >= 1.0)
    for vocab in VOCABS:
        memory = targets[f"clmkit head+loss memory / transformers', V={vocab}"]
        assert (memory["met"] in (True, False)) if GPU else (memory["met"] is None)
        assert targets[f"clmkit head+loss time / transformers', V={vocab}"]["met"] in (True, False)
    assert "reproduce: `python bench/gpu.py --smoke" in out
    assert "| side | tokens/s |" in out and "| ClmTrainer, compiled |" in out
    for target in record["targets"]:
        assert f"| {target['target']} |" in out
    assert set(record["sections"]) >= {"setup", "training", "head+loss", "chunk sweep", *SIDES}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--smoke", "--steps", "0"], "error: --steps 0: --batch, --warmup and --steps must be at least 1"),
        ([], "error: no CUDA GPU here; run the CPU smoke mode with --smoke"),
    ],
)
def test_bad_options_exit_2_with_one_line(options, message):
    if not options and torch.cuda.is_available():
        pytest.skip("a GPU is present: the full bench would run")
    done = run_bench(*options)
    assert done.returncode == 2
    assert message in done.stderr.strip().splitlines()[-1]


def test_the_script_is_where_the_docs_say():
    docs = (ROOT / "docs" / "benchmarks.md").read_text()
    assert "python bench/gpu.py --smoke" in docs and SCRIPT.is_file()
