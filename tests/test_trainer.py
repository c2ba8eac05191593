"""ClmTrainer end to end: it learns, evaluates exactly, and keeps everything Trainer offers working."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import TrainerCallback, TrainingArguments, get_cosine_schedule_with_warmup

from clmkit import ClmTrainer, ClmTrainingArguments
from clmkit.errors import ConfigError, DataError
from clmkit.testing import padded_examples, tiny_model, tiny_tokenizer


@pytest.mark.parametrize("chunker", ["concat", "overflow"])
@pytest.mark.parametrize("loss", ["cross_entropy", "keytoken"])
def test_training_lowers_the_eval_loss(clmkit_tokenizer, clmkit_model, clmkit_args, raw_datasets, loss, chunker):
    loss_kwargs = {"keywords": ["self", "def", "None"], "alpha": 1.0} if loss == "keytoken" else {}
    args = clmkit_args(loss=loss, loss_kwargs=loss_kwargs, chunker=chunker, max_steps=30, warmup_steps=3)
    trainer = ClmTrainer(
        clmkit_model(),
        args,
        processing_class=clmkit_tokenizer,
        train_dataset=raw_datasets["train"],
        eval_dataset=raw_datasets["valid"],
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < before["eval_loss"] - 0.5, (before, after)
    for metrics in (before, after):
        assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-12)


def test_eval_loss_is_the_mean_over_target_tokens(clmkit_tokenizer, clmkit_model, clmkit_args):
    """Five examples of uneven length in batches of 2: the last batch is short, every batch padded."""
    examples = padded_examples(clmkit_tokenizer)
    model = clmkit_model()
    eval_set = examples.select(range(5))
    trainer = ClmTrainer(
        model, clmkit_args(per_device_eval_batch_size=2), processing_class=clmkit_tokenizer, eval_dataset=eval_set
    )
    metrics = trainer.evaluate()

    model.eval()
    sums, counts = [], []
    with torch.no_grad():
        for ids in eval_set["input_ids"]:
            ids = torch.tensor([ids])
            token_losses = F.cross_entropy(model(input_ids=ids).logits[0, :-1], ids[0, 1:], reduction="none")
            sums.append(float(token_losses.sum()))
            counts.append(len(token_losses))
    assert metrics["eval_tokens"] == sum(counts)
    assert metrics["eval_loss"] == pytest.approx(sum(sums) / sum(counts), rel=1e-5)
    mean_of_batch_means = sum(sum(sums[i : i + 2]) / sum(counts[i : i + 2]) for i in (0, 2, 4)) / 3
    assert abs(mean_of_batch_means - metrics["eval_loss"]) > 1e-3  # what averaging per batch would report


def test_tokenized_documents_are_chunked_like_raw_text(clmkit_tokenizer, clmkit_model, clmkit_args, raw_datasets):
    raw = raw_datasets["train"]
    tokenized = Dataset.from_dict({"input_ids": clmkit_tokenizer(list(raw["content"]))["input_ids"]})
    from_text = ClmTrainer(clmkit_model(), clmkit_args(), processing_class=clmkit_tokenizer, train_dataset=raw)
    from_ids = ClmTrainer(clmkit_model(), clmkit_args(), processing_class=clmkit_tokenizer, train_dataset=tokenized)
    assert from_ids.train_dataset["input_ids"][:] == from_text.train_dataset["input_ids"][:]
    assert from_ids.data_stats["train"] == from_text.data_stats["train"]


def test_preprocessing_workers_give_the_same_examples(clmkit_tokenizer, clmkit_model, clmkit_args, raw_datasets):
    args = {"chunker": "overflow"}
    one = ClmTrainer(
        clmkit_model(), clmkit_args(**args), processing_class=clmkit_tokenizer, train_dataset=raw_datasets["train"]
    )
    two = ClmTrainer(
        clmkit_model(),
        clmkit_args(**args, preprocessing_num_workers=2),
        processing_class=clmkit_tokenizer,
        train_dataset=raw_datasets["train"],
    )
    assert two.train_dataset["input_ids"][:] == one.train_dataset["input_ids"][:]


def test_bf16_on_cpu(clmkit_tokenizer, clmkit_model, clmkit_args, raw_datasets):
    args = clmkit_args(bf16=True, max_steps=3)
    model = clmkit_model()
    trainer = ClmTrainer(
        model,
        args,
        processing_class=clmkit_tokenizer,
        train_dataset=raw_datasets["train"],
        eval_dataset=raw_datasets["valid"],
    )
    assert trainer.accelerator.mixed_precision == "bf16"
    result = trainer.train()
    assert math.isfinite(result.training_loss) and math.isfinite(trainer.evaluate()["eval_loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, fp32 master weights


# ---- a run that uses many TrainingArguments at once, and its resumption -----------------------------------


class PostClipNorms(TrainerCallback):
    """The global gradient norm as it reaches the optimizer."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad.norm() for p in model.parameters() if p.grad is not None]
        self.norms.append(float(torch.stack(grads).norm()))


MAX_STEPS, WARMUP, LR, CLIP = 12, 4, 1e-2, 0.05


