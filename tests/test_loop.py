"""The Accelerate loop: the Trainer's numbers, its output folder, its plugins; and the options it refuses."""

from __future__ import annotations

import math
import re
import sysconfig
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from clmkit import ClmTrainer, ConfigError, NonFiniteLossError, hookimpl
from clmkit.builtins.losses import CrossEntropy
from clmkit.training.loop import ClmLoop

NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def train_both(clmkit_args, clmkit_model, tokenizer, raw_datasets, tmp_path: Path, **overrides):
    """The same 20-step run through ClmTrainer and through ClmLoop."""
    runs = []
    for cls in (ClmTrainer, ClmLoop):
        args = clmkit_args(output_dir=str(tmp_path / cls.__name__), max_steps=20, warmup_steps=3, **overrides)
        run = cls(
            model=clmkit_model(**NO_DROPOUT),
            args=args,
            processing_class=tokenizer,
            train_dataset=raw_datasets["train"],
            eval_dataset=raw_datasets["valid"],
        )
        run.train()
        runs.append(run)
    return runs


@pytest.mark.parametrize("accumulation", [1, 2])
def test_same_loss_curve_as_the_trainer(
    accumulation, clmkit_args, clmkit_model, clmkit_tokenizer, raw_datasets, tmp_path
):
    trainer, loop = train_both(
        clmkit_args,
        clmkit_model,
        clmkit_tokenizer,
        raw_datasets,
        tmp_path,
        per_device_train_batch_size=8 // accumulation,
        gradient_accumulation_steps=accumulation,
        logging_strategy="steps",
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=10,
    )
    losses = [e["loss"] for e in loop.state.log_history if "loss" in e]
    expected = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == len(expected) == 20
    assert max(abs(a - b) for a, b in zip(losses, expected, strict=True)) < 1e-4
    rates = [e["learning_rate"] for e in loop.state.log_history if "loss" in e]
    assert rates == pytest.approx([e["learning_rate"] for e in trainer.state.log_history if "loss" in e], rel=1e-9)
    assert loop.callback_handler.optimizer.param_groups[0]["lr"] == 0.0  # the schedule ends with the last step
    evals = [e for e in loop.state.log_history if "eval_loss" in e]
    expected_evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert [e["step"] for e in evals] == [10, 20]
    for ours, theirs in zip(evals, expected_evals, strict=True):
        for key in ("eval_loss", "eval_perplexity", "eval_bits_per_byte", "eval_accuracy"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-6), key
        assert ours["eval_perplexity"] == pytest.approx(math.exp(ours["eval_loss"]))


def test_output_folder_has_the_trainer_layout(clmkit_args, clmkit_model, clmkit_tokenizer, raw_datasets, tmp_path):
    args = clmkit_args(output_dir=str(tmp_path / "loop"), max_steps=4, save_strategy="steps", save_steps=2)
    loop = ClmLoop(
        model=clmkit_model(), args=args, processing_class=clmkit_tokenizer, train_dataset=raw_datasets["valid"]
    )
    loop.train()
    trainer = ClmTrainer(
        model=clmkit_model(), args=clmkit_args(output_dir=str(tmp_path / "trainer")), processing_class=clmkit_tokenizer
    )
    trainer.save_model()
    files = {p.name for p in (tmp_path / "loop").iterdir() if p.is_file()}
    assert files == {p.name for p in (tmp_path / "trainer").iterdir() if p.is_file()}
    assert sorted(p.name for p in (tmp_path / "loop").iterdir() if p.is_dir()) == ["checkpoint-2", "checkpoint-4"]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "loop")
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, loop.model.state_dict()[name]), name


def test_logged_loss_is_per_target_token(clmkit_args, clmkit_model, clmkit_tokenizer, raw_datasets, tmp_path):
    """4 micro-batches of 2 log the model's own mean loss over the 8 examples (the course logged it 4 x too high)."""
    model = clmkit_model(**NO_DROPOUT)
    expected_model = clmkit_model(**NO_DROPOUT)
    args = clmkit_args(
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        max_steps=1,
        logging_strategy="steps",
        logging_steps=1,
        train_sampling_strategy="sequential",
    )
    loop = ClmLoop(model=model, args=args, processing_class=clmkit_tokenizer, train_dataset=raw_datasets["train"])
    loop.train()
    batch = loop.collator([loop.train_dataset[i] for i in range(8)])
    with torch.no_grad():
        expected = expected_model(**batch).loss.item()
    assert [e["loss"] for e in loop.state.log_history if "loss" in e] == pytest.approx([expected], rel=1e-5)


class CountingLoss(CrossEntropy):
    calls = 0

    def loss_sum(self, inputs):
        CountingLoss.calls += 1
        return super().loss_sum(inputs)


