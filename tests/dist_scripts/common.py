"""What the launched test scripts share: the inputs the test wrote, a dropout-free tiny GPT-2, both paths."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

CONTEXT = 64


def write_inputs(workdir: Path, tokenizer: Any, texts: list[str]) -> None:
    """Save what the scripts read: the tokenizer, and ``data.json`` with ``train`` (six source files),
    ``eval_ids`` (13 tokenized examples of uneven lengths: no even split over 2 processes x batch 4)
    and ``resume_ids`` (18 examples of ``CONTEXT`` tokens: an epoch's last 2 make no full global batch of 8).
    """
    stream = [t for text in texts for t in [*tokenizer(text)["input_ids"], tokenizer.eos_token_id]]
    lengths = [3 + (i * 37) % 62 for i in range(13)]
    starts = [sum(lengths[:i]) for i in range(13)]
    data = {
        "train": texts[:6],
        "eval_ids": [stream[s : s + n] for s, n in zip(starts, lengths, strict=True)],
        "resume_ids": [stream[i * CONTEXT : (i + 1) * CONTEXT] for i in range(18)],
    }
    tokenizer.save_pretrained(workdir / "tokenizer")
    (workdir / "data.json").write_text(json.dumps(data), encoding="utf-8")


def load_inputs(workdir: Path) -> tuple[Any, dict[str, Any]]:
    """The tokenizer and ``data.json`` saved by ``write_inputs``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(workdir / "tokenizer")
    return tokenizer, json.loads((workdir / "data.json").read_text(encoding="utf-8"))


def tiny_model(tokenizer: Any, dropout: float = 0.0) -> torch.nn.Module:
    """The kit's 2-layer, 64-dim GPT-2, seed 0; no dropout by default, so paths and layouts compare."""
    from clmkit.testing import NO_DROPOUT
    from clmkit.testing import tiny_model as kit_tiny_model

    return kit_tiny_model(tokenizer, CONTEXT, seed=0, **dict.fromkeys(NO_DROPOUT, dropout))


def runner(path: str, **kwargs: Any) -> Any:
    """A ``ClmTrainer`` (``path="trainer"``) or a ``ClmLoop`` (``path="loop"``) built from the same keywords."""
    from clmkit import ClmTrainer
    from clmkit.training.loop import ClmLoop

    return {"trainer": ClmTrainer, "loop": ClmLoop}[path](**kwargs)
