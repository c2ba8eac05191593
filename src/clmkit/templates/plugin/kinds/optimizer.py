"""The optimizer ``plugin_template``: SGD with momentum over the param grouper's groups.

clmkit calls an optimizer factory as ``factory(model, param_groups, args, **optimizer_kwargs)``; its
keyword-only parameters are the ``optimizer_kwargs`` it takes, checked by name and annotated type
before a run starts. The learning rate is ``args.learning_rate`` (the scheduler scales it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from clmkit import ClmTrainingArguments, hookimpl
from clmkit.errors import ConfigError


def plugin_template(
    model: nn.Module,
    param_groups: list[dict[str, Any]],
    args: ClmTrainingArguments,
    *,
    momentum: float = 0.9,
    nesterov: bool = True,
) -> torch.optim.Optimizer:
    """SGD at ``args.learning_rate`` with ``momentum`` (Nesterov unless turned off)."""
    if not 0 <= momentum < 1:
        raise ConfigError(
            f"optimizer 'plugin_template' momentum must be in [0, 1), got {momentum!r}. Fix optimizer_kwargs."
        )
    return torch.optim.SGD(param_groups, lr=args.learning_rate, momentum=momentum, nesterov=nesterov and momentum > 0)


@hookimpl
def clmkit_register_optimizers(register: Any) -> None:
    register("plugin_template", plugin_template)
