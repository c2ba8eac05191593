"""The loss ``plugin_template``: cross-entropy on every target token but the first ``skip_first`` of each example.

A clmkit loss returns a *sum* over one micro-batch and that micro-batch's share of the normalizer;
clmkit divides by the normalizer of the whole accumulation window, so the loss is exact under
gradient accumulation and on several processes. For a weighted token cross-entropy, overriding
``token_weights`` and ``normalizer`` is all it takes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from clmkit import Loss, hookimpl
from clmkit.errors import ConfigError


class PluginTemplate(Loss):
    """Cross-entropy over every target token except the first ``skip_first`` of each example."""

    def __init__(self, tokenizer: Any = None, skip_first: int = 0) -> None:
        del tokenizer  # every loss factory is called with tokenizer=...; this one does not need it
        if skip_first < 0:
            raise ConfigError(f"skip_first must be >= 0, got {skip_first!r}. Fix loss_kwargs.")
        self.skip_first = skip_first

    def token_weights(self, batch: Mapping[str, Tensor]) -> Tensor:
        """1 for each scored target (B, T-1), 0 for the first ``skip_first`` positions and for ``-100``."""
        weights = (batch["labels"][:, 1:] != -100).float()
        weights[:, : self.skip_first] = 0
        return weights

    def normalizer(self, batch: Mapping[str, Tensor]) -> Tensor:
        """The number of scored targets: what the weights add up to."""
        return self.token_weights(batch).sum()


@hookimpl
def clmkit_register_losses(register: Any) -> None:
    register("plugin_template", PluginTemplate)
