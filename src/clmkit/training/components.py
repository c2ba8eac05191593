"""The one assembly of a training run, shared by ``ClmTrainer`` and ``ClmLoop``.

Both paths build a run with ``assemble``: check the arguments, load the plugins, check every name
the run uses, let plugins adapt model and tokenizer (``clmkit_prepare_model``), swap composite
modules for fused equivalents (``clmkit.training.fused``) and, on a CPU, choose the attention
(``clmkit.training.attention``), check their sizes,
build loss, collator and chunker from the registries, prepare the data once (under
``main_process_first``, so one process per node tokenizes and the others read its cache) and count
tokens. The pieces of a training step that both paths run are here too: the optimizer over the
grouper's parameter groups, the exact evaluation body, the log values and the NaN guard. So a fix
made once reaches both paths, and each path's class holds only what differs.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, TrainerCallback, TrainerState, get_scheduler
from transformers.trainer_utils import SchedulerType, TrainOutput, enable_full_determinism, set_seed

from clmkit.args import ClmTrainingArguments
from clmkit.data.chunking import Chunker, ChunkStats
from clmkit.data.filters import FilterReport
from clmkit.data.preparation import PreparedData, chunker_names, prepare_datasets
from clmkit.device import training_device
from clmkit.errors import ClmkitError, ConfigError, DataError
from clmkit.hookspecs import Collator
from clmkit.plugins import Plugins
from clmkit.training.accounting import TokenCounter
from clmkit.training.attention import use_cpu_attention
from clmkit.training.checkpoint import is_clmkit_checkpoint
from clmkit.training.flops import MfuMeter, flops_per_token, peak_tflops
from clmkit.training.forward import forward_for_loss
from clmkit.training.fused import fuse_modules
from clmkit.training.losses import Loss, LossInputs
from clmkit.training.metrics import ClmMetrics, sample_statistics, token_byte_lengths

logger = logging.getLogger(__name__)


class NonFiniteLossError(ClmkitError, RuntimeError):
    """The training loss became NaN or inf."""


@dataclass
class RunComponents:
    """Everything ``assemble`` builds for one run; both training paths keep it as their attributes."""

    plugins: Plugins
    loss: Loss
    collator: Collator
    chunker: Chunker
    data: PreparedData
    token_counter: TokenCounter
    callbacks: list[TrainerCallback]  # the plugins' (clmkit_callbacks), in plugin order
    byte_lengths: Tensor  # UTF-8 bytes per token id, for bits per byte


def assemble(
    model: nn.Module | None,
    tokenizer: Any,
    args: Any,
    train_dataset: Any,
    eval_dataset: Any,
    *,
    plugins: Sequence[object] = (),
    data_collator: Collator | None = None,
    who: str = "ClmTrainer",
) -> RunComponents:
    """Check and build one run from its arguments and plugins; prepare its data once.

    Every name the run uses is checked before any work; ``clmkit_prepare_model`` runs before the
    registries build anything, so a chunker sees the tokens a plugin added and the optimizer (built
    later by the training path) sees the resized model. ``data_collator`` replaces the registry's.
    """
    if not isinstance(args, ClmTrainingArguments):
        raise ConfigError(
            f"{who} needs ClmTrainingArguments, got {type(args).__name__}. "
            "Build them with clmkit.ClmTrainingArguments(...) (it accepts every TrainingArguments field)."
        )
    if tokenizer is None:
        raise ConfigError(f"{who} needs the tokenizer: pass processing_class=tokenizer.")
    enable_full_determinism(args.seed) if args.full_determinism else set_seed(args.seed)  # new rows start alike
    manager = Plugins(extra=plugins)
    evals = eval_dataset.values() if isinstance(eval_dataset, Mapping) else [eval_dataset]
    chunkers = sorted({name for d in [train_dataset, *evals] for name in chunker_names(d, args.chunker)})
    manager.check_names(args, chunkers)
    check_optimizer_options(manager, args)
    manager.prepare_model(model, tokenizer, args, chunkers)
    if model is not None:
        fuse_modules(model)
        use_cpu_attention(model, training_device(args.use_cpu))
    check_tokenizer_and_model(tokenizer, model, args.context_length)
    loss: Loss = manager.build("losses", args.loss, tokenizer=tokenizer, **args.plugin_kwargs("loss"))
    if data_collator is None:
        data_collator = manager.build("collators", args.collator, tokenizer, **args.plugin_kwargs("collator"))
    chunker = manager.build("chunkers", args.chunker, tokenizer, args.context_length, **args.plugin_kwargs("chunker"))
    with args.main_process_first(desc="preparing the datasets"):
        data = prepare_datasets(
            train_dataset, eval_dataset, tokenizer, args, chunker, plugins=manager, collator=data_collator
        )
    return RunComponents(
        plugins=manager,
        loss=loss,
        collator=data_collator,
        chunker=chunker,
        data=data,
        token_counter=TokenCounter(),
        callbacks=manager.callbacks(args),
        byte_lengths=token_byte_lengths(tokenizer),
    )


def _vocabulary(model: nn.Module | None) -> int | None:
    """The number of token embeddings of ``model`` (after ``clmkit_prepare_model``), if it has a table."""
    embeddings = getattr(model, "get_input_embeddings", lambda: None)()
    return getattr(embeddings, "num_embeddings", None)


def check_tokenizer_and_model(tokenizer: Any, model: nn.Module | None, context_length: int) -> None:
    """Refuse a tokenizer without EOS, and a model whose vocabulary or positions are too small."""
    if tokenizer.eos_token_id is None:
        raise DataError(
            "the tokenizer has no EOS token; clmkit separates documents and pads with it. "
            "Set tokenizer.eos_token = '<|endoftext|>' (adding it to the vocabulary if needed)."
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is None:
        return
    vocab = _vocabulary(model)
    if vocab is not None and vocab < len(tokenizer):
        raise DataError(
            f"the model's vocabulary ({vocab} embeddings) is smaller than the tokenizer's ({len(tokenizer)} tokens): "
            "token ids past the embedding table would crash training. Build the config with "
            "vocab_size=len(tokenizer), or call model.resize_token_embeddings(len(tokenizer))."
        )
    config = getattr(model, "config", None)
    positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if positions is not None and positions < context_length:
        raise DataError(
            f"context_length {context_length} exceeds the model's {positions} positions. "
            f"Lower context_length, or build the config with at least {context_length} positions (n_positions or "
            "max_position_embeddings)."
        )


# ---- the optimizer ---------------------------------------------------------------------------


def builds_own_parameter_list(optimizer_cls: Any, optimizer_kwargs: Mapping[str, Any]) -> bool:
    """Optimizers that build their own parameter list (GaLore, LOMO, factories): no grouper applies."""
    return not isinstance(optimizer_cls, type) or bool({"params", "model", "optimizer_dict"} & set(optimizer_kwargs))


def trainer_builds_optimizer(args: ClmTrainingArguments, model: Any) -> bool:
    """Whether ``optimizer="adamw"`` names an ``--optim`` that builds its own parameter list, which only
    ``Trainer`` itself can build (``ClmLoop`` refuses it)."""
    from transformers import Trainer

    return args.optimizer == "adamw" and builds_own_parameter_list(*Trainer.get_optimizer_cls_and_kwargs(args, model))


def param_groups(plugins: Plugins, args: ClmTrainingArguments, model: nn.Module) -> list[dict[str, Any]]:
    """The parameter groups of ``args.param_grouper`` (which parameters get weight decay)."""
    return plugins.get("param_groupers", args.param_grouper).obj(model, args.weight_decay)


def build_optimizer(plugins: Plugins, args: ClmTrainingArguments, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer ``args.optimizer`` names (``adamw``, ``muon``, a plugin's), built with ``optimizer_kwargs``
    over the param grouper's groups: the one optimizer both paths step, schedule and checkpoint."""
    groups = param_groups(plugins, args, model)
    return plugins.build("optimizers", args.optimizer, model, groups, args, **args.plugin_kwargs("optimizer"))