class Seen(TrainerCallback):
    logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        Seen.logs.append(logs)


class ThirdParty:
    """A plugin as a third party writes it: a loss and a callback."""

    @hookimpl
    def clmkit_register_losses(self, register):
        register("counting", CountingLoss)

    @hookimpl
    def clmkit_callbacks(self, args):
        return [Seen()]


def test_plugins_work_in_the_loop(clmkit_args, clmkit_model, clmkit_tokenizer, raw_datasets):
    CountingLoss.calls, Seen.logs = 0, []
    args = clmkit_args(
        loss="counting", max_steps=3, gradient_accumulation_steps=2, logging_strategy="steps", logging_steps=1
    )
    loop = ClmLoop(
        model=clmkit_model(),
        args=args,
        processing_class=clmkit_tokenizer,
        train_dataset=raw_datasets["valid"],
        plugins=[ThirdParty()],
    )
    loop.train()
    assert CountingLoss.calls == 6
    assert [logs["loss"] for logs in Seen.logs if "loss" in logs] == [e["loss"] for e in loop.state.log_history[:3]]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"save_only_model": True, "train_sampling_strategy": "group_by_length"}, "save_only_model"),
        ({"push_to_hub": True}, "hub_strategy"),
    ],
)
def test_trainer_only_options_are_named(overrides, named, clmkit_args, clmkit_model, clmkit_tokenizer):
    with pytest.raises(ConfigError, match=f"does not implement these options: {named} ") as error:
        ClmLoop(model=clmkit_model(), args=clmkit_args(**overrides), processing_class=clmkit_tokenizer)
    if "train_sampling_strategy" in overrides:
        assert "train_sampling_strategy (use 'random' or 'sequential')" in str(error.value)


def test_push_to_hub_uploads_the_model_folder(
    clmkit_args, clmkit_model, clmkit_tokenizer, raw_datasets, tmp_path, monkeypatch
):
    uploads = []

    class Repo:
        repo_id = "me/tiny-clm"

    def upload_folder(repo_id, folder_path, ignore_patterns, **kwargs):
        uploads.append((repo_id, sorted(p.name for p in Path(folder_path).iterdir()), ignore_patterns))

    monkeypatch.setattr("clmkit.training.hub.create_repo", lambda repo_id, **kwargs: Repo())
    monkeypatch.setattr("clmkit.training.hub.upload_folder", upload_folder)
    args = clmkit_args(max_steps=2, push_to_hub=True, hub_strategy="end", hub_model_id="me/tiny-clm")
    ClmLoop(
        model=clmkit_model(), args=args, processing_class=clmkit_tokenizer, train_dataset=raw_datasets["valid"]
    ).train()
    [(repo_id, files, ignored)] = uploads
    assert repo_id == "me/tiny-clm"
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(files)
    assert "checkpoint-*" in ignored


def test_non_finite_loss_stops_training(clmkit_args, clmkit_model, clmkit_tokenizer, raw_datasets):
    model = clmkit_model()
    with torch.no_grad():
        model.transformer.wte.weight.fill_(float("nan"))
    loop = ClmLoop(
        model=model,
        args=clmkit_args(max_steps=2),
        processing_class=clmkit_tokenizer,
        train_dataset=raw_datasets["valid"],
    )
    with pytest.raises(NonFiniteLossError, match="at optimizer step 1"):
        loop.train()


def test_the_guide_script_runs(tmp_path, clmkit_tokenizer, monkeypatch):
    """The script of docs/distributed.md, at a tiny size, on one process."""
    [code] = re.findall(
        r"```python\n(.*?)```", (Path(__file__).parent.parent / "docs" / "distributed.md").read_text(), re.S
    )
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("__init__.py", "decoder.py", "encoder.py", "scanner.py"):
        (corpus / name).write_bytes((Path(sysconfig.get_paths()["stdlib"]) / "json" / name).read_bytes())
    clmkit_tokenizer.save_pretrained(tmp_path / "clmkit-out")
    shrink = {
        "load_corpus()": f"load_corpus({str(corpus)!r}, valid_percentage=25)",
        '"tiny"': '"test"',
        "context_length=128": "context_length=64",
        "per_device_train_batch_size=16": "per_device_train_batch_size=4",
        "max_steps=600": "max_steps=4",
        "eval_steps=200": "eval_steps=2",
        "save_steps=200": "save_steps=2",
        "logging_steps=20": "logging_steps=1",
    }
    for old, new in shrink.items():
        assert old in code, old
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "docs/distributed.md", "exec"), namespace)
    assert namespace["loop"].state.global_step == 4
    assert {"checkpoint-2", "checkpoint-4", "model.safetensors"} <= {p.name for p in (tmp_path / "run-loop").iterdir()}
