"""Built-in parameter grouping ``decay_except_bias_and_norm``: norms found by module type."""

from __future__ import annotations

from typing import Any

from torch import nn

from clmkit.hookspecs import Register, hookimpl

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.RMSNorm,
)


def is_norm(module: nn.Module) -> bool:
    """Normalization layers: torch's types, and any module class named ``*Norm`` (Llama's RMSNorm)."""
    return isinstance(module, NORM_TYPES) or type(module).__name__.lower().endswith("norm")


def decay_except_bias_and_norm(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on every weight except biases and the weights of normalization layers.

    The course's ``["bias", "LayerNorm.weight"]`` name match finds no norm in GPT-2 (``ln_1``,
    ``ln_2``, ``ln_f``); the module type does. Embeddings are decayed, as in the course.
    """
    no_decay: set[str] = set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if param_name == "bias" or is_norm(module):
                no_decay.add(full)
    decay: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for name, param in model.named_parameters():  # tied weights are listed once
        if param.requires_grad:
            (plain if name in no_decay else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


@hookimpl
def clmkit_register_param_groupers(register: Register) -> None:
    register("decay_except_bias_and_norm", decay_except_bias_and_norm)
