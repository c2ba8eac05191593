"""clmkit: train causal language models from scratch with a plugin-based transformers Trainer.

Public names are imported on first use (PEP 562), so ``import clmkit.hookspecs`` — which the
``clmkit.testing`` pytest plugin and every plugin package do — does not pull in torch and
transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ClmTrainingArguments": "clmkit.args",
    "Chunker": "clmkit.chunking",
    "ChunkStats": "clmkit.chunking",
    "linear_cross_entropy": "clmkit.cross_entropy",
    "ClmkitError": "clmkit.errors",
    "ConfigError": "clmkit.errors",
    "DataError": "clmkit.errors",
    "PluginError": "clmkit.errors",
    "UnknownNameError": "clmkit.errors",
    "hookimpl": "clmkit.hookspecs",
    "Loss": "clmkit.losses",
    "LossInputs": "clmkit.losses",
    "ClmMetrics": "clmkit.metrics",
    "Plugins": "clmkit.plugins",
    "ClmTrainer": "clmkit.trainer",
    "NonFiniteLossError": "clmkit.trainer",
    "ClmLoop": "clmkit.loop",
    "Mixture": "clmkit.mixtures",
    "Source": "clmkit.mixtures",
}

__all__ = [
    "ChunkStats",
    "Chunker",
    "ClmLoop",
    "ClmMetrics",
    "ClmTrainer",
    "ClmTrainingArguments",
    "ClmkitError",
    "ConfigError",
    "DataError",
    "Loss",
    "LossInputs",
    "Mixture",
    "NonFiniteLossError",
    "PluginError",
    "Plugins",
    "Source",
    "UnknownNameError",
    "hookimpl",
    "linear_cross_entropy",
]

if TYPE_CHECKING:
    from clmkit.args import ClmTrainingArguments
    from clmkit.chunking import Chunker, ChunkStats
    from clmkit.cross_entropy import linear_cross_entropy
    from clmkit.errors import ClmkitError, ConfigError, DataError, PluginError, UnknownNameError
    from clmkit.hookspecs import hookimpl
    from clmkit.loop import ClmLoop
    from clmkit.losses import Loss, LossInputs
    from clmkit.metrics import ClmMetrics
    from clmkit.mixtures import Mixture, Source
    from clmkit.plugins import Plugins
    from clmkit.trainer import ClmTrainer, NonFiniteLossError


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'clmkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
