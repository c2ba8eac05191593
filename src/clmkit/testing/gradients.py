"""The gradients that reach the optimizer, on demand, and the check that a loss is exact under accumulation.

Gradient comparisons only mean something when nothing else differs between the runs: every run here
trains the same dropout-free tiny GPT-2 (``NO_DROPOUT``) from the same initialization, without gradient
clipping (``max_grad_norm=0``), on the same padded examples. Dropout draws different masks for different
batch shapes, and clipping rescales by a norm that differs slightly with the summation order, so either
one left on makes an exact loss look inexact.
"""

from __future__ import annotations

import functools
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from clmkit.hookspecs import hookimpl
from clmkit.testing.tiny import NO_DROPOUT, padded_examples, tiny_args, tiny_model, tiny_tokenizer

if TYPE_CHECKING:
    from datasets import Dataset
    from torch import Tensor
    from transformers import PreTrainedTokenizerBase

TEST_LOSS_NAME = "clmkit_testing_loss"
Setup = tuple[int, int]  # (per-device batch size, gradient accumulation steps)


@dataclass(frozen=True)
class FirstStep:
    """What reached the optimizer at the first step: every parameter's gradient (after the all-reduce of
    several processes) and the training loss the step logged."""

    gradients: dict[str, Tensor]
    loss: float


@dataclass(frozen=True)
class Difference:
    """How far one setup's first step is from the reference setup's: the largest absolute difference of any
    gradient entry, and of the logged loss."""

    batch_size: int
    accumulation: int
    processes: int
    max_gradient_difference: float
    loss_difference: float


class _OneLoss:
    """A plugin that registers one loss factory under ``TEST_LOSS_NAME``."""

    def __init__(self, factory: Callable[..., Any]) -> None:
        self.factory = factory

    @hookimpl
    def clmkit_register_losses(self, register: Callable[[str, Any], None]) -> None:
        register(TEST_LOSS_NAME, self.factory)


def _as_registered(loss: str | Callable[..., Any] | object, plugins: Sequence[object]) -> tuple[str, list[object]]:
    """A loss name and the plugins that register it: a factory or ``Loss`` object gets a plugin of its own."""
    from clmkit.training.losses import Loss

    if isinstance(loss, str):
        return loss, list(plugins)
    factory: Callable[..., Any] = (lambda tokenizer=None: loss) if isinstance(loss, Loss) else cast(Any, loss)
    return TEST_LOSS_NAME, [*plugins, _OneLoss(factory)]


def _recorder() -> Any:
    from transformers import TrainerCallback

    class GradientRecorder(TrainerCallback):
        """Keeps a copy of every gradient just before the first optimizer step."""

        def __init__(self) -> None:
            self.grads: dict[str, Any] | None = None

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if self.grads is None:
                self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

    return GradientRecorder()


def _train_one_step(
    loss: str,
    batch_size: int,
    accumulation: int,
    tokenizer: PreTrainedTokenizerBase,
    data: Dataset,
    output_dir: str | Path,
    loss_kwargs: dict[str, Any],
    plugins: Sequence[object],
    chunked_loss: bool,
) -> tuple[FirstStep, bool]:
    """One optimizer step of the tiny dropout-free GPT-2 without clipping; its first step, and whether this
    process is the main one."""
    from clmkit.training.trainer import ClmTrainer

    recorder = _recorder()
    args = tiny_args(
        output_dir,
        loss=loss,
        loss_kwargs=loss_kwargs,
        chunked_loss=chunked_loss,
        max_steps=1,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_grad_norm=0.0,
        logging_strategy="steps",
        logging_steps=1,
    )
    trainer = ClmTrainer(
        model=tiny_model(tokenizer, **NO_DROPOUT),
        args=args,
        processing_class=tokenizer,
        train_dataset=data,
        plugins=plugins,
        callbacks=[recorder],
    )
    trainer.train()
    logged = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    if not recorder.grads:
        raise AssertionError(f"loss {loss!r}: no gradient reached the optimizer step")
    return FirstStep(recorder.grads, float(logged)), trainer.is_world_process_zero()


def first_step_gradients(
    loss: str | Callable[..., Any] | object = "cross_entropy",
    *,
    batch_size: int = 32,
    accumulation: int = 1,
    processes: int = 1,
    loss_kwargs: dict[str, Any] | None = None,
    plugins: Sequence[object] = (),
    tokenizer: PreTrainedTokenizerBase | None = None,
    data: Dataset | None = None,
    chunked_loss: bool = True,
) -> FirstStep:
    """Train one optimizer step and return the gradients that reached the optimizer, and the logged loss.

    ``batch_size`` is per process; the step sees ``batch_size x accumulation x processes`` examples of
    ``data`` (default: that many ``padded_examples``). ``loss`` is a registered name, a ``Loss`` factory or
    a ``Loss`` object. With ``processes > 1`` the step runs under ``torch.distributed.run`` (gloo, CPU), so
    the loss must be a name and ``plugins`` importable modules (or installed).
    """
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    data = data if data is not None else padded_examples(tokenizer, count=batch_size * accumulation * processes)
    name, plugin_list = _as_registered(loss, plugins)
    with tempfile.TemporaryDirectory() as tmp:
        if processes == 1:
            step, _ = _train_one_step(
                name, batch_size, accumulation, tokenizer, data, tmp, loss_kwargs or {}, plugin_list, chunked_loss
            )
            return step
        shape = (batch_size, accumulation, processes)
        return _launch(name, shape, loss_kwargs or {}, plugin_list, tokenizer, data, tmp, chunked_loss)


