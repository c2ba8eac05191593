"""Run one benchmark configuration per fresh process, so each peak RSS belongs to that configuration alone."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from typing import Any


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_isolated(script: str, config: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    """Run ``script --child '<config json>'`` in a new interpreter; return the JSON it prints last.

    ``threads`` sets ``OMP_NUM_THREADS`` (torch's intra-op threads): on a CPU shared with other
    jobs, one thread per process avoids OpenMP threads spinning against each other.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(
        [sys.executable, script, "--child", json.dumps(config)], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"{config} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_config() -> dict[str, Any] | None:
    """The configuration passed to this process by ``run_isolated``, or ``None`` in the parent."""
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        return json.loads(sys.argv[2])
    return None


def entry(parent: Callable[[], None], child: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """The ``__main__`` of a benchmark: the parent runs the comparison, a child measures one configuration."""
    config = child_config()
    if config is None:
        parent()
    else:
        print(json.dumps(child(config)))
