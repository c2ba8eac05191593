"""Muon's cost: one optimizer step against one forward+backward of the same model, per Newton–Schulz dtype.

``torch.optim.Muon`` always iterates in bfloat16; clmkit's ``MuonAdamW`` picks the dtype per device
(``ns_dtype="auto"``: bfloat16 only where the device computes in it natively). This prints, for each
architecture and preset, the seconds of one ``MuonAdamW`` step with float32 and with bfloat16
iterations, of one ``torch.optim.Muon`` step over the same matrices, and of one forward+backward
(batch 16 x 128, fp32), each the median of ``--repeats`` timings, side by side in one process.

    python bench/muon_step.py                          # llama tiny and small
    python bench/muon_step.py --presets tiny,base --architectures llama,gpt2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from clmkit import ClmTrainingArguments, Plugins
from clmkit.builtins.optimizers import hidden_matrices
from clmkit.device import native_bf16
from clmkit.models import build_model, model_config
from clmkit.training.components import build_optimizer


def median_seconds(work: Callable[[], None], repeats: int) -> float:
    """The median wall time of ``work`` over ``repeats`` calls, after one warm-up call."""
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(architecture: str, preset: str, repeats: int) -> dict[str, float]:
    """Seconds of one forward+backward and of one optimizer step per Newton–Schulz variant."""
    torch.manual_seed(0)
    model = build_model(model_config(architecture, preset, 8192, 128, 0))
    ids = torch.randint(0, 8192, (16, 128))

    def forward_backward() -> None:
        model.zero_grad(set_to_none=False)
        model(input_ids=ids, labels=ids).loss.backward()

    results = {"forward_backward": median_seconds(forward_backward, repeats)}
    plugins = Plugins(autoload=False)
    for dtype in ("float32", "bfloat16"):
        args = ClmTrainingArguments(
            output_dir="unused", report_to="none", optimizer="muon", optimizer_kwargs={"ns_dtype": dtype}
        )
        results[f"muon_{dtype}"] = median_seconds(build_optimizer(plugins, args, model).step, repeats)
    matrices = [p for p in model.parameters() if id(p) in hidden_matrices(model)]
    results["torch_muon_bfloat16"] = median_seconds(torch.optim.Muon(matrices, lr=1e-3).step, repeats)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architectures", default="llama")
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    print(f"python {' '.join(sys.argv)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {native_bf16('cpu')}\n")
    print("| model | forward+backward (s) | MuonAdamW fp32 NS (s) | MuonAdamW bf16 NS (s) | torch.optim.Muon (s) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for architecture in options.architectures.split(","):
        for preset in options.presets.split(","):
            r = measure(architecture, preset, options.repeats)
            print(
                f"| {architecture} {preset} | {r['forward_backward']:.3f} | {r['muon_float32']:.3f} | "
                f"{r['muon_bfloat16']:.3f} | {r['torch_muon_bfloat16']:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