def drop_in_args(output_dir: Path) -> ClmTrainingArguments:
    return ClmTrainingArguments(
        output_dir=str(output_dir),
        context_length=64,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        max_steps=MAX_STEPS,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        warmup_steps=WARMUP,
        max_grad_norm=CLIP,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=4,
        save_strategy="steps",
        save_steps=6,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )


def drop_in_trainer(tokenizer, raw_datasets, output_dir: Path, callbacks=()) -> ClmTrainer:
    model = tiny_model(tokenizer, context_length=64, seed=0)
    return ClmTrainer(
        model,
        drop_in_args(output_dir),
        processing_class=tokenizer,
        train_dataset=raw_datasets["train"],
        eval_dataset=raw_datasets["valid"],
        callbacks=list(callbacks),
    )


@pytest.fixture(scope="module")
def drop_in_run(raw_datasets, tmp_path_factory):
    """12 steps: cosine schedule with warmup, clipping, eval every 4 steps, checkpoints every 6."""
    output_dir = tmp_path_factory.mktemp("drop_in")
    norms = PostClipNorms()
    trainer = drop_in_trainer(tiny_tokenizer(), raw_datasets, output_dir, [norms])
    trainer.train()
    return trainer, norms, output_dir


def train_logs(trainer: ClmTrainer) -> list[dict]:
    return [log for log in trainer.state.log_history if "loss" in log]


def test_gradient_clipping(drop_in_run):
    trainer, norms, _ = drop_in_run
    logged = [log["grad_norm"] for log in train_logs(trainer)]  # before clipping
    assert len(logged) == len(norms.norms) == MAX_STEPS
    for before, after in zip(logged, norms.norms, strict=True):
        assert after == pytest.approx(min(before, CLIP), rel=1e-4)
    assert max(logged) > 2 * CLIP


def test_cosine_schedule_with_warmup(drop_in_run):
    trainer, _, _ = drop_in_run
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    schedule = get_cosine_schedule_with_warmup(optimizer, WARMUP, MAX_STEPS)
    expected = []
    for _ in range(MAX_STEPS):
        expected.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    got = [log["learning_rate"] for log in train_logs(trainer)]
    assert got == pytest.approx(expected, rel=1e-6)
    assert got[WARMUP] == pytest.approx(LR) and got[-1] < 0.05 * LR


def test_eval_and_save_strategies(drop_in_run):
    trainer, _, output_dir = drop_in_run
    eval_logs = [log for log in trainer.state.log_history if "eval_loss" in log]
    assert [log["step"] for log in eval_logs] == [4, 8, 12]
    assert all(log["eval_perplexity"] == pytest.approx(math.exp(log["eval_loss"])) for log in eval_logs)
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-6"]
    assert (output_dir / "checkpoint-6" / "model.safetensors").is_file()


def test_resume_continues_steps_and_token_counts(drop_in_run, clmkit_tokenizer, raw_datasets, tmp_path):
    trainer, _, output_dir = drop_in_run
    resumed = drop_in_trainer(clmkit_tokenizer, raw_datasets, tmp_path)
    resumed.train(resume_from_checkpoint=str(output_dir / "checkpoint-6"))
    assert resumed.state.global_step == MAX_STEPS

    original, continued = train_logs(trainer), train_logs(resumed)
    assert [log["step"] for log in continued] == list(range(1, MAX_STEPS + 1))  # 1-6 restored, 7-12 new
    assert continued[-1]["tokens_seen"] == original[-1]["tokens_seen"] == MAX_STEPS * 8 * 64
    assert continued[-1]["target_tokens_seen"] == original[-1]["target_tokens_seen"] == MAX_STEPS * 8 * 63
    assert continued[-1]["loss"] == pytest.approx(original[-1]["loss"], rel=1e-4)


# ---- bad input -------------------------------------------------------------------------------------


def test_tokenizer_without_eos(clmkit_tokenizer, clmkit_model, clmkit_args):
    no_eos = copy.deepcopy(clmkit_tokenizer)
    no_eos.eos_token = None
    with pytest.raises(DataError, match="no EOS token"):
        ClmTrainer(clmkit_model(), clmkit_args(), processing_class=no_eos)


def test_model_vocab_smaller_than_the_tokenizer(clmkit_tokenizer, clmkit_model, clmkit_args):
    with pytest.raises(DataError) as info:
        ClmTrainer(clmkit_model(vocab_size=256), clmkit_args(), processing_class=clmkit_tokenizer)
    assert "256" in str(info.value) and str(len(clmkit_tokenizer)) in str(info.value)
    assert "resize_token_embeddings" in str(info.value)


def test_context_longer_than_the_models_positions(clmkit_tokenizer, clmkit_model, clmkit_args):
    with pytest.raises(DataError, match="exceeds the model's 64 positions"):
        ClmTrainer(clmkit_model(context_length=64), clmkit_args(context_length=128), processing_class=clmkit_tokenizer)


def test_plain_training_arguments_or_no_tokenizer(clmkit_tokenizer, clmkit_model, tmp_path):
    with pytest.raises(ConfigError, match="ClmTrainingArguments"):
        ClmTrainer(clmkit_model(), TrainingArguments(output_dir=str(tmp_path)), processing_class=clmkit_tokenizer)
    with pytest.raises(ConfigError, match="processing_class=tokenizer"):
        ClmTrainer(clmkit_model(), ClmTrainingArguments(output_dir=str(tmp_path)))