def check_optimizer_options(plugins: Plugins, args: ClmTrainingArguments) -> None:
    """Build the run's optimizer once over a 2 x 2 linear layer, so a value its factory refuses (a ``ConfigError``)
    is reported before any data is read; any other failure is left to the real build."""
    probe = nn.Linear(2, 2)
    try:
        build_optimizer(plugins, args, probe)
    except ConfigError:
        raise
    except Exception:  # e.g. an --optim that needs a GPU or a real model: the real build reports it
        logger.debug("optimizer probe failed", exc_info=True)


def build_scheduler(
    args: ClmTrainingArguments, optimizer: torch.optim.Optimizer, num_training_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """``args.lr_scheduler_type`` over ``num_training_steps`` optimizer steps; ``wsd`` (warmup_stable_decay)
    decays linearly to 0 over the last ``lr_decay_fraction`` of them unless ``lr_scheduler_kwargs`` says
    otherwise."""
    kwargs = dict(cast(dict[str, Any], args.lr_scheduler_kwargs) or {})  # a dict after __post_init__
    warmup = args.get_warmup_steps(num_training_steps)
    wsd = args.lr_scheduler_type == SchedulerType.WARMUP_STABLE_DECAY
    if wsd and not {"num_decay_steps", "num_stable_steps"} & set(kwargs):
        decay = round(args.lr_decay_fraction * num_training_steps)
        kwargs["num_decay_steps"] = max(0, min(decay, num_training_steps - warmup))
        kwargs.setdefault("decay_type", "linear")
    return get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=num_training_steps,
        scheduler_specific_kwargs=kwargs,
    )


