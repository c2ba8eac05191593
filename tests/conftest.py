"""What only this repository's tests share; the tiny corpus, tokenizer, models and arguments come from the kit.

The kit is ``clmkit.testing``, a pytest plugin loaded wherever clmkit is installed: ``clmkit_corpus``,
``clmkit_tokenizer`` (a fresh copy per test), ``clmkit_model``, ``clmkit_args``, ``clmkit_plugins``,
``clmkit_install_plugin`` and builders such as ``padded_examples``. The suite uses them, so the kit
that plugin authors get is tested by being used. Repository plumbing lives in ``tests/support``.
"""

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
def raw_datasets(clmkit_corpus):
    """``clmkit_corpus`` as the course's DatasetDict: its first two documents are ``valid``, the rest ``train``."""
    from datasets import Dataset, DatasetDict

    return DatasetDict(
        train=Dataset.from_dict({"content": clmkit_corpus[2:]}),
        valid=Dataset.from_dict({"content": clmkit_corpus[:2]}),
    )


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy CPU OpenMP spinning makes them ~20x slower.

    A test that compares numbers with a process it starts gives that process ``support.pinned_env()``,
    so both sides run with this thread count.
    """
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
