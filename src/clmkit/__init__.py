"""clmkit: train causal language models from scratch with a plugin-based transformers Trainer.

Public names are imported on first use (PEP 562), so ``import clmkit.hookspecs`` — which the
``clmkit.testing`` pytest plugin and every plugin package do — does not pull in torch and
transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_EXPORTS = {
    "ClmTrainingArguments": "clmkit.args",
    "Chunker": "clmkit.data.chunking",
    "ChunkStats": "clmkit.data.chunking",
    "DocumentFilter": "clmkit.data.filters",
    "linear_cross_entropy": "clmkit.training.cross_entropy",
    "ClmkitError": "clmkit.errors",
    "ConfigError": "clmkit.errors",
    "DataError": "clmkit.errors",
    "PluginError": "clmkit.errors",
    "UnknownNameError": "clmkit.errors",
    "hookimpl": "clmkit.hookspecs",
    "Loss": "clmkit.training.losses",
    "LossInputs": "clmkit.training.losses",
    "ClmMetrics": "clmkit.training.metrics",
    "Plugins": "clmkit.plugins",
    "ClmTrainer": "clmkit.training.trainer",
    "NonFiniteLossError": "clmkit.training.components",
    "ClmLoop": "clmkit.training.loop",
    "Mixture": "clmkit.data.mixtures",
    "Source": "clmkit.data.mixtures",
    # the built-in plugins' classes, public so that plugins may subclass them
    "Overflow": "clmkit.builtins.chunkers",
    "Concat": "clmkit.builtins.chunkers",
    "Packed": "clmkit.builtins.chunkers",
    "CausalCollator": "clmkit.builtins.collators",
    "ExactDedup": "clmkit.builtins.filters",
    "Keywords": "clmkit.builtins.filters",
    "CodeQuality": "clmkit.builtins.filters",
    "CrossEntropy": "clmkit.builtins.losses",
    "KeyToken": "clmkit.builtins.losses",
}

__all__ = [
    "CausalCollator",
    "ChunkStats",
    "Chunker",
    "ClmLoop",
    "ClmMetrics",
    "ClmTrainer",
    "ClmTrainingArguments",
    "ClmkitError",
    "CodeQuality",
    "Concat",
    "ConfigError",
    "CrossEntropy",
    "DataError",
    "DocumentFilter",
    "ExactDedup",
    "KeyToken",
    "Keywords",
    "Loss",
    "LossInputs",
    "Mixture",
    "NonFiniteLossError",
    "Overflow",
    "Packed",
    "PluginError",
    "Plugins",
    "Source",
    "UnknownNameError",
    "hookimpl",
    "linear_cross_entropy",
]

if TYPE_CHECKING:
    from clmkit.args import ClmTrainingArguments
    from clmkit.builtins.chunkers import Concat, Overflow, Packed
    from clmkit.builtins.collators import CausalCollator
    from clmkit.builtins.filters import CodeQuality, ExactDedup, Keywords
    from clmkit.builtins.losses import CrossEntropy, KeyToken
    from clmkit.data.chunking import Chunker, ChunkStats
    from clmkit.data.filters import DocumentFilter
    from clmkit.data.mixtures import Mixture, Source
    from clmkit.errors import ClmkitError, ConfigError, DataError, PluginError, UnknownNameError
    from clmkit.hookspecs import hookimpl
    from clmkit.plugins import Plugins
    from clmkit.training.components import NonFiniteLossError
    from clmkit.training.cross_entropy import linear_cross_entropy
    from clmkit.training.loop import ClmLoop
    from clmkit.training.losses import Loss, LossInputs
    from clmkit.training.metrics import ClmMetrics
    from clmkit.training.trainer import ClmTrainer


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'clmkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
