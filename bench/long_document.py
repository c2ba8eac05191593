"""Peak memory of tokenizing and chunking one very long document, against the document's size.

Builds one single-line document of ``--size`` megabytes (this interpreter's standard library, its
line breaks replaced by spaces, repeated), trains the byte-level BPE tokenizer of ``clmkit train``
(8,192 tokens) on its first megabyte, then prepares it as a run does: ``tokenize_documents`` and the
``concat`` chunker (``chunk_dataset``), in this one process. The peak RSS of that step is read from
the kernel (``VmHWM``, reset through ``/proc/self/clear_refs`` just before it; ``getrusage``'s peak of
the whole process where that is not available) and printed as a multiple of the document's size.

Before clmkit tokenized long documents in pieces, a 50 MB line reached 10 GB (about 200x) and was
killed; the target is under 20x.

Run: ``python bench/long_document.py`` (50 MB: about a minute on 2 CPU cores) or
``python bench/long_document.py --size 0.5`` for a smoke run. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import sysconfig
import time
from pathlib import Path

TARGET_RATIO = 20.0
MIB = 1 << 20


def build_document(megabytes: float) -> str:
    """One line of about ``megabytes`` MB of Python source: the stdlib, newlines turned into spaces."""
    target = int(megabytes * 1e6)
    parts: list[str] = []
    size = 0
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    while size < target:
        for path in files:
            if "site-packages" in path.parts:
                continue
            text = path.read_bytes().decode("utf-8", errors="replace").replace("\r", " ").replace("\n", " ")
            parts.append(text)
            size += len(text)
            if size >= target:
                break
    return "".join(parts)[:target]


def reset_peak() -> bool:
    """Reset the kernel's peak RSS of this process (Linux); False where it cannot be reset."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mib(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` (peak) of this process in MiB, from ``/proc/self/status``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(f"no {field} in /proc/self/status")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=float, default=50.0, help="Megabytes of the document (default 50).")
    parser.add_argument("--vocab_size", type=int, default=8192, help="Vocabulary of the trained tokenizer.")
    parser.add_argument("--context_length", type=int, default=128)
    options = parser.parse_args(argv)

    from datasets import Dataset
    from datasets.utils import disable_progress_bars

    from clmkit.builtins.chunkers import Concat
    from clmkit.data.chunking import chunk_dataset, chunk_stats, tokenize_documents
    from clmkit.data.tokenizer import train_tokenizer

    disable_progress_bars()
    document = build_document(options.size)
    doc_mib = len(document.encode("utf-8")) / MIB
    tokenizer = train_tokenizer([document[: 1 << 20]], vocab_size=options.vocab_size)
    dataset = Dataset.from_dict({"content": [document]})
    del document
    before = rss_mib("VmRSS")
    exact_peak = reset_peak()
    started = time.perf_counter()
    tokenized = tokenize_documents(dataset, tokenizer, "content")
    chunker = Concat(tokenizer, options.context_length)
    chunked = chunk_dataset(tokenized, chunker)
    stats = chunk_stats(tokenized, chunked, chunker)
    seconds = time.perf_counter() - started
    if exact_peak:
        peak = rss_mib("VmHWM")
    else:  # the whole process's peak: an upper bound
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "document_mib": round(doc_mib, 2),
        "tokens": stats.tokens,
        "examples": stats.examples,
        "rss_before_mib": round(before, 1),
        "peak_rss_mib": round(peak, 1),
        "peak_growth_mib": round(peak - before, 1),
        "peak_rss_over_document": round(peak / doc_mib, 2),
        "peak_growth_over_document": round((peak - before) / doc_mib, 2),
        "peak_measured": "VmHWM after clear_refs" if exact_peak else "getrusage of the whole process",
        "seconds": round(seconds, 1),
        "target_ratio": TARGET_RATIO,
    }
    print(json.dumps(result, indent=2))
    return 0 if result["peak_growth_over_document"] < TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
