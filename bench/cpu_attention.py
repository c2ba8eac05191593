"""CPU attention: torch's SDPA forward+backward in bf16 against the same in fp32, per block shape, side by side.

``clmkit.training.attention`` runs half-precision attention blocks of at most ``FP32_MAX_BLOCK``
(query length x head size) in fp32 on CPUs, because torch's bf16 CPU kernel is slower there. This
prints, for a grid of shapes, both times (median of ``--repeats``) and the ratio, with the choice
clmkit makes, so the crossover can be checked on the machine at hand.

    python bench/cpu_attention.py
    python bench/cpu_attention.py --lengths 128,256 --head-sizes 64 --repeats 3
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from muon_step import median_seconds
from time_to_quality import command_line, environment, print_header

from clmkit.training.attention import FP32_MAX_BLOCK, fp32_is_faster


def attention_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> Callable[[], None]:
    """Causal SDPA forward and backward with the inputs cast to ``dtype`` (the result back in theirs)."""

    def step() -> None:
        out = F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), is_causal=True)
        out.to(q.dtype).sum().backward()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(prog="cpu_attention.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-tokens", type=int, default=2048, help="Batch x length of every shape.")
    parser.add_argument("--heads", type=int, default=4, help="Attention heads.")
    parser.add_argument("--lengths", default="64,128,256,512", help="Comma-separated sequence lengths.")
    parser.add_argument("--head-sizes", default="32,64,128", help="Comma-separated head sizes.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed repeats per shape and dtype.")
    options = parser.parse_args()
    print_header(command_line(parser, options), environment())
    print(f"clmkit runs bf16 blocks in fp32 up to length x head size {FP32_MAX_BLOCK}")
    print("| length | head size | bf16 ms | fp32 ms | fp32/bf16 time | clmkit runs |")
    print("| ---: | ---: | ---: | ---: | ---: | --- |")
    for length in (int(x) for x in options.lengths.split(",")):
        for size in (int(x) for x in options.head_sizes.split(",")):
            shape = (max(1, options.batch_tokens // length), options.heads, length, size)
            q, k, v = (torch.randn(shape, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
            half = median_seconds(attention_step(q, k, v, torch.bfloat16), options.repeats)
            full = median_seconds(attention_step(q, k, v, torch.float32), options.repeats)
            chosen = "fp32" if fp32_is_faster(q, v) else "bf16"
            print(f"| {length} | {size} | {half * 1e3:.1f} | {full * 1e3:.1f} | {full / half:.2f} | {chosen} |")


if __name__ == "__main__":
    main()
