"""Peak memory and time of one forward+backward step: transformers' own loss vs clmkit's chunked loss.

A narrow GPT-2 (64 dimensions, 2 layers) at GPT-2's vocabulary of 50,257 tokens, so the LM head
and its logits dominate, as they do at the course's scale. Every configuration runs in its own
process: peak RSS (``getrusage``) is per process, so each figure covers exactly one loss path.

- ``transformers``: ``model(input_ids, labels=labels).loss.backward()``
- ``clmkit``: what ``ClmTrainer.compute_loss`` runs: the forward with the hidden states captured
  (``clmkit.training.forward.forward_for_loss``), the built-in ``cross_entropy`` loss through the chunked
  primitive, divided by the number of target tokens, then backward.

- ``recompute`` (with ``--recompute``): the design clmkit did not keep, for comparison: the same
  chunks, but the forward only sums the loss and the backward recomputes every chunk's logits.

Time is the fastest of ``--steps`` steps (the first pays one-time allocations); peak RSS covers
them all. Run: ``python bench/loss_memory.py`` (about 3 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from isolated import entry, peak_rss_mib, run_isolated

MEMORY_TARGET, TIME_TARGET = 0.5, 1.1


def recomputing_cross_entropy(hidden: Any, weight: Any, targets: Any, chunk_size: int | None) -> Any:
    """Summed token cross-entropy whose backward recomputes each chunk's logits (no bias, all targets valid)."""
    import torch

    from clmkit.training.cross_entropy import _chunks, _softmax_, default_chunk_size

    size = chunk_size or default_chunk_size(weight.shape[0])

    class Recompute(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight):
            ctx.save_for_backward(hidden, weight)
            total = torch.zeros(())
            for rows, _, _, logits in _chunks(hidden, weight, None, size):
                target_logit = logits.gather(1, targets[rows].unsqueeze(1)).squeeze(1)
                total += (_softmax_(logits) - target_logit).sum()
            return total

        @staticmethod
        def backward(ctx, grad_output):
            hidden, weight = ctx.saved_tensors
            grad_hidden, grad_weight = torch.empty_like(hidden), torch.zeros_like(weight)
            for rows, h, w, probs in _chunks(hidden, weight, None, size):
                _softmax_(probs)
                probs.scatter_add_(1, targets[rows].unsqueeze(1), torch.full((probs.shape[0], 1), -1.0))
                probs.mul_(grad_output)
                grad_hidden[rows] = probs @ w
                grad_weight.addmm_(probs.t(), h)
            return grad_hidden, grad_weight

    return Recompute.apply(hidden, weight)


def one_configuration(config: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from clmkit.builtins.losses import CrossEntropy
    from clmkit.training.forward import forward_for_loss
    from clmkit.training.losses import loss_from_inputs

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=config["vocab"], n_positions=config["context"], n_embd=64, n_layer=2, n_head=2)
    )
    ids = torch.randint(0, config["vocab"], (config["batch"], config["context"]))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    loss_fn = CrossEntropy()
    before = peak_rss_mib()
    times, losses = [], []
    for _ in range(config["steps"]):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        if config["method"] == "transformers":
            loss = model(**batch).loss
        elif config["method"] == "clmkit":
            inputs, _ = forward_for_loss(model, batch, hidden_states=True, chunk_size=config["chunk_size"])
            loss = loss_from_inputs(loss_fn, inputs, loss_fn.normalizer(batch))
        else:
            inputs, _ = forward_for_loss(model, batch, hidden_states=True)
            hidden = inputs.hidden_states[:, :-1].reshape(-1, 64)
            loss = recomputing_cross_entropy(hidden, model.lm_head.weight, ids[:, 1:].reshape(-1), config["chunk_size"])
            loss = loss / hidden.shape[0]
        loss.backward()
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    return {
        **config,
        "loss": losses[0],
        "time_s": min(times),
        "peak_rss_mib": peak_rss_mib(),
        "before_step_mib": before,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, help="tokens per chunk of clmkit's loss (default: its default)")
    parser.add_argument("--recompute", action="store_true", help="also measure recomputation in backward")
    parser.add_argument("--threads", type=int, help="torch threads per process (default: torch's own choice)")
    args = parser.parse_args()
    methods = ("transformers", "clmkit", "recompute") if args.recompute else ("transformers", "clmkit")
    rows = []
    for context in args.contexts:
        results = {
            method: run_isolated(
                __file__,
                {
                    "method": method,
                    "context": context,
                    "batch": args.batch,
                    "vocab": args.vocab,
                    "steps": args.steps,
                    "chunk_size": args.chunk_size,
                },
                args.threads,
            )
            for method in methods
        }
        rows.append(results)
        print(f"context {context}: {results}", flush=True)
    print(table(rows))


def table(rows: list[dict[str, dict[str, Any]]]) -> str:
    lines = [
        "| batch x context | loss path | peak RSS (MiB) | step's own peak (MiB) | step time (s) | loss |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    ratios = [
        "",
        "| batch x context | loss path | peak RSS / transformers' | time / transformers' | targets met |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for results in rows:
        hf = results["transformers"]
        shape = f"{hf['batch']} x {hf['context']}"
        for name, r in results.items():
            own = r["peak_rss_mib"] - r["before_step_mib"]
            lines.append(
                f"| {shape} | {name} | {r['peak_rss_mib']:.0f} | {own:.0f} | {r['time_s']:.2f} | {r['loss']:.4f} |"
            )
            if name == "transformers":
                continue
            memory, speed = r["peak_rss_mib"] / hf["peak_rss_mib"], r["time_s"] / hf["time_s"]
            met = "yes" if memory <= MEMORY_TARGET and speed <= TIME_TARGET else "**no**"
            targets = f"{memory:.2f} (<= {MEMORY_TARGET}) | {speed:.2f} (<= {TIME_TARGET})"
            ratios.append(f"| {shape} | {name} | {targets} | {met} |")
    return "\n".join(lines + ratios)


if __name__ == "__main__":
    entry(main, one_configuration)