# ---- evaluation ------------------------------------------------------------------------------


def evaluate_batches(
    model: nn.Module,
    batches: Iterable[Mapping[str, Tensor]],
    args: ClmTrainingArguments,
    accelerator: Any,
    byte_lengths: Tensor,
    context: Callable[[], AbstractContextManager[Any]],
    prefix: str = "eval",
    loss: Loss | None = None,
    counter: TokenCounter | None = None,
) -> tuple[dict[str, float], int]:
    """Exact token-weighted metrics over ``batches``, and the number of samples seen.

    Every batch becomes four numbers per sample (``clmkit.training.metrics.sample_statistics``),
    gathered with ``gather_for_metrics`` (which drops the padded duplicates of an uneven last
    batch) into a ``ClmMetrics``; no logits are kept, so memory does not grow with the eval set.
    ``context`` is the path's autocast. ``<prefix>_loss`` is token cross-entropy whatever the run's
    loss, so runs with different losses compare; a ``loss`` other than the built-in cross-entropy also
    gets ``<prefix>_objective``, its own value (loss sum over normalizer) on the same examples. With the
    run's ``counter``, ``<prefix>_tokens_seen`` says how many tokens the model had trained on.
    """
    from clmkit.builtins.losses import CrossEntropy

    objective = loss if loss is not None and type(loss) is not CrossEntropy else None
    hidden = args.chunked_loss and (objective is None or objective.consumes == "hidden_states")
    metric = ClmMetrics()
    samples = 0
    sums = torch.zeros(2, dtype=torch.float64)  # the objective's loss sum and normalizer
    for batch in batches:
        with torch.no_grad(), context():
            inputs, _ = forward_for_loss(model, batch, hidden, args.loss_chunk_size)
            rows = sample_statistics(inputs, byte_lengths)
            parts = None if objective is None else accelerator.gather_for_metrics(objective_rows(objective, inputs))
        rows = accelerator.gather_for_metrics(rows)
        metric.add_rows(rows)
        samples += rows.shape[0]
        if parts is not None:
            sums += parts.sum(0).cpu()
    metrics = {f"{prefix}_{k}": v for k, v in (metric.compute() or {}).items()}
    if math.isnan(metrics[f"{prefix}_loss"]):
        logger.warning("evaluation saw no target token; its metrics are NaN")
    if objective is not None:
        metrics[f"{prefix}_objective"] = float(sums[0] / sums[1]) if sums[1] else float("nan")
    if counter is not None:
        counter.fold(accelerator)
        metrics[f"{prefix}_tokens_seen"] = float(counter.tokens)
    return metrics, samples


