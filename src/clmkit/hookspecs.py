"""Every hook a clmkit plugin can implement.

A plugin is any object or module with functions decorated by ``clmkit.hookimpl`` whose names are
below. Register-callback hooks receive a ``register(name, obj)`` function and return nothing;
names are global per registry, so registering a name another plugin already registered is an
error that names both plugins. Plugins are found through the ``clmkit`` entry-point group, or
passed to ``ClmTrainer(plugins=[...])``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from clmkit.args import ClmTrainingArguments

hookspec = pluggy.HookspecMarker("clmkit")
hookimpl = pluggy.HookimplMarker("clmkit")

Register = Callable[[str, Any], None]


@hookspec
def clmkit_register_chunkers(register: Register) -> None:
    """Register chunking strategies: ``register("name", factory)``.

    ``factory(tokenizer, context_length, **chunker_kwargs)`` returns a ``clmkit.Chunker``: a
    callable that takes a batch of tokenized documents ``{"input_ids": [[int, ...], ...]}`` and
    returns training examples ``{"input_ids": [[int, ...], ...], ...}`` (any number of rows). Extra
    columns it returns (e.g. ``position_ids``) travel to the collator. Set the class attribute
    ``adds_eos = True`` when the chunker appends one EOS per document, so token accounting is exact.

    Called once per plugin manager; results are not combined, each call adds names.
    """


@hookspec
def clmkit_register_collators(register: Register) -> None:
    """Register data collators: ``register("name", factory)``.

    ``factory(tokenizer, **collator_kwargs)`` returns a callable that turns a list of examples
    into a batch of tensors ``{"input_ids", "attention_mask", "labels", ...}``. Labels are the
    unshifted targets (the loss shifts them); ``-100`` marks positions that are never targets.
    """


@hookspec
def clmkit_register_losses(register: Register) -> None:
    """Register loss functions: ``register("name", factory)``.

    ``factory(tokenizer=..., **loss_kwargs)`` returns a ``clmkit.Loss``. A loss returns the *sum*
    of its per-item losses for one micro-batch (``Loss.loss_sum``) and the micro-batch's share of
    the normalizer (``Loss.normalizer``, e.g. the number of target tokens); clmkit divides the sum
    by the normalizer of the whole gradient-accumulation window over all processes, so every loss
    is exact under accumulation and data parallelism without doing anything itself.

    A loss consumes either the logits (``consumes = "logits"``, the simple, seed-style way: it
    gets ``LossInputs.logits`` of shape B x T x V) or the final hidden states and the output
    embedding (``consumes = "hidden_states"``: it gets ``LossInputs.hidden_states`` B x T x H and
    ``LossInputs.lm_head``, and never needs a B x T x V tensor; use
    ``clmkit.token_cross_entropy`` to compute per-token losses chunk by chunk).
    """


@hookspec
def clmkit_register_param_groupers(register: Register) -> None:
    """Register optimizer parameter groupings: ``register("name", fn)``.

    ``fn(model, weight_decay)`` returns a list of optimizer parameter groups
    (``[{"params": [...], "weight_decay": float, ...}]``) covering every trainable parameter
    exactly once. Extra keys (e.g. ``lr``) are passed to the optimizer as per-group options.
    """


@hookspec
def clmkit_callbacks(args: ClmTrainingArguments) -> list[TrainerCallback] | None:
    """Return ``TrainerCallback`` objects to add to this run, or ``None`` for none.

    Called once per ``ClmTrainer``; the lists of all plugins are concatenated in plugin order.
    """
