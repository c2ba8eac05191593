"""Token budgets (max_tokens): both paths stop at the first step that reaches the budget, exactly across resume."""

from __future__ import annotations

import math

import pytest
from datasets import Dataset

from clmkit import ClmTrainer
from clmkit.cli.options import parse_train_args
from clmkit.errors import ConfigError
from clmkit.training.loop import ClmLoop
from clmkit.training.train_data import BUDGET_CAP, targets_per_example

PATHS = {"trainer": ClmTrainer, "loop": ClmLoop}
PER_STEP = 8 * 63  # concat rows of 64 tokens, batch 8: 63 target tokens a row


def rows(count: int = 60) -> Dataset:
    return Dataset.from_dict({"input_ids": [[(7 * i + j) % 500 for j in range(64)] for i in range(count)]})


def target_logs(run) -> list[int]:
    return [e["target_tokens_seen"] for e in run.state.log_history if "target_tokens_seen" in e]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize(("budget", "steps"), [(5 * PER_STEP, 5), (4 * PER_STEP + 1, 5)])
def test_the_run_stops_at_the_first_step_that_reaches_the_budget(
    path, budget, steps, clmkit_args, clmkit_model, clmkit_tokenizer
):
    args = clmkit_args(max_tokens=budget, lr_scheduler_type="linear", logging_strategy="steps", logging_steps=1)
    run = PATHS[path](model=clmkit_model(), args=args, processing_class=clmkit_tokenizer, train_dataset=rows())
    run.train()
    assert run.state.global_step == steps
    assert target_logs(run) == [PER_STEP * k for k in range(1, steps + 1)]  # the step that reaches it is the last
    assert args.max_steps == math.ceil(steps * BUDGET_CAP)  # the cap leaves the stop to the budget
    # the schedule spans the estimated steps: linear decay reaches 0 exactly at the step the budget ends
    assert run.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("path", list(PATHS))
def test_a_budget_is_exact_across_resume(path, clmkit_args, clmkit_model, clmkit_tokenizer, tmp_path):
    def run(out, resume=None):
        args = clmkit_args(output_dir=str(out), max_tokens=7 * PER_STEP - 5, save_strategy="steps", save_steps=3)
        trainer = PATHS[path](model=clmkit_model(), args=args, processing_class=clmkit_tokenizer, train_dataset=rows())
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    whole = run(tmp_path / "whole")
    resumed = run(tmp_path / "resumed", resume=str(tmp_path / "whole" / "checkpoint-3"))
    assert whole.state.global_step == resumed.state.global_step == 7
    assert whole.token_counter.targets == resumed.token_counter.targets == 7 * PER_STEP
    assert (tmp_path / "whole" / "checkpoint-7").is_dir()  # a last checkpoint where the budget ended
    again = run(tmp_path / "again", resume=str(tmp_path / "whole" / "checkpoint-7"))  # spent: no step more
    assert again.state.global_step == 7 and again.token_counter.targets == 7 * PER_STEP


def test_packed_rows_hold_fewer_targets_and_the_estimate_counts_them(clmkit_args, clmkit_model, clmkit_tokenizer):
    texts = [f"x = {i}\n" * (1 + i % 7) for i in range(300)]
    args = clmkit_args(chunker="packed", max_tokens=3000, logging_strategy="steps", logging_steps=1)
    trainer = ClmTrainer(clmkit_model(), args, processing_class=clmkit_tokenizer, train_dataset=Dataset.from_dict(
        {"content": texts}))  # fmt: skip
    density = targets_per_example(trainer.train_dataset)
    assert density < 63  # every packed document's first token is no target
    trainer.train()
    seen = target_logs(trainer)
    assert seen[-2] < 3000 <= seen[-1]
    assert trainer.state.global_step < args.max_steps  # the budget, not the cap, ended the run


def test_max_tokens_is_validated():
    from clmkit.args import ClmTrainingArguments

    with pytest.raises(ConfigError, match="max_tokens must be a whole number"):
        ClmTrainingArguments(output_dir="x", max_tokens=0)
    with pytest.raises(ConfigError, match="both set how long to train"):
        ClmTrainingArguments(output_dir="x", max_tokens=100, max_steps=10)


def test_the_cli_trains_by_a_budget_instead_of_its_default_steps(tmp_path):
    _, _, _, args, values = parse_train_args(["--max_tokens", "100000", "--output_dir", str(tmp_path / "o")])
    assert args.max_tokens == 100000 and args.max_steps == -1
    assert values["max_tokens"] == 100000
    with pytest.raises(ConfigError, match="both set"):
        parse_train_args(["--max_tokens", "1000", "--max_steps", "5", "--output_dir", str(tmp_path / "o")])


@pytest.mark.parametrize("path", list(PATHS))
def test_a_stream_trains_to_a_budget_without_max_steps(path, clmkit_args, clmkit_model, clmkit_tokenizer):
    args = clmkit_args(max_tokens=3 * PER_STEP, logging_strategy="steps", logging_steps=1)
    stream = rows(200).to_iterable_dataset()
    run = PATHS[path](model=clmkit_model(), args=args, processing_class=clmkit_tokenizer, train_dataset=stream)
    run.train()
    assert run.state.global_step == 3 and target_logs(run)[-1] == 3 * PER_STEP