def objective_rows(loss: Loss, inputs: LossInputs) -> Tensor:
    """(B, 2) rows of [loss sum, normalizer] of ``loss`` for each sample, so that ``gather_for_metrics`` can drop
    the duplicated samples of an uneven last batch (a loss sum is a sum over samples, so the rows add up)."""
    rows = []
    for i in range(inputs.input_ids.shape[0]):
        one = {k: v[i : i + 1] if isinstance(v, Tensor) and v.dim() else v for k, v in inputs.batch.items()}
        part = LossInputs(
            one,
            logits=None if inputs.logits is None else inputs.logits[i : i + 1],
            hidden_states=None if inputs.hidden_states is None else inputs.hidden_states[i : i + 1],
            lm_head=inputs.lm_head,
            chunk_size=inputs.chunk_size,
        )
        rows.append(torch.stack([loss.loss_sum(part).double(), loss.normalizer(one).double().to(part.targets.device)]))
    return torch.stack(rows)


# ---- logging and the NaN guard ------------------------------------------------------------------


def training_log_values(
    counter: TokenCounter, meter: MfuMeter | None, model: nn.Module, args: ClmTrainingArguments, accelerator: Any
) -> tuple[dict[str, float], MfuMeter]:
    """Token counts, throughput and ``mfu`` for a training log line, and the MFU meter (built at the first call:
    the device's peak may need a measurement)."""
    values = counter.logs(accelerator)
    if meter is None:
        dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
        meter = MfuMeter(
            flops_per_token(accelerator.unwrap_model(model), args.context_length),
            args.peak_tflops or peak_tflops(accelerator.device, dtype),
            accelerator.num_processes,
        )
    values["mfu"] = meter(values["tokens_per_second"])
    return values, meter


DIVERGENCE_FACTOR = 1000.0  # a loss this many times the run's first one has diverged (lr 100: 8.5e8 from 9)


class DivergedError(NonFiniteLossError):
    """The training loss exploded past its bound, or the final evaluation is not finite."""


class CompletedRunStop(TrainerCallback):
    """Ends a run before its first step when it resumes from a checkpoint that already reached ``max_steps``.

    Both training paths look for the end only after a step, so resuming a finished run trained one
    step past ``max_steps``; now it trains none and goes on to its final evaluation and save.
    """

    def on_train_begin(self, args: Any, state: TrainerState, control: Any, **kwargs: Any) -> None:
        if 0 < state.max_steps <= state.global_step:
            logger.info("at step %d of max_steps %d: nothing left to train", state.global_step, state.max_steps)
            control.should_training_stop = True


class DivergenceGuard:
    """Stops a run whose training loss became NaN or inf, or exploded: above ``max_loss`` when set, else above
    ``DIVERGENCE_FACTOR`` times the first loss this session saw.

    The default is relative because a loss plugin's objective has its own scale (z-loss, weighted losses),
    so no bound in nats fits every loss; a diverging run leaves any such scale within steps.
    """

    def __init__(self, max_loss: float | None) -> None:
        self.max_loss = max_loss
        self.first: float | None = None

    def check(self, loss: Tensor, step: int, output_dir: str | None) -> None:
        """Raise ``NonFiniteLossError`` / ``DivergedError`` naming ``step`` and the last good checkpoint."""
        value = float(loss.detach().float().item())
        if self.first is None and math.isfinite(value) and value > 0:
            self.first = value
        bound = self.max_loss
        if bound is None:
            bound = DIVERGENCE_FACTOR * self.first if self.first is not None else None
        check_finite_loss(value, step, output_dir, bound)


