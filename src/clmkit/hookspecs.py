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
    ``adds_eos = True`` when the chunker appends one EOS per document, so token accounting is exact,
    and ``emits_document_boundaries = True`` when it packs several documents per row, marked by
    ``position_ids`` restarting at 0 (clmkit then refuses a collator that cannot keep them apart).

    Called once per plugin manager; results are not combined, each call adds names.
    """


@hookspec
def clmkit_register_collators(register: Register) -> None:
    """Register data collators: ``register("name", factory)``.

    ``factory(tokenizer, **collator_kwargs)`` returns a callable that turns a list of examples
    into a batch of tensors ``{"input_ids", "attention_mask", "labels", ...}``. Labels are the
    unshifted targets (the loss shifts them); ``-100`` marks positions that are never targets.
    A collator that keeps the documents of packed rows apart (passes ``position_ids`` on, right
    pads, masks the label where positions restart) sets ``supports_document_boundaries = True``.
    """


@hookspec
def clmkit_register_losses(register: Register) -> None:
    """Register loss functions: ``register("name", factory)``.

    ``factory(tokenizer=..., **loss_kwargs)`` returns a ``clmkit.Loss``. A loss returns the *sum*
    of its per-item losses for one micro-batch (``Loss.loss_sum``) and the micro-batch's share of
    the normalizer (``Loss.normalizer``, e.g. the number of target tokens); clmkit divides the sum
    by the normalizer of the whole gradient-accumulation window over all processes, so every loss
    is exact under accumulation and data parallelism without doing anything itself.

    A loss says what it consumes with the class attribute ``Loss.consumes``:

    - ``"logits"``: the simple, seed-style way. ``LossInputs.logits`` (B x T x V) is set and the
      loss computes whatever it likes from it and ``LossInputs.targets`` (the shifted labels).
    - ``"hidden_states"`` (the default): memory-lean. ``LossInputs.hidden_states`` (B x T x H) and
      ``LossInputs.lm_head`` (the output ``nn.Linear``) are set and no B x T x V tensor exists.
      Any weighted token cross-entropy only overrides ``Loss.token_weights`` (or calls
      ``inputs.cross_entropy(token_weights)``), which runs the shared chunked primitive
      ``clmkit.linear_cross_entropy(hidden, lm_head.weight, lm_head.bias, targets, weights)``;
      that function can also be called directly, on ``hidden_states[:, :-1]`` flattened to
      (N, H) with ``targets`` flattened to (N,) (position t predicts ``targets[:, t]``; under
      autocast the hidden states come in the autocast dtype). When chunking is off
      (``chunked_loss=False``) or the model's head is not a ``Linear``, such a loss gets
      ``LossInputs.logits`` instead, and ``inputs.cross_entropy`` gives the same values and
      gradients from them.
    """


@hookspec
def clmkit_register_filters(register: Register) -> None:
    """Register document filters: ``register("name", factory)``.

    ``factory(**filter_kwargs)`` returns a ``clmkit.filters.DocumentFilter``: its ``reason(text)``
    returns a short reason to drop a raw document, or ``None`` to keep it; a filter with state
    overrides ``reset()`` (called before every pass over the data). Filters run before
    tokenization, in the order of ``ClmTrainingArguments.filters``; clmkit counts each reason.
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
