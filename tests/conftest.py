"""Shared fixtures: a small real corpus, a tokenizer trained on it, and tiny GPT-2 models."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

STDLIB = Path(sysconfig.get_paths()["stdlib"])
CORPUS_FILES = sorted(p for p in (STDLIB / "json").glob("*.py")) + sorted(p for p in (STDLIB / "email").glob("*.py"))


@pytest.fixture(scope="session")
def texts() -> list[str]:
    """Real Python source: the stdlib's json and email packages (about 30 files)."""
    return [p.read_text(encoding="utf-8", errors="replace") for p in CORPUS_FILES]


@pytest.fixture(scope="session")
def raw_datasets(texts):
    from datasets import Dataset, DatasetDict

    return DatasetDict(
        train=Dataset.from_dict({"content": texts[2:]}),
        valid=Dataset.from_dict({"content": texts[:2]}),
    )


@pytest.fixture(scope="session")
def tokenizer(texts):
    from clmkit.data.tokenizer import train_tokenizer

    return train_tokenizer(texts, vocab_size=512)


@pytest.fixture
def make_model(tokenizer):
    """Build a fresh tiny GPT-2 (2 layers, 64 dims) with a fixed seed."""
    import torch

    from clmkit.models import build_model, gpt2_config

    def make(seed: int = 0, context_length: int = 64, **overrides):
        torch.manual_seed(seed)
        config = gpt2_config("test", len(tokenizer), context_length, tokenizer.eos_token_id, overrides)
        return build_model(config)

    return make


@pytest.fixture
def make_args(tmp_path):
    """ClmTrainingArguments for a quick, quiet CPU run in ``tmp_path``; any field can be overridden."""
    from clmkit import ClmTrainingArguments

    def make(**overrides):
        defaults = {
            "output_dir": str(tmp_path / "out"),
            "context_length": 64,
            "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 8,
            "learning_rate": 3e-3,
            "report_to": "none",
            "save_strategy": "no",
            "eval_strategy": "no",
            "logging_strategy": "no",
            "use_cpu": True,
            "disable_tqdm": True,
            "seed": 0,
        }
        return ClmTrainingArguments(**{**defaults, **overrides})

    return make


@pytest.fixture(scope="session")
def varied_examples(tokenizer, texts):
    """32 already tokenized examples of uneven lengths (3 to 64 tokens), consecutive pieces of the corpus."""
    from datasets import Dataset

    stream = [t for text in texts for t in [*tokenizer(text)["input_ids"], tokenizer.eos_token_id]]
    lengths = [3 + (i * 37) % 62 for i in range(32)]
    starts = [sum(lengths[:i]) for i in range(32)]
    return Dataset.from_dict({"input_ids": [stream[s : s + n] for s, n in zip(starts, lengths, strict=True)]})


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy CPU OpenMP spinning makes them ~20x slower."""
    import torch

    torch.set_num_threads(1)
