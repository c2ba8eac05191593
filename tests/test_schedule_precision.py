"""The ``wsd`` schedule, the precision chosen by detection, and ``torch_compile``, on both training paths."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from clmkit import ClmTrainer
from clmkit.cli.options import parse_train_args
from clmkit.device import native_bf16
from clmkit.testing import NO_DROPOUT
from clmkit.training.loop import ClmLoop


def train(cls, model, args, tokenizer, corpus):
    run = cls(model=model, args=args, processing_class=tokenizer, train_dataset=Dataset.from_dict({"content": corpus}))
    run.train()
    return run


@pytest.mark.parametrize("cls", [ClmTrainer, ClmLoop])
def test_wsd_warms_up_holds_then_decays_linearly_over_its_fraction(
    cls, clmkit_model, clmkit_args, clmkit_tokenizer, clmkit_corpus
):
    args = clmkit_args(
        max_steps=10,
        warmup_steps=2,
        lr_scheduler_type="wsd",
        lr_decay_fraction=0.3,
        learning_rate=1e-3,
        logging_strategy="steps",
        logging_steps=1,
    )
    run = train(cls, clmkit_model(), args, clmkit_tokenizer, list(clmkit_corpus))
    rates = [e["learning_rate"] for e in run.state.log_history if "learning_rate" in e]
    # the rate each step used: 2 warmup steps, 5 at the peak, 3 decaying linearly towards 0
    assert rates == pytest.approx([0.0, 5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 2e-3 / 3, 1e-3 / 3])


def test_cli_trains_in_bf16_exactly_where_the_device_computes_in_it(tmp_path):
    *_, args, values = parse_train_args(["--output_dir", str(tmp_path)])
    assert args.bf16 == native_bf16("cuda" if torch.cuda.is_available() else "cpu")
    assert values.get("bf16", False) == args.bf16  # saved with the run, so a resume elsewhere keeps it
    assert "use_cpu" not in values  # a fact of this machine, not of the run: the file trains on a GPU elsewhere
    *_, fp32, _ = parse_train_args(["--output_dir", str(tmp_path), "--bf16", "false"])
    assert not fp32.bf16


def test_both_paths_agree_in_bf16(clmkit_model, clmkit_args, clmkit_tokenizer, clmkit_corpus, tmp_path):
    """bf16 autocast (native or emulated) gives both paths the same losses."""
    curves = []
    for cls in (ClmTrainer, ClmLoop):
        args = clmkit_args(
            output_dir=str(tmp_path / cls.__name__),
            max_steps=4,
            bf16=True,
            use_cpu=True,
            logging_strategy="steps",
            logging_steps=1,
        )
        run = train(cls, clmkit_model(architecture="llama"), args, clmkit_tokenizer, list(clmkit_corpus))
        curves.append([e["loss"] for e in run.state.log_history if "loss" in e])
    assert len(curves[0]) == 4 and curves[1] == pytest.approx(curves[0], rel=1e-4)


@pytest.mark.parametrize("architecture", ["gpt2", "qwen3"])  # qwen3: the fused RMSNorm's autograd function, compiled
def test_torch_compile_trains_the_same_model_on_the_loop(
    architecture, clmkit_model, clmkit_args, clmkit_tokenizer, clmkit_corpus, tmp_path
):
    """ClmLoop compiles through accelerate (``torch_compile``); its losses are the eager Trainer's, up to the
    rounding of fused kernels."""
    curves = []
    for cls, compiled in ((ClmTrainer, False), (ClmLoop, True)):
        args = clmkit_args(
            output_dir=str(tmp_path / cls.__name__),
            max_steps=3,
            torch_compile=compiled,
            logging_strategy="steps",
            logging_steps=1,
        )
        overrides = NO_DROPOUT if architecture == "gpt2" else {}
        model = clmkit_model(architecture=architecture, **overrides)
        run = train(cls, model, args, clmkit_tokenizer, list(clmkit_corpus))
        curves.append([e["loss"] for e in run.state.log_history if "loss" in e])
    assert len(curves[0]) == 3 and curves[1] == pytest.approx(curves[0], rel=1e-4)
