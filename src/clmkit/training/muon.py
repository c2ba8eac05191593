"""``MuonAdamW``: Muon on the hidden weight matrices, AdamW on everything else, as one ``torch.optim.Optimizer``.

Muon (Jordan et al., 2024) replaces each 2-D gradient's momentum by its nearest semi-orthogonal
matrix (five Newton–Schulz iterations), so every direction of a weight matrix moves at the same
rate. Embeddings, the output head, norms and biases keep AdamW. One optimizer object holds both,
so the LR scheduler, gradient clipping, accumulation and checkpoints treat it like AdamW: its
``state_dict`` holds AdamW's moments and Muon's momentum buffers per parameter.

``torch.optim.Muon`` always iterates in bfloat16, which costs more than the model's
forward+backward on a CPU that emulates bfloat16; here the iteration dtype is a choice
(``ns_dtype``), by default bfloat16 only where the device computes in it natively.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, cast

import torch
from torch import Tensor

from clmkit.device import native_bf16

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the quintic of Keller Jordan's Muon, as in torch.optim.Muon
LR_ADJUSTMENTS = ("match_rms_adamw", "original")


def orthogonalized(updates: Tensor, steps: int, dtype: torch.dtype, eps: float = 1e-7) -> Tensor:
    """Newton–Schulz iterations towards the nearest semi-orthogonal matrix of each matrix in ``updates``
    (shape ``(batch, rows, cols)``), computed in ``dtype`` with torch.optim.Muon's fused multiply-adds."""
    a, b, c = NS_COEFFICIENTS
    x = updates.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def lr_scale(shape: torch.Size, adjustment: str) -> float:
    """Muon's per-matrix learning-rate factor: ``match_rms_adamw`` (0.2 √max(rows, cols), Moonshot's: the update
    has AdamW's RMS, so AdamW's learning rate and weight decay carry over) or ``original`` (√max(1, rows/cols))."""
    rows, cols = shape[0], shape[1]
    if adjustment == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1.0, rows / cols))


class MuonAdamW(torch.optim.Optimizer):
    """Muon on the parameter groups with ``use_muon=True`` (2-D matrices only), AdamW on the others.

    Muon groups take ``momentum``, ``nesterov``, ``ns_steps``, ``ns_dtype`` (``"auto"``, ``"bfloat16"``
    or ``"float32"``) and ``adjust_lr``; AdamW groups take ``betas``, ``eps`` and ``fused``. Both take
    ``lr`` and decoupled ``weight_decay``.
    """

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_dtype: str = "auto",
        adjust_lr: str = "match_rms_adamw",
        fused: bool | None = None,
    ) -> None:
        groups = [dict(g) for g in params]
        for group in groups:
            group.setdefault("use_muon", False)
            if group["use_muon"] and any(p.ndim != 2 for p in group["params"]):
                raise ValueError("Muon groups hold 2-D weight matrices only; put other parameters in AdamW groups")
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "nesterov": nesterov,
            "ns_steps": ns_steps,
            "ns_dtype": ns_dtype,
            "adjust_lr": adjust_lr,
        }
        super().__init__(groups, defaults)
        adam_groups = [g for g in self.param_groups if not g["use_muon"]]
        self._adamw = torch.optim.AdamW(adam_groups or [{"params": []}], lr=lr, betas=betas, eps=eps, fused=fused)
        self._share_with_adamw()

    def _share_with_adamw(self) -> None:
        """AdamW steps our own group dicts (so the scheduler's ``lr`` reaches it) and keeps its moments in our
        ``state`` (so ``state_dict`` holds them)."""
        self._adamw.param_groups = [g for g in self.param_groups if not g["use_muon"]]
        self._adamw.state = self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._share_with_adamw()  # loading replaced the group dicts and the state mapping

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._adamw.step()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_step(group)
        return loss

    def _muon_step(self, group: dict[str, Any]) -> None:
        by_shape: dict[tuple[torch.Size, torch.device], list[Tensor]] = {}
        for param in group["params"]:
            if param.grad is not None:
                by_shape.setdefault((param.shape, param.device), []).append(param)
        lr, decay = group["lr"], group["weight_decay"]
        for (shape, device), params in by_shape.items():  # same-shaped matrices iterate as one batch
            beta = group["momentum"]
            updates = []
            for param in params:
                grad = cast(Tensor, param.grad)
                buffer = self.state[param].setdefault("momentum_buffer", torch.zeros_like(param))
                buffer.lerp_(grad, 1 - beta)
                updates.append(grad.lerp(buffer, beta) if group["nesterov"] else buffer)
            dtype = iteration_dtype(group["ns_dtype"], device)
            update = orthogonalized(torch.stack(updates), group["ns_steps"], dtype)
            step = lr * lr_scale(shape, group["adjust_lr"])
            for param, change in zip(params, update, strict=True):
                param.mul_(1 - lr * decay)
                param.add_(change.to(param.dtype), alpha=-step)


def iteration_dtype(name: str, device: torch.device) -> torch.dtype:
    """The Newton–Schulz dtype: ``auto`` is bfloat16 where ``device`` computes in it natively, else float32."""
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[name]
