"""The shared cross-entropy primitive: weighted token cross-entropy straight from hidden states.

``linear_cross_entropy`` computes ``sum_t w_t * CE(h_t @ W.T + b, y_t)`` chunk by chunk of tokens,
so no (tokens x vocabulary) tensor larger than one chunk ever exists. Because the result is a
scalar, the gradients for the hidden states, the weight and the bias are formed in the same
pass and only scaled by the upstream gradient in backward: one logits matmul per chunk instead
of two (forward, then recomputed in backward), at the same peak memory, since backward would
allocate these gradients while the model's activations are still alive anyway.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
# fp32 logits elements per chunk. On CPU 16 MiB chunks stay in glibc's reusable heap (larger blocks
# are mmapped and page-faulted afresh each time) at no cost in speed (docs/benchmarks.md); on
# accelerators the caching allocator reuses blocks and bigger matmuls keep the device busy.
CPU_CHUNK_ELEMENTS = 2**22
ACCELERATOR_CHUNK_ELEMENTS = 2**25
MIN_CHUNK_TOKENS = 16


def default_chunk_size(vocab_size: int, device: torch.device | str = "cpu") -> int:
    """Tokens per chunk so that one chunk of fp32 logits stays near the device's chunk budget."""
    elements = CPU_CHUNK_ELEMENTS if torch.device(device).type == "cpu" else ACCELERATOR_CHUNK_ELEMENTS
    return max(MIN_CHUNK_TOKENS, elements // max(vocab_size, 1))


def _compute_dtype(device: torch.device, fallback: torch.dtype) -> torch.dtype:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return fallback


def _chunks(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, chunk_size: int
) -> Iterator[tuple[slice, Tensor, Tensor, Tensor, Tensor | None]]:
    """Yield ``(rows, h, w, logits, scratch)`` per chunk: matmul in the autocast dtype, fp32 logits.

    Every chunk's logits are written into one buffer allocated for the whole call, so a consumer
    may change them in place but must not keep them past its iteration. When the matmuls run in
    another dtype (autocast), ``scratch`` is a free (rows x vocabulary) buffer of it, else ``None``.
    One buffer instead of one allocation per chunk matters on CPUs: glibc returns a freed block of
    this size to the system and the next chunk's first touch page-faults it back (15% of the
    head's time at 2,048 x 8,192 fp32 logits in 4 chunks on a 2-core CPU).
    """
    dtype = _compute_dtype(hidden.device, hidden.dtype)
    w = weight.to(dtype)
    b = bias.to(dtype) if bias is not None else None
    shape = (min(chunk_size, hidden.shape[0]), weight.shape[0])
    buffer = torch.empty(shape, dtype=torch.float32, device=hidden.device)
    other = torch.empty(shape, dtype=dtype, device=hidden.device) if dtype != torch.float32 else None
    for start in range(0, hidden.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        h = hidden[rows].to(dtype)
        logits = buffer[: h.shape[0]]
        scratch = other[: h.shape[0]] if other is not None else None
        product = scratch if scratch is not None else logits
        if b is None:
            torch.mm(h, w.t(), out=product)
        else:
            torch.addmm(b, h, w.t(), out=product)
        if scratch is not None:
            logits.copy_(scratch)
        yield rows, h, w, logits, scratch


def _softmax_(logits: Tensor) -> Tensor:
    """Turn (n, V) fp32 ``logits`` into probabilities in place; return their log-sum-exp (n,)."""
    top = logits.amax(dim=1, keepdim=True)
    total = logits.sub_(top).exp_().sum(dim=1, keepdim=True)
    logits.div_(total)
    return (total.log_() + top).squeeze(1)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, token_weights, chunk_size, z_loss, label_smoothing):
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]  # a frozen head costs no weight gradient
        needs_grad = need_hidden or need_weight or need_bias
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden, dtype=torch.float32) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if need_bias else None
        for rows, h, w, logits, scratch in _chunks(hidden, weight, bias, chunk_size):
            y = targets[rows].unsqueeze(1)
            tw = token_weights[rows].float()
            target_logit = logits.gather(1, y).squeeze(1)
            if label_smoothing:  # the target is (1 - e) * onehot + e / V
                target_logit = (1 - label_smoothing) * target_logit + label_smoothing * logits.mean(1)
            probs = logits
            lse = _softmax_(probs)
            token_loss = lse - target_logit
            if z_loss:
                token_loss = token_loss + z_loss * lse.square()
            total += (token_loss * tw).sum()
            if not needs_grad:
                continue
            # d(sum w*CE)/d logits = w * (softmax - onehot), formed in place over the chunk's probabilities;
            # z-loss scales the softmax by 1 + 2 z lse, label smoothing moves e of the onehot to e / V everywhere
            if z_loss:
                probs.mul_((1 + 2 * z_loss * lse).unsqueeze(1))
            if label_smoothing:
                probs.sub_(label_smoothing / probs.shape[1])
            probs.scatter_add_(1, y, torch.full_like(y, label_smoothing - 1, dtype=probs.dtype))
            g = probs.mul_(tw.unsqueeze(1))
            if scratch is not None:  # the matmuls' dtype, in the buffer the logits came from
                g = scratch.copy_(g)
            if grad_hidden is not None and g.dtype == torch.float32:
                torch.mm(g, w, out=grad_hidden[rows])
            elif grad_hidden is not None:
                grad_hidden[rows] = g @ w
            if grad_weight is not None and g.dtype == torch.float32:
                grad_weight.addmm_(g.t(), h)
            elif grad_weight is not None:
                grad_weight += g.t() @ h  # no fp32-output bf16 matmul on every backend: accumulate in fp32
            if grad_bias is not None:
                grad_bias += g.float().sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        scale = grad_output.float()
        gh = (grad_hidden * scale).to(h_dtype) if grad_hidden is not None else None
        gw = (grad_weight * scale).to(w_dtype) if grad_weight is not None else None
        gb = (grad_bias * scale).to(b_dtype) if grad_bias is not None else None
        return gh, gw, gb, None, None, None, None, None


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    token_weights: Tensor | None = None,
    chunk_size: int | None = None,
    z_loss: float = 0.0,
    label_smoothing: float = 0.0,
) -> Tensor:
    """``sum_t w_t * CE(hidden_t @ weight.T + bias, targets_t)`` without materializing all logits.

    ``hidden`` is (N, H), ``weight`` (V, H) as in ``nn.Linear``, ``targets`` (N,) with ``-100``
    for ignored tokens, ``token_weights`` (N,) (default 1). Under autocast the matmuls run in the
    autocast dtype and the softmax in fp32. ``chunk_size`` is tokens per chunk (default: about
    ``default_chunk_size``). Differentiable in ``hidden``, ``weight`` and ``bias``.

    ``z_loss`` adds ``z_loss * logsumexp(logits_t)^2`` per token (PaLM's z-loss, which keeps the
    softmax normalizer near 1); ``label_smoothing`` scores against ``(1 - e) * onehot + e / V``
    as ``torch.nn.functional.cross_entropy`` does. Both default to off.
    """
    if token_weights is None:
        token_weights = torch.ones(targets.shape, dtype=torch.float32, device=targets.device)
    keep = targets != IGNORE_INDEX
    if not bool(keep.all()):
        hidden, targets, token_weights = hidden[keep], targets[keep], token_weights[keep]
    size = chunk_size or default_chunk_size(weight.shape[0], hidden.device)
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, token_weights, size, z_loss, label_smoothing)


def logits_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    token_weights: Tensor | None = None,
    z_loss: float = 0.0,
    label_smoothing: float = 0.0,
) -> Tensor:
    """The same weighted sum from already computed logits (N, V): the simple, unchunked path."""
    losses = F.cross_entropy(
        logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="none", label_smoothing=label_smoothing
    )
    if z_loss:
        losses = losses + z_loss * torch.logsumexp(logits.float(), dim=-1).square() * (targets != IGNORE_INDEX)
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
    losses = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)
    correct = torch.zeros(targets.shape, dtype=torch.bool, device=hidden.device)
    size = chunk_size or default_chunk_size(weight.shape[0], hidden.device)
    for rows, _, _, logits, _ in _chunks(hidden, weight, bias, size):
        y = targets[rows]
        valid = y != IGNORE_INDEX
        correct[rows] = (logits.argmax(1) == y) & valid
        target_logit = logits.gather(1, y.clamp(min=0).unsqueeze(1)).squeeze(1)
        losses[rows] = (_softmax_(logits) - target_logit) * valid
    return losses, correct
