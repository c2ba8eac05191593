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


@pytest.fixture(scope="session")
def texts() -> list[str]:
    """Real Python source: the stdlib's json package, then its email package (about 30 files)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [p for package in ("json", "email") for p in sorted((stdlib / package).glob("*.py"))]
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


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
    from clmkit.testing import tiny_model

    def make(seed: int = 0, context_length: int = 64, **overrides):
        return tiny_model(tokenizer, context_length=context_length, seed=seed, **overrides)

    return make


@pytest.fixture
def make_args(tmp_path):
    """ClmTrainingArguments for a quick, quiet CPU run in ``tmp_path``; any field can be overridden."""
    from clmkit.testing import tiny_args

    def make(**overrides):
        return tiny_args(overrides.pop("output_dir", tmp_path / "out"), **overrides)

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


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """A directory of seven real stdlib source files (json's modules and textwrap.py), for CLI runs."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    root = tmp_path_factory.mktemp("corpus")
    for path in sorted((stdlib / "json").glob("*.py")) + [stdlib / "textwrap.py"]:
        (root / path.name).write_bytes(path.read_bytes())
    return root
