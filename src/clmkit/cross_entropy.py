"""The shared cross-entropy primitive: weighted token cross-entropy straight from hidden states.

``linear_cross_entropy`` computes ``sum_t w_t * CE(h_t @ W.T + b, y_t)`` chunk by chunk of tokens,
so no (tokens x vocabulary) tensor larger than one chunk ever exists. Because the result is a
scalar, the gradients for the hidden states, the weight and the bias are formed in the same
pass (scaled by the upstream gradient in backward), which costs no recomputation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
DEFAULT_CHUNK_ELEMENTS = 2**25  # logits elements per chunk: 128 MiB in fp32


def default_chunk_size(vocab_size: int) -> int:
    """Tokens per chunk so that one chunk of fp32 logits stays near 128 MiB."""
    return max(64, DEFAULT_CHUNK_ELEMENTS // max(vocab_size, 1))


def _compute_dtype(device: torch.device, fallback: torch.dtype) -> torch.dtype:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return fallback


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, token_weights, chunk_size):  # type: ignore[override]
        dtype = _compute_dtype(hidden.device, hidden.dtype)
        needs_grad = any(ctx.needs_input_grad[:3])
        w_c = weight.to(dtype)
        b_c = bias.to(dtype) if bias is not None else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden, dtype=torch.float32) if needs_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs_grad else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if needs_grad and bias is not None else None
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size].to(dtype)
            y = targets[start : start + chunk_size]
            tw = token_weights[start : start + chunk_size].float()
            logits = F.linear(h, w_c, b_c).float()
            lse = torch.logsumexp(logits, dim=-1)
            target_logit = logits.gather(1, y.unsqueeze(1)).squeeze(1)
            total = total + ((lse - target_logit) * tw).sum()
            if needs_grad:
                # d(sum w*CE)/d logits = w * (softmax - onehot), formed in place over the chunk's logits
                probs = logits.sub_(lse.unsqueeze(1)).exp_()
                probs.scatter_add_(1, y.unsqueeze(1), torch.full_like(tw, -1.0).unsqueeze(1))
                g = probs.mul_(tw.unsqueeze(1)).to(dtype)
                grad_hidden[start : start + chunk_size] = g @ w_c
                if dtype == torch.float32:
                    grad_weight.addmm_(g.t(), h)
                else:
                    grad_weight.add_(g.t() @ h)
                if grad_bias is not None:
                    grad_bias.add_(g.float().sum(0))
            del logits
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        scale = grad_output.float()
        gh = (grad_hidden * scale).to(h_dtype) if ctx.needs_input_grad[0] else None
        gw = (grad_weight * scale).to(w_dtype) if ctx.needs_input_grad[1] else None
        gb = (grad_bias * scale).to(b_dtype) if grad_bias is not None and ctx.needs_input_grad[2] else None
        return gh, gw, gb, None, None, None


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    token_weights: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """``sum_t w_t * CE(hidden_t @ weight.T + bias, targets_t)`` without materializing all logits.

    ``hidden`` is (N, H), ``targets`` (N,) with ``-100`` for ignored tokens, ``token_weights`` (N,)
    (default 1). Works under autocast (matmuls in the autocast dtype, softmax in fp32).
    """
    if token_weights is None:
        token_weights = torch.ones(targets.shape, dtype=torch.float32, device=targets.device)
    keep = targets != IGNORE_INDEX
    if not bool(keep.all()):
        hidden, targets, token_weights = hidden[keep], targets[keep], token_weights[keep]
    size = chunk_size or default_chunk_size(weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, token_weights, size)


def logits_cross_entropy(logits: Tensor, targets: Tensor, token_weights: Tensor | None = None) -> Tensor:
    """The same weighted sum from already computed logits (N, V): the simple, unchunked path."""
    losses = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="none")
    if token_weights is not None:
        losses = losses * token_weights
    return losses.sum()


@torch.no_grad()
def token_statistics(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Per-token cross-entropy and whether the argmax was right, (N,) each, chunked, no graph.

    Ignored targets (``-100``) get loss 0 and correct False. Used by evaluation.
    """
    dtype = _compute_dtype(hidden.device, hidden.dtype)
    losses = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)
    correct = torch.zeros(targets.shape, dtype=torch.bool, device=hidden.device)
    size = chunk_size or default_chunk_size(weight.shape[0])
    w_c = weight.to(dtype)
    b_c = bias.to(dtype) if bias is not None else None
    for start in range(0, hidden.shape[0], size):
        sl = slice(start, start + size)
        logits = F.linear(hidden[sl].to(dtype), w_c, b_c).float()
        y = targets[sl]
        losses[sl] = F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="none")
        correct[sl] = (logits.argmax(-1) == y) & (y != IGNORE_INDEX)
    return losses, correct
