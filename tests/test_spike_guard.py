"""The spike guard: an outlier step's update is skipped, and training goes on as if its batch had not been there."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections import deque

import pytest
import torch
from datasets import Dataset

from clmkit import ClmTrainer
from clmkit.errors import ConfigError
from clmkit.testing import NO_DROPOUT
from clmkit.training.loop import ClmLoop
from clmkit.training.spikes import SpikeError, SpikeGuard, zscore

PATHS = {"trainer": ClmTrainer, "loop": ClmLoop}
K = 14  # the step that gets the corrupted batch, after the window of 8 is full
STEPS = 18


def test_zscore_waits_for_a_full_window():
    history: deque[float] = deque([1.0, 2.0, 3.0], maxlen=4)
    assert zscore(history, 100.0) == -math.inf
    history.append(2.0)
    assert zscore(history, 2.0 + 3 * math.sqrt(0.5)) == pytest.approx(3.0)


def test_outliers_are_skipped_kept_out_of_the_history_and_too_many_in_a_row_stop_the_run():
    guard = SpikeGuard(threshold=3.0, window=4, max_skips=2)
    for step, loss in enumerate([5.0, 4.9, 4.8, 4.85], start=1):
        assert not guard.should_skip(step, loss, 1.0 + 0.01 * step)  # the window fills: nothing is judged yet
    assert guard.should_skip(5, 9.0, 1.02)  # a loss spike
    assert list(guard.losses) == [5.0, 4.9, 4.8, 4.85]  # it stays out of the history
    assert not guard.should_skip(6, 4.8, 1.03)  # an ordinary step ends the run of skips
    assert guard.should_skip(7, 4.8, 40.0)  # a gradient-norm spike
    assert guard.skips == 2 and guard.in_a_row == 1
    with pytest.raises(SpikeError, match="skipped 2 updates in a row"):
        guard.should_skip(8, 9.5, 1.0)


def test_its_history_is_saved_and_restored():
    from transformers import TrainerState

    guard = SpikeGuard(threshold=3.0, window=4)
    for step, loss in enumerate([5.0, 4.9, 4.8, 4.85, 9.0], start=1):
        guard.should_skip(step, loss, 1.0)
    saved = json.dumps(dataclasses.asdict(TrainerState(stateful_callbacks=[guard])))  # as in trainer_state.json
    restored = SpikeGuard(threshold=3.0, window=4)
    restored.on_train_begin(None, TrainerState(**json.loads(saved)), None)
    assert (list(restored.losses), restored.skips, restored.in_a_row) == ([5.0, 4.9, 4.8, 4.85], 1, 1)


def test_options_are_checked(clmkit_args):
    with pytest.raises(ConfigError, match="spike_guard must be a number"):
        clmkit_args(spike_guard=0)
    with pytest.raises(ConfigError, match="spike_guard_window must be a whole number of at least 2"):
        clmkit_args(spike_guard=3.0, spike_guard_window=1)


def examples(tokenizer, corpus, count: int) -> list[list[int]]:
    stream = [t for text in corpus for t in [*tokenizer(text)["input_ids"], tokenizer.eos_token_id]]
    return [stream[i * 64 : (i + 1) * 64] for i in range(count)]


@pytest.mark.parametrize("path", list(PATHS))
def test_a_corrupted_batch_is_skipped_and_training_continues_as_without_it(
    path, clmkit_args, clmkit_model, clmkit_tokenizer, clmkit_corpus, caplog
):
    rows = examples(clmkit_tokenizer, clmkit_corpus, 8 * STEPS)
    noise = torch.randint(0, len(clmkit_tokenizer), (8, 64), generator=torch.Generator().manual_seed(0)).tolist()
    corrupted = rows[: 8 * (K - 1)] + noise + rows[8 * (K - 1) :]  # step K reads the noise

    def train(data, steps):
        args = clmkit_args(
            max_steps=steps, train_sampling_strategy="sequential", lr_scheduler_type="constant",
            spike_guard=3.0, spike_guard_window=8, logging_strategy="steps", logging_steps=1,
        )  # fmt: skip
        model = clmkit_model(**dict.fromkeys(NO_DROPOUT, 0.0))
        dataset = Dataset.from_dict({"input_ids": data})
        run = PATHS[path](model=model, args=args, processing_class=clmkit_tokenizer, train_dataset=dataset)
        run.train()
        return run

    clean = train(rows, STEPS)
    with caplog.at_level(logging.WARNING, logger="clmkit.training.spikes"):
        guarded = train(corrupted, STEPS + 1)
    assert guarded.spike_guard.skips == clean.spike_guard.skips + 1
    assert f"skipped the update of step {K}" in caplog.text
    ours, theirs = dict(guarded.model.named_parameters()), dict(clean.model.named_parameters())
    # as if the batch had not been there (no dropout: a skipped step's forward would shift its random draws)
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)
    rates = [e["learning_rate"] for e in guarded.state.log_history if "learning_rate" in e]
    assert len(set(rates)) == 1  # the skipped step did not move the schedule


def test_metrics_json_counts_the_skips(tmp_path, clmkit_corpus, capsys):
    from cli_flags import TINY

    from clmkit.cli import main

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(clmkit_corpus[:12]):
        (corpus / f"f{i}.py").write_text(text)
    out = tmp_path / "out"
    flags = ["--dataset", str(corpus), *TINY, "--max_steps", "12", "--spike_guard", "3", "--spike_guard_window", "4"]
    assert main(["train", *flags, "--output_dir", str(out)]) == 0
    logged = capsys.readouterr().err.count("spike guard: skipped the update of step")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["spike_guard"] == {"threshold": 3.0, "skips": logged}
