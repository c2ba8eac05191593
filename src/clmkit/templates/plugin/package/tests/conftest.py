"""Shared by the plugins' tests: ``train_tiny(**arguments)`` trains a tiny model for a few steps with them."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from datasets import Dataset

from clmkit import ClmTrainer


@pytest.fixture
def train_tiny(clmkit_tokenizer, clmkit_model, clmkit_args, clmkit_corpus) -> Callable[..., ClmTrainer]:
    """``train_tiny(architecture="gpt2", **training_arguments)``: 8 steps on the kit's corpus, every loss finite."""

    def train(architecture: str = "gpt2", **arguments: Any) -> ClmTrainer:
        args = clmkit_args(max_steps=8, logging_strategy="steps", logging_steps=4, **arguments)
        trainer = ClmTrainer(
            model=clmkit_model(architecture=architecture),
            args=args,
            processing_class=clmkit_tokenizer,
            train_dataset=Dataset.from_dict({"content": clmkit_corpus}),
        )
        trainer.train()
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        assert len(losses) == 2 and all(math.isfinite(x) for x in losses), losses
        return trainer

    return train
