"""clmkit: train causal language models from scratch with a plugin-based transformers Trainer."""

from clmkit.args import ClmTrainingArguments
from clmkit.chunking import Chunker, ChunkStats
from clmkit.cross_entropy import linear_cross_entropy
from clmkit.errors import ClmkitError, ConfigError, DataError, PluginError, UnknownNameError
from clmkit.hookspecs import hookimpl
from clmkit.losses import Loss, LossInputs
from clmkit.plugins import Plugins
from clmkit.trainer import ClmTrainer, NonFiniteLossError

__version__ = "0.1.0"

__all__ = [
    "ChunkStats",
    "Chunker",
    "ClmTrainer",
    "ClmTrainingArguments",
    "ClmkitError",
    "ConfigError",
    "DataError",
    "Loss",
    "LossInputs",
    "NonFiniteLossError",
    "PluginError",
    "Plugins",
    "UnknownNameError",
    "hookimpl",
    "linear_cross_entropy",
]
