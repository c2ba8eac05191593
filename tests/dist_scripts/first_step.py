"""The first optimizer step of every built-in loss on both paths, launched with 1 or 2 processes by the tests.

Rank 0 saves the gradients seen right before the first optimizer step (after the all-reduce) to
``OUT/<path>-<loss>.safetensors``. The global batch is 32 examples whatever the number of processes, so
2 x 16 must give the gradients of 1 x 32. ``OUT/<path>.json`` gets the number of processes, the
eval metrics over an eval set that does not divide evenly across processes, and how many gradient
all-reduces DDP ran in 2 optimizer steps with 1 and with 4 micro-batches per step.

usage: first_step.py WORKDIR OUT
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch.distributed as dist
from common import CONTEXT, load_inputs, runner, tiny_model
from datasets import Dataset
from safetensors.torch import save_file
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel
from transformers import TrainerCallback

from clmkit import ClmTrainingArguments

GLOBAL_BATCH = 32


def losses(tokenizer: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every built-in loss: cross-entropy, key-token weights, and the course's key-token normalization."""
    keys = tokenizer.convert_tokens_to_ids(["(", ")", ".", ":"])
    return {
        "cross_entropy": ("cross_entropy", {}),
        "keytoken": ("keytoken", {"keytoken_ids": keys, "alpha": 2.0}),
        "keytoken_course": ("keytoken", {"keytoken_ids": keys, "normalize": "course"}),
    }


class SaveFirstGradients(TrainerCallback):
    """On the main process, save every parameter's gradient right before the first optimizer step."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step == 0 and state.is_world_process_zero:
            save_file({n: p.grad.detach().contiguous() for n, p in model.named_parameters()}, self.path)


class CountAllReduces(TrainerCallback):
    """Count the gradient all-reduces of the DDP-wrapped model (``runner.model_wrapped``) through a comm hook."""

    def __init__(self) -> None:
        self.runner: Any = None
        self.calls = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        ddp = self.runner.model_wrapped
        if isinstance(ddp, DistributedDataParallel):  # DDP checks the hook's annotations: a lambda has none
            ddp.register_comm_hook(None, lambda state, bucket: self.all_reduce(bucket))

    def all_reduce(self, bucket: Any) -> Any:
        self.calls += 1
        return allreduce_hook(dist.group.WORLD, bucket)


def arguments(out: Path, **overrides: Any) -> ClmTrainingArguments:
    defaults = {
        "context_length": CONTEXT,
        "per_device_eval_batch_size": 4,
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
    }
    return ClmTrainingArguments(output_dir=str(out), **{**defaults, **overrides})


def all_reduces(path: str, workdir: Path, out: Path, accumulation: int) -> int:
    """Gradient all-reduces in 2 optimizer steps of 16 examples per process, in ``accumulation`` micro-batches."""
    tokenizer, data = load_inputs(workdir)
    counter = CountAllReduces()
    counter.runner = runner(
        path,
        model=tiny_model(tokenizer),
        args=arguments(
            out, per_device_train_batch_size=16 // accumulation, gradient_accumulation_steps=accumulation, max_steps=2
        ),
        processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"content": data["train"]}),
        callbacks=[counter],
    )
    counter.runner.train()
    return counter.calls


def run(workdir: Path, out: Path) -> None:
    tokenizer, data = load_inputs(workdir)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    train = Dataset.from_dict({"content": data["train"]})
    eval_set = Dataset.from_dict({"input_ids": data["eval_ids"]})
    for path in ("trainer", "loop"):
        for name, (loss, loss_kwargs) in losses(tokenizer).items():
            args = arguments(
                out / f"{path}-{name}",
                per_device_train_batch_size=GLOBAL_BATCH // world,
                max_steps=1,
                max_grad_norm=0.0,  # compare raw gradients
                loss=loss,
                loss_kwargs=loss_kwargs,
            )
            trained = runner(
                path,
                model=tiny_model(tokenizer),
                args=args,
                processing_class=tokenizer,
                train_dataset=train,
                eval_dataset=eval_set,
                callbacks=[SaveFirstGradients(out / f"{path}-{name}.safetensors")],
            )
            trained.train()
        report = {
            "world_size": trained.accelerator.num_processes,
            "eval": trained.evaluate(),
            "all_reduces": {n: all_reduces(path, workdir, out / f"{path}-ga{n}", n) for n in (1, 4)},
        }
        if trained.accelerator.is_main_process:
            (out / f"{path}.json").write_text(json.dumps(report), encoding="utf-8")


if __name__ == "__main__":
    run(Path(sys.argv[1]), Path(sys.argv[2]))
    if dist.is_initialized():  # shut gloo down on every process together: one exiting first can abort the other
        dist.barrier()
        dist.destroy_process_group()
