"""Evaluation that matches the training objective: ``eval_loss`` is always token cross-entropy, ``eval_objective`` the
run's own loss on the eval set, each eval sits at the tokens seen when it ran, and the report labels them apart."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from matplotlib.figure import Figure
from support import pinned_env

from clmkit import ClmLoop, ClmTrainer, report
from clmkit.builtins.collators import CausalCollator
from clmkit.builtins.losses import KeyToken
from clmkit.training.losses import LossInputs

KEYWORDS = {"keywords": ["self", "return", "def"], "alpha": 3.0}


def run(path, tokenizer, model, args, corpus, **overrides):
    trainer = path(
        model=model,
        args=args(**overrides),
        processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"content": corpus[3:]}),
        eval_dataset=Dataset.from_dict({"content": corpus[:3]}),
    )
    trainer.train()
    return trainer


@pytest.mark.parametrize("path", [ClmTrainer, ClmLoop])
def test_eval_loss_is_cross_entropy_and_eval_objective_the_runs_loss(
    path, clmkit_tokenizer, clmkit_model, clmkit_args, clmkit_corpus
):
    trainer = run(
        path,
        clmkit_tokenizer,
        clmkit_model(),
        clmkit_args,
        clmkit_corpus,
        loss="keytoken",
        loss_kwargs=KEYWORDS,
        max_steps=2,
    )
    metrics = trainer.evaluate()

    # the same model evaluated by a run whose loss is cross-entropy: the same eval_loss, and no objective
    plain = path(
        model=trainer.model, args=clmkit_args(), processing_class=clmkit_tokenizer, eval_dataset=trainer.eval_dataset
    )
    reference = plain.evaluate()
    assert metrics["eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-6)
    assert "eval_objective" not in reference

    # the objective by hand: keytoken's loss sum over its normalizer, over the whole eval set at once
    loss = KeyToken(tokenizer=clmkit_tokenizer, **KEYWORDS)
    batch = CausalCollator(clmkit_tokenizer)(list(trainer.eval_dataset))
    with torch.no_grad():
        logits = trainer.model.cpu().eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        expected = loss.loss_sum(LossInputs(batch, logits=logits)) / loss.normalizer(batch)
    assert metrics["eval_objective"] == pytest.approx(float(expected), rel=1e-4)
    assert not math.isclose(metrics["eval_objective"], metrics["eval_loss"], rel_tol=1e-3)


def test_each_eval_sits_at_the_tokens_seen_when_it_ran(clmkit_tokenizer, clmkit_model, clmkit_args, clmkit_corpus):
    """eval_steps 3 and logging_steps 4: the step-3 eval came before any training log."""
    trainer = run(
        ClmTrainer, clmkit_tokenizer, clmkit_model(), clmkit_args, clmkit_corpus,
        max_steps=8, eval_strategy="steps", eval_steps=3, logging_strategy="steps", logging_steps=4,
    )  # fmt: skip
    per_step = 8 * 64  # concat: every example is full, batch 8 x context 64
    train, evals = report.loss_points(trainer.state.log_history)
    assert [x for x, _ in train] == [4 * per_step, 8 * per_step]
    assert [x for x, _ in evals] == [3 * per_step, 6 * per_step, 8 * per_step]  # and the last step


def test_an_eval_without_its_token_count_is_placed_by_step():
    history = [
        {"eval_loss": 6.0, "step": 0},
        {"eval_loss": 5.0, "step": 10},
        {"loss": 5.5, "tokens_seen": 2500, "step": 25},
        {"loss": 5.0, "tokens_seen": 5000, "step": 50},
        {"eval_loss": 4.0, "step": 60},
    ]
    _, evals = report.loss_points(history)
    assert evals == [(0.0, 6.0), (1000.0, 5.0), (6000.0, 4.0)]


def test_the_report_labels_the_train_objective_and_the_eval_cross_entropy(tmp_path, monkeypatch):
    legends = []
    monkeypatch.setattr(
        Figure,
        "savefig",
        lambda fig, *a, **k: legends.extend(t.get_text() for t in fig.axes[0].get_legend().get_texts()),
    )
    report.plot_loss_curve(tmp_path / "curve.png", [(1.0, 5.0)], [(1.0, 5.5)], (2.0, 5.2), "run")
    assert legends == [
        "train objective (the run's loss)",
        "eval cross-entropy (periodic)",
        "eval cross-entropy (whole validation split)",
    ]
    table = report.metrics_table({"eval_loss": 5.0, "eval_objective": 4.0, "train_loss": 4.5})
    assert "| eval cross-entropy (nats/token) | 5.0000 |" in table
    assert "| eval objective (the run's loss on the eval set) | 4.0000 |" in table
    assert "| last train objective (the run's loss) | 4.5000 |" in table


EVAL_SCRIPT = """
import json, sys
from clmkit import ClmTrainer
from clmkit.testing import padded_examples, tiny_args, tiny_model, tiny_tokenizer

tokenizer = tiny_tokenizer()
args = tiny_args(sys.argv[1], loss="keytoken", loss_kwargs={"keywords": ["self", "def"]}, per_device_eval_batch_size=4)
data = padded_examples(tokenizer, count=13)
trainer = ClmTrainer(model=tiny_model(tokenizer), args=args, processing_class=tokenizer, eval_dataset=data)
metrics = trainer.evaluate()
if trainer.is_world_process_zero():
    print("METRICS", json.dumps({"processes": trainer.args.world_size, **metrics}))
"""


def test_eval_objective_is_exact_on_two_processes(tmp_path):
    """13 examples on 2 processes in batches of 4: the duplicated samples of the last batch are not counted."""
    script = tmp_path / "eval_on_processes.py"
    script.write_text(EVAL_SCRIPT)
    runs = {}
    for processes in (1, 2):
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        command += ["--master_port", str(free_port()), str(script), str(tmp_path / f"out-{processes}")]
        done = subprocess.run(command, env=pinned_env(HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        line = next(line for line in done.stdout.splitlines() if line.startswith("METRICS "))
        runs[processes] = json.loads(line.removeprefix("METRICS "))
    assert (runs[1]["processes"], runs[2]["processes"]) == (1, 2)
    for key in ("eval_loss", "eval_objective", "eval_tokens"):
        assert runs[2][key] == pytest.approx(runs[1][key], rel=1e-6), key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
