"""Evaluation memory does not grow with the eval set: peak RSS of ``ClmTrainer.evaluate`` at 1x and 8x.

A narrow GPT-2 (64 dimensions, 2 layers, context 128) with a tokenizer of 8,192 tokens trained on
the Python standard library, evaluated on examples cut from the same code. Each configuration
runs in its own process, since peak RSS (``getrusage``) is per process; both the chunked path
(default) and the logits path (``chunked_loss=False``) are measured. Run:
``python bench/eval_memory.py`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from isolated import entry, peak_rss_mib, run_isolated

GROWTH_TARGET = 1.10


def prepare(work: Path, examples: int, context: int, vocab: int) -> None:
    """Train the tokenizer and cut ``examples`` examples of ``context`` tokens from stdlib code, once."""
    from datasets import Dataset

    from clmkit.data.tokenizer import train_tokenizer

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    tokenizer = train_tokenizer(texts, vocab_size=vocab)
    tokenizer.save_pretrained(work / "tokenizer")
    stream: list[int] = []
    for text in texts:
        stream += [*tokenizer(text)["input_ids"], tokenizer.eos_token_id]
        if len(stream) >= examples * context:
            break
    rows = [stream[i * context : (i + 1) * context] for i in range(examples)]
    if len(rows[-1]) < context:
        raise SystemExit(f"the standard library holds fewer than {examples} x {context} tokens")
    Dataset.from_dict({"input_ids": rows}).save_to_disk(str(work / "examples"))


def one_configuration(config: dict[str, Any]) -> dict[str, Any]:
    import torch
    from datasets import load_from_disk
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from clmkit import ClmTrainer, ClmTrainingArguments

    work = Path(config["work"])
    tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
    dataset = load_from_disk(str(work / "examples")).select(range(config["examples"]))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_positions=config["context"], n_embd=64, n_layer=2, n_head=2)
    )
    args = ClmTrainingArguments(
        output_dir=str(work / "out"),
        context_length=config["context"],
        per_device_eval_batch_size=config["batch"],
        chunked_loss=config["chunked"],
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = ClmTrainer(model, args, eval_dataset=dataset, processing_class=tokenizer)
    before = peak_rss_mib()
    start = time.perf_counter()
    metrics = trainer.evaluate()
    return {
        **config,
        "time_s": time.perf_counter() - start,
        "peak_rss_mib": peak_rss_mib(),
        "before_eval_mib": before,
        "eval_loss": metrics["eval_loss"],
        "eval_tokens": metrics["eval_tokens"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=128, help="examples in the 1x eval set")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--threads", type=int, help="torch threads per process (default: torch's own choice)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        prepare(Path(work), 8 * args.examples, args.context, args.vocab)
        results = [
            run_isolated(
                __file__,
                {
                    "work": work,
                    "examples": scale * args.examples,
                    "chunked": chunked,
                    "context": args.context,
                    "batch": args.batch,
                },
                args.threads,
            )
            for chunked in (True, False)
            for scale in (1, 8)
        ]
    print(table(results))


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| loss path | eval examples | target tokens | peak RSS (MiB) | eval's own peak (MiB) | time (s) | eval_loss |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        path = "chunked" if r["chunked"] else "logits"
        own = r["peak_rss_mib"] - r["before_eval_mib"]
        lines.append(
            f"| {path} | {r['examples']} | {r['eval_tokens']:.0f} | {r['peak_rss_mib']:.0f} | {own:.0f} "
            f"| {r['time_s']:.1f} | {r['eval_loss']:.4f} |"
        )
    lines += ["", "| loss path | peak RSS, 8x / 1x eval set | target |", "| --- | ---: | --- |"]
    for small, large in zip(results[::2], results[1::2], strict=True):
        growth = large["peak_rss_mib"] / small["peak_rss_mib"]
        verdict = "met" if growth < GROWTH_TARGET else "**missed**"
        lines.append(f"| {'chunked' if small['chunked'] else 'logits'} | {growth:.3f} | < {GROWTH_TARGET}: {verdict} |")
    return "\n".join(lines)


if __name__ == "__main__":
    entry(main, one_configuration)
