"""A run of resumable.py's on 1 or 2 processes with global batch 16, for the elastic-resume tests.

``python elastic.py WORKDIR OUT PATH KIND PROCESSES [RESUME]``: with 2 processes each takes micro-batches
of 8 without accumulation; with 1 process, micro-batches of 8 and 2 accumulation steps. Checkpoints every
``SAVE_STEPS``; no dropout, so any split of a step computes the same gradients up to the order of the sums.
Launched by torchrun for 2 processes; the tests call ``run`` for 1.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch.distributed as dist
from resumable import train

SAVE_STEPS = 3
PER_DEVICE = 8


def run(workdir: Path, out: Path, path: str, kind: str, processes: int, resume: str | None = None) -> Any:
    """Train ``resumable.MAX_STEPS`` steps of 16 examples on ``processes`` processes (2 x 8, or 1 x 8 x 2)."""
    accumulation = 2 // processes
    trained = train(
        workdir,
        out,
        path,
        save_steps=SAVE_STEPS,
        resume=resume,
        kind=kind,
        per_device=PER_DEVICE,
        accumulation=accumulation,
        dropout=0.0,
    )
    trained.save_model()  # the final parameters, in OUT (every process calls it)
    return trained


if __name__ == "__main__":
    workdir, out, path, kind, processes = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    run(workdir, out, path, kind, int(processes), sys.argv[6] if len(sys.argv) > 6 else None)
    if dist.is_initialized():  # shut gloo down on every process together: one exiting first can abort the other
        dist.barrier()
        dist.destroy_process_group()