def check_finite_loss(loss: Tensor | float, step: int, output_dir: str | None, max_loss: float | None = None) -> None:
    """Stop a run whose loss became NaN or inf, or exploded above ``max_loss`` (no bound when ``None``), naming
    the optimizer step and the newest complete checkpoint whose weights are all finite."""
    value = float(loss.detach().float().item()) if isinstance(loss, Tensor) else float(loss)
    if math.isfinite(value) and (max_loss is None or value <= max_loss):
        return
    bound = math.inf if max_loss is None else max_loss
    last = last_finite_checkpoint(output_dir)
    error: type[NonFiniteLossError] = NonFiniteLossError
    what = str(value)
    if math.isfinite(value):
        what, error = f"{value:.4g}, above max_loss {bound:.4g} (the run has diverged)", DivergedError
    raise error(
        f"the training loss became {what} at optimizer step {step}. Last good checkpoint: "
        f"{last or 'none saved yet'}. {divergence_advice()}, then "
        + ("resume from that checkpoint." if last else "train again.")
    )


def divergence_advice() -> str:
    """What to change after a divergence; bf16 is advised only where this device can train in it."""
    advice = "Lower the learning rate, enable gradient clipping (max_grad_norm)"
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return advice + ", or use bf16 instead of fp16"
        return advice + ", or train in fp32 instead of fp16"
    return advice


def checkpoint_is_finite(folder: str | os.PathLike[str]) -> bool | None:
    """Whether every floating-point tensor of a checkpoint's safetensors weights is finite; ``None`` when it
    holds no safetensors file (pickled weights are never loaded to check them)."""
    from pathlib import Path

    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    try:
        for file in files:
            with safe_open(str(file), framework="pt") as weights:
                for key in weights.keys():  # noqa: SIM118 - safe_open has no __iter__
                    tensor = weights.get_tensor(key)
                    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                        return False
    except Exception:  # a truncated or corrupt file: not a checkpoint to resume from
        return False
    return True


def last_finite_checkpoint(output_dir: str | os.PathLike[str] | None) -> str | None:
    """The newest ``checkpoint-N`` in ``output_dir`` whose weights are all finite (read from safetensors only)."""
    import re
    from pathlib import Path

    if not output_dir or not os.path.isdir(output_dir):
        return None
    steps = []
    for path in Path(output_dir).iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and path.is_dir():
            steps.append((int(match.group(1)), path))
    for _, path in sorted(steps, reverse=True):
        if is_clmkit_checkpoint(path) and checkpoint_is_finite(path):  # complete, and its weights finite
            return str(path)
    return None


def check_final_eval(metrics: Mapping[str, float], output_dir: str | os.PathLike[str] | None = None) -> None:
    """Refuse to report a run whose final evaluation is not finite (loss NaN, perplexity inf) as a success."""
    loss = metrics.get("eval_loss")
    perplexity = metrics.get("eval_perplexity")
    bad = [(k, v) for k, v in (("eval_loss", loss), ("eval_perplexity", perplexity)) if v is not None]
    bad = [(k, v) for k, v in bad if not math.isfinite(float(v))]
    if not bad:
        return
    last = last_finite_checkpoint(output_dir)
    found = ", ".join(f"{k} {v}" for k, v in bad)
    raise DivergedError(
        f"the final evaluation gave {found}: the model diverged and is not a usable result. Last good checkpoint: "
        f"{last or 'none saved'}. {divergence_advice()}, then train again"
        + (f" or resume from {last}." if last else ".")
    )


class TrainingRun(Protocol):
    """What the CLI (and a user's script) uses of either training path, ``ClmTrainer`` or ``ClmLoop``."""

    args: ClmTrainingArguments
    model: PreTrainedModel
    state: TrainerState
    accelerator: Any
    eval_dataset: Any
    token_counter: TokenCounter
    plugins: Plugins
    data_stats: dict[str, ChunkStats]
    filter_reports: dict[str, list[FilterReport]]
    spike_guard: Any  # a clmkit.training.spikes.SpikeGuard, or None when it is off

    def add_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> None: ...

    def check_resume(self, checkpoint: str | Path | bool) -> str: ...

    def train(self, resume_from_checkpoint: str | bool | None = None) -> TrainOutput: ...

    def evaluate(self, eval_dataset: Any = None, *, metric_key_prefix: str = "eval") -> dict[str, float]: ...

    def save_model(self, output_dir: str | None = None) -> None: ...
