"""Peak memory of streaming a corpus through a chunker does not grow with the corpus.

Builds a corpus of jsonl shards (about 62 MB of text each) from this interpreter's standard
library, repeated in a different order each time until it holds ``--gigabytes`` of text, in a
temporary folder deleted at the end. Each (chunker, corpus size) runs in its own process: the
first ``size`` worth of shards is loaded with ``load_dataset("json", streaming=True)`` and
prepared exactly as ``ClmTrainer`` prepares a stream (``clmkit.data.preparation.prepare_datasets``),
then every example is read. Peak RSS (``getrusage``) covers the whole process.

Tokens are UTF-8 bytes (vocabulary 256 + EOS): a byte-level tokenizer running at memory speed,
since a trained BPE tokenizer encodes about 1-2 MB/s on 2 busy CPU cores (1 GB would take ~10
minutes per pass), and tokenization speed is not what is measured here.

Run: ``python bench/stream_memory.py`` (defaults: 0.25 and 1 GB, ``concat`` and ``packed``,
context 128; a few minutes on 2 CPU cores, 1.1 GB of temporary disk).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from isolated import entry, peak_rss_mib, run_isolated

SHARD_BYTES = 62_500_000  # 4 shards = 0.25 GB, 16 = 1 GB
TARGET_RATIO = 1.10


class ByteTokenizer:
    """UTF-8 bytes as token ids; EOS is 256. Only what clmkit's tokenization and chunkers call."""

    eos_token_id = pad_token_id = 256

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict[str, list[list[int]]]:
        return {"input_ids": [list(text.encode("utf-8")) for text in texts]}

    def __len__(self) -> int:
        return 257


def build_corpus(folder: Path, gigabytes: float, seed: int = 0) -> list[dict[str, Any]]:
    """Write shards of standard-library files until ``gigabytes`` of text; one record per shard."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    texts = [p.read_bytes().decode("utf-8", errors="replace") for p in files if "site-packages" not in p.parts]
    rng = random.Random(seed)
    shards: list[dict[str, Any]] = []
    total, out, size, documents = 0, None, 0, 0
    while total < gigabytes * 1e9:
        rng.shuffle(texts)
        for text in texts:
            if out is None:
                path = folder / f"shard{len(shards):03d}.jsonl"
                out, size, documents = path.open("w", encoding="utf-8"), 0, 0
            out.write(json.dumps({"content": text}) + "\n")
            size += len(text.encode("utf-8"))
            documents += 1
            if size >= SHARD_BYTES:
                out.close()
                shards.append({"path": str(path), "bytes": size, "documents": documents})
                total += size
                out = None
                if total >= gigabytes * 1e9:
                    break
    return shards


def stream_once(config: dict[str, Any]) -> dict[str, Any]:
    """Prepare the shards as a stream the way ClmTrainer does, and read every example."""
    from datasets import load_dataset
    from datasets.utils import disable_progress_bars

    from clmkit.args import ClmTrainingArguments
    from clmkit.builtins.collators import CausalCollator
    from clmkit.data.preparation import prepare_datasets
    from clmkit.plugins import Plugins

    disable_progress_bars()
    tokenizer = ByteTokenizer()
    plugins = Plugins(autoload=False)
    with tempfile.TemporaryDirectory() as out:
        args = ClmTrainingArguments(
            output_dir=out, context_length=config["context"], chunker=config["chunker"], max_steps=1, report_to="none"
        )
    chunker = plugins.build("chunkers", args.chunker, tokenizer, args.context_length)
    stream = load_dataset("json", data_files=config["files"], split="train", streaming=True)
    start = time.perf_counter()
    examples, _ = prepare_datasets(
        stream, None, tokenizer, args, chunker, {}, plugins=plugins, collator=CausalCollator(tokenizer)
    )
    before = peak_rss_mib()
    rows = tokens = 0
    for example in examples:
        rows += 1
        tokens += len(example["input_ids"])
    seconds = time.perf_counter() - start
    return {
        **{k: v for k, v in config.items() if k != "files"},
        "examples": rows,
        "tokens": tokens,
        "fill_rate": tokens / (rows * args.context_length),
        "seconds": seconds,
        "peak_rss_mib": peak_rss_mib(),
        "before_reading_mib": before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, nargs="+", default=[0.25, 1.0], help="corpus sizes (1e9 bytes)")
    parser.add_argument("--chunkers", nargs="+", default=["concat", "packed"])
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--workdir", help="where to write the temporary corpus (default: the system's temp dir)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="clmkit-stream-", dir=args.workdir))
    try:
        started = time.perf_counter()
        shards = build_corpus(folder, max(args.gigabytes))
        print(
            f"corpus: {len(shards)} shards, {sum(s['bytes'] for s in shards) / 1e9:.2f} GB of text, "
            f"written in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        results = []
        for chunker in args.chunkers:
            for gigabytes in args.gigabytes:
                chosen = shards[: max(1, round(gigabytes * 1e9 / SHARD_BYTES))]
                config = {
                    "chunker": chunker,
                    "context": args.context,
                    "gigabytes": round(sum(s["bytes"] for s in chosen) / 1e9, 3),
                    "documents": sum(s["documents"] for s in chosen),
                    "files": [s["path"] for s in chosen],
                }
                results.append(run_isolated(__file__, config))
                print(json.dumps(results[-1]), flush=True)
        print(table(results))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| chunker | text (GB) | documents | tokens | examples | fill rate | time (s) | MB/s | peak RSS (MiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['chunker']} | {r['gigabytes']:.2f} | {r['documents']:,} | {r['tokens']:,} | {r['examples']:,} | "
            f"{r['fill_rate']:.4f} | {r['seconds']:.0f} | {r['gigabytes'] * 1e3 / r['seconds']:.1f} | "
            f"{r['peak_rss_mib']:.0f} |"
        )
    lines += ["", "| chunker | peak RSS largest / smallest corpus | target |", "| --- | ---: | --- |"]
    for chunker in dict.fromkeys(r["chunker"] for r in results):
        runs = sorted((r for r in results if r["chunker"] == chunker), key=lambda r: r["gigabytes"])
        ratio = runs[-1]["peak_rss_mib"] / runs[0]["peak_rss_mib"]
        met = "met" if ratio <= TARGET_RATIO else "**not met**"
        lines.append(f"| {chunker} | {ratio:.3f} | <= {TARGET_RATIO} ({met}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    entry(main, stream_once)
