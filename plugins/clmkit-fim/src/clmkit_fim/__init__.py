"""clmkit-fim: fill-in-the-middle training for code models, as a clmkit chunker named ``fim``.

``ClmTrainingArguments(chunker="fim")`` (or ``clmkit train --chunker fim``) rearranges documents
as Bavarian et al. (2022) describe and SantaCoder and StarCoder train; ``infill`` asks a trained
model for the middle between a prefix and a suffix.
"""

from clmkit_fim.fim import (
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
    FillInTheMiddle,
    Sentinels,
    prepare,
    sentinel_ids,
)
from clmkit_fim.infill import infill

__version__ = "0.1.0"

__all__ = [
    "FIM_MIDDLE",
    "FIM_PREFIX",
    "FIM_SUFFIX",
    "FillInTheMiddle",
    "Sentinels",
    "infill",
    "prepare",
    "sentinel_ids",
]