def _launch(
    loss: str,
    shape: tuple[int, int, int],
    loss_kwargs: dict[str, Any],
    plugins: Sequence[object],
    tokenizer: PreTrainedTokenizerBase,
    data: Dataset,
    folder: str,
    chunked_loss: bool,
) -> FirstStep:
    """``first_step_gradients`` on ``shape`` = (batch size, accumulation, processes) CPU processes: the inputs go
    through ``folder``."""
    import torch

    batch_size, accumulation, processes = shape
    if loss == TEST_LOSS_NAME or not all(isinstance(p, types.ModuleType) for p in plugins):
        raise ValueError(
            "first_step_gradients with processes > 1 starts new processes: pass the loss by its registered name "
            "and plugins as importable modules (or install them)."
        )
    spec = {
        "loss": loss,
        "loss_kwargs": loss_kwargs,
        "plugins": [cast(types.ModuleType, p).__name__ for p in plugins],
        "batch_size": batch_size,
        "accumulation": accumulation,
        "chunked_loss": chunked_loss,
    }
    work = Path(folder)
    (work / "spec.json").write_text(json.dumps(spec))
    tokenizer.save_pretrained(work / "tokenizer")
    data.save_to_disk(str(work / "data"))
    threads = str(torch.get_num_threads())  # sums are bit-equal only with the same thread count
    env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONPATH": os.pathsep.join(sys.path), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    command += ["--master_port", str(_free_port()), "-m", "clmkit.testing._first_step", str(work)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise AssertionError(f"the {processes}-process first step failed:\n{(done.stdout + done.stderr)[-4000:]}")
    logged = json.loads((work / "loss.json").read_text())
    from safetensors.torch import load_file

    return FirstStep(load_file(work / "gradients.safetensors"), float(logged))  # tensors only: no pickle


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_worker(folder: str) -> None:
    """One process of a multi-process first step; the main one saves the gradients and the logged loss."""
    import importlib

    from datasets import load_from_disk
    from transformers import AutoTokenizer

    work = Path(folder)
    spec = json.loads((work / "spec.json").read_text())
    step, main = _train_one_step(
        spec["loss"],
        spec["batch_size"],
        spec["accumulation"],
        AutoTokenizer.from_pretrained(work / "tokenizer"),
        load_from_disk(str(work / "data")),
        work / "run",
        spec["loss_kwargs"],
        [importlib.import_module(name) for name in spec["plugins"]],
        spec["chunked_loss"],
    )
    if main:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in step.gradients.items()}, work / "gradients.safetensors")
        (work / "loss.json").write_text(json.dumps(step.loss))


def _gradient_message(what: str, reference: Setup, where: str, detail: str) -> str:
    return (
        f"{what} differs between batch {reference[0]} x accumulation {reference[1]} and {where}, so the loss is "
        f"not exact under gradient accumulation. {detail}"
    )


def assert_exact_under_accumulation(
    loss: str | Callable[..., Any] | object,
    *,
    setups: Sequence[Setup] = ((32, 1), (8, 4)),
    processes: int = 1,
    loss_kwargs: dict[str, Any] | None = None,
    plugins: Sequence[object] = (),
    tokenizer: PreTrainedTokenizerBase | None = None,
    chunked_loss: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-6,
) -> list[Difference]:
    """Fail unless every ``(batch size, accumulation)`` setup's first optimizer step equals the first setup's.

    The first setup runs on one process and is the reference; the others run on ``processes`` processes
    and must see the same number of examples (batch x accumulation x processes). ``loss`` is a registered
    name (from ``plugins`` or an installed plugin), a ``Loss`` factory or a ``Loss`` object. Every run trains
    the tiny dropout-free GPT-2 without clipping on the same padded examples of uneven length; each
    parameter's gradient and the logged loss must agree within ``rtol``/``atol``. Returns the measured
    differences, one per compared setup.
    """
    import torch

    (ref_batch, ref_accumulation), *others = setups
    total = ref_batch * ref_accumulation
    wrong = [s for s in others if s[0] * s[1] * processes != total]
    if not others or wrong:
        raise ValueError(
            f"setups {list(setups)} on {processes} process(es): give at least two (batch size, accumulation) pairs, "
            f"and make every one after the first see {total} examples (batch x accumulation x processes)."
        )
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    data = padded_examples(tokenizer, count=total)
    common: dict[str, Any] = {
        "loss_kwargs": loss_kwargs,
        "plugins": plugins,
        "tokenizer": tokenizer,
        "data": data,
        "chunked_loss": chunked_loss,
    }
    reference = first_step_gradients(loss, batch_size=ref_batch, accumulation=ref_accumulation, **common)
    differences = []
    for batch_size, accumulation in others:
        step = first_step_gradients(
            loss, batch_size=batch_size, accumulation=accumulation, processes=processes, **common
        )
        where = f"batch {batch_size} x accumulation {accumulation} on {processes} process(es)"
        if step.gradients.keys() != reference.gradients.keys():
            raise AssertionError(f"loss {loss!r}: {where} gives gradients of other parameters than the reference")
        for name, grad in reference.gradients.items():
            torch.testing.assert_close(
                step.gradients[name],
                grad,
                rtol=rtol,
                atol=atol,
                msg=functools.partial(_gradient_message, f"loss {loss!r}: the gradient of {name}", setups[0], where),
            )
        if not math.isclose(step.loss, reference.loss, rel_tol=rtol, abs_tol=atol):
            raise AssertionError(
                f"loss {loss!r}: logged training loss {step.loss} with {where}, {reference.loss} with batch "
                f"{ref_batch} x accumulation {ref_accumulation}"
            )
        gap = max(float((step.gradients[n] - g).abs().max()) for n, g in reference.gradients.items())
        differences.append(Difference(batch_size, accumulation, processes, gap, abs(step.loss - reference.loss)))
    return differences
