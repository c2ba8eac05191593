"""Built-in optimizers: ``adamw`` (the ``--optim`` class of TrainingArguments, fused AdamW by default) and
``muon`` (``clmkit.training.muon.MuonAdamW``: Muon on hidden matrices, AdamW on the rest)."""

from __future__ import annotations

from typing import Any, Literal, cast

import torch
from torch import nn
from transformers import PreTrainedModel

from clmkit.args import ClmTrainingArguments
from clmkit.errors import ConfigError
from clmkit.hookspecs import OptimizerFactory, Register, hookimpl
from clmkit.training.muon import LR_ADJUSTMENTS, MuonAdamW

NS_DTYPES = ("auto", "bfloat16", "float32")


def adamw(model: nn.Module, param_groups: list[dict[str, Any]], args: ClmTrainingArguments) -> torch.optim.Optimizer:
    """The optimizer ``args.optim`` names (``adamw_torch_fused`` unless changed), as ``Trainer`` would build it,
    over the grouper's parameter groups."""
    from transformers import Trainer

    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, cast(PreTrainedModel, model))
    return optimizer_cls(param_groups, **optimizer_kwargs)


def hidden_matrices(model: nn.Module) -> set[int]:
    """The ids of the 2-D weights inside the network: not embeddings (token or position), not the output head."""
    outer: set[int] = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    for get in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, get, lambda: None)()
        outer |= {id(p) for p in module.parameters()} if module is not None else set()
    return {id(p) for p in model.parameters() if p.ndim == 2 and id(p) not in outer}


def muon(
    model: nn.Module,
    param_groups: list[dict[str, Any]],
    args: ClmTrainingArguments,
    *,
    muon_lr: float | None = None,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    ns_dtype: Literal["auto", "bfloat16", "float32"] = "auto",
    adjust_lr: Literal["match_rms_adamw", "original"] = "match_rms_adamw",
) -> torch.optim.Optimizer:
    """Muon on the hidden weight matrices of each of the grouper's groups, AdamW (betas, epsilon and learning
    rate of ``args``) on embeddings, head, norms and biases. ``muon_lr`` sets Muon's peak learning rate apart
    (default: ``learning_rate``, which ``adjust_lr="match_rms_adamw"`` makes comparable to AdamW's)."""
    if ns_dtype not in NS_DTYPES:
        raise ConfigError(
            f"muon's ns_dtype must be one of {', '.join(NS_DTYPES)}, got {ns_dtype!r}. Fix --optimizer_kwargs."
        )
    if adjust_lr not in LR_ADJUSTMENTS:
        raise ConfigError(
            f"muon's adjust_lr must be one of {', '.join(LR_ADJUSTMENTS)}, got {adjust_lr!r}. Fix --optimizer_kwargs."
        )
    if not 0 <= momentum < 1 or ns_steps < 1 or (muon_lr is not None and not muon_lr > 0):
        raise ConfigError(
            f"muon needs 0 <= momentum < 1, ns_steps >= 1 and muon_lr > 0; got momentum={momentum}, "
            f"ns_steps={ns_steps}, muon_lr={muon_lr}. Fix --optimizer_kwargs."
        )
    matrices = hidden_matrices(model)
    groups: list[dict[str, Any]] = []
    for group in param_groups:
        options = {k: v for k, v in group.items() if k != "params"}
        inner = [p for p in group["params"] if id(p) in matrices]
        outer = [p for p in group["params"] if id(p) not in matrices]
        if inner:
            groups.append(
                {**options, "lr": muon_lr or options.get("lr", args.learning_rate), "params": inner, "use_muon": True}
            )
        if outer:
            groups.append({**options, "params": outer, "use_muon": False})
    device = next(model.parameters()).device
    return MuonAdamW(
        groups,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        momentum=momentum,
        nesterov=nesterov,
        ns_steps=ns_steps,
        ns_dtype=ns_dtype,
        adjust_lr=adjust_lr,
        fused=device.type in ("cuda", "cpu"),
    )


@hookimpl
def clmkit_register_optimizers(register: Register[OptimizerFactory]) -> None:
    register("adamw", adamw)
    register("muon", muon)
