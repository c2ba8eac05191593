"""The param grouper ``plugin_template``: weight decay on matrices only (no biases, norms' gains or other vectors).

A param grouper returns the optimizer's parameter groups; together they must hold every trainable
parameter exactly once. clmkit calls it as ``grouper(model, weight_decay)``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from clmkit import hookimpl


def plugin_template(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: the trainable parameters of two or more dimensions with ``weight_decay``, the rest without."""
    trainable = [p for p in model.parameters() if p.requires_grad]  # tied weights are listed once
    return [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]


@hookimpl
def clmkit_register_param_groupers(register: Any) -> None:
    register("plugin_template", plugin_template)
