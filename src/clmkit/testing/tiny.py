"""Tiny, real inputs for plugin tests: a corpus, a tokenizer trained on it, a model, training arguments, examples.

Everything is built from this Python's standard library, offline, in seconds, and is the same on every run.
"""

from __future__ import annotations

import copy
import functools
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from clmkit.args import ClmTrainingArguments

CORPUS_PACKAGES = ("json", "email")
# the config overrides of a dropout-free model (GPT-2's names): gradient comparisons need them
NO_DROPOUT: dict[str, Any] = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


@functools.cache
def tiny_corpus() -> tuple[str, ...]:
    """About 30 real documents: the Python files of the standard library's ``json`` and ``email``."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for package in CORPUS_PACKAGES for p in (stdlib / package).glob("*.py"))
    return tuple(p.read_text(encoding="utf-8", errors="replace") for p in files)


@functools.cache
def _trained_tokenizer(vocab_size: int) -> PreTrainedTokenizerBase:
    from clmkit.data.tokenizer import train_tokenizer

    return train_tokenizer(tiny_corpus(), vocab_size=vocab_size)


def tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerBase:
    """A fresh copy of a byte-level BPE tokenizer trained once on ``tiny_corpus()``."""
    return copy.deepcopy(_trained_tokenizer(vocab_size))


def tiny_model(
    tokenizer: PreTrainedTokenizerBase,
    context_length: int = 64,
    seed: int = 0,
    architecture: str = "gpt2",
    **overrides: Any,
) -> PreTrainedModel:
    """A 2-layer, 64-dim model of ``architecture`` (preset ``test``) sized to ``tokenizer``, initialized from
    ``seed``."""
    import torch

    from clmkit.models import build_model, model_config

    torch.manual_seed(seed)
    config = model_config(architecture, "test", len(tokenizer), context_length, tokenizer.eos_token_id, overrides)
    return build_model(config)


def tiny_args(output_dir: str | Path, **overrides: Any) -> ClmTrainingArguments:
    """``ClmTrainingArguments`` for a quick, quiet, reproducible CPU run; any field can be overridden."""
    from clmkit.args import ClmTrainingArguments

    defaults: dict[str, Any] = {
        "output_dir": str(output_dir),
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


def padded_examples(tokenizer: PreTrainedTokenizerBase, count: int = 32, max_length: int = 64) -> Dataset:
    """``count`` tokenized examples of uneven lengths (3 to ``max_length`` tokens), some with a real EOS.

    Batches of them are padded, so a loss whose denominator is wrong under accumulation shows it.
    """
    from datasets import Dataset

    stream = [t for text in tiny_corpus() for t in [*tokenizer(text)["input_ids"], tokenizer.eos_token_id]]
    lengths = [3 + (i * 37) % (max_length - 2) for i in range(count)]
    starts = [sum(lengths[:i]) for i in range(count)]
    return Dataset.from_dict({"input_ids": [stream[s : s + n] for s, n in zip(starts, lengths, strict=True)]})
