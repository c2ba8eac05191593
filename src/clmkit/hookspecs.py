"""Every hook a clmkit plugin can implement, and the types of what each registers.

A plugin is any object or module with functions decorated by ``clmkit.hookimpl`` whose names are
below. The seven ``clmkit_register_<kind>`` hooks fill one registry each (the table
``clmkit.plugins.KINDS``): they receive a ``register(name, factory)`` function and return nothing.
Names are global per registry, so registering a name another plugin already registered is an
error that names both plugins. Plugins are found through the ``clmkit`` entry-point group, or
passed to ``ClmTrainer(plugins=[...])`` / ``ClmLoop(plugins=[...])``.

Both training paths call every hook the same way, once per run: ``ClmTrainer`` and ``ClmLoop``
build a run through ``clmkit.training.components.assemble``, which makes one plugin manager, calls
``clmkit_prepare_model``, builds the named objects from the registries and collects
``clmkit_callbacks``. This module imports nothing heavy (no torch, no transformers), so a plugin
package can import it cheaply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import pluggy

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
    from transformers import PretrainedConfig, PreTrainedTokenizerBase, TrainerCallback

    from clmkit.args import ClmTrainingArguments
    from clmkit.data.chunking import Chunker
    from clmkit.data.filters import DocumentFilter
    from clmkit.training.losses import Loss

hookspec = pluggy.HookspecMarker("clmkit")
hookimpl = pluggy.HookimplMarker("clmkit")

F = TypeVar("F", contravariant=True)


class Register(Protocol[F]):
    """The ``register(name, factory)`` function a ``clmkit_register_<kind>`` hook receives."""

    def __call__(self, name: str, factory: F, /) -> None: ...


class ChunkerFactory(Protocol):
    """``factory(tokenizer, context_length, **chunker_kwargs)``: a ``clmkit.Chunker`` (usually its class)."""

    def __call__(self, tokenizer: PreTrainedTokenizerBase, context_length: int, /, **kwargs: Any) -> Chunker: ...


class Collator(Protocol):
    """Turns a list of examples into a batch of tensors ``{"input_ids", "attention_mask", "labels", ...}``."""

    def __call__(self, examples: Sequence[dict[str, Any]], /) -> dict[str, Tensor]: ...


class CollatorFactory(Protocol):
    """``factory(tokenizer, **collator_kwargs)``: a ``Collator``."""

    def __call__(self, tokenizer: PreTrainedTokenizerBase, /, **kwargs: Any) -> Collator: ...


class LossFactory(Protocol):
    """``factory(tokenizer=..., **loss_kwargs)``: a ``clmkit.Loss``."""

    def __call__(self, *, tokenizer: PreTrainedTokenizerBase, **kwargs: Any) -> Loss: ...


class FilterFactory(Protocol):
    """``factory(**filter_kwargs)``: a ``clmkit.DocumentFilter``."""

    def __call__(self, **kwargs: Any) -> DocumentFilter: ...


class ParamGrouper(Protocol):
    """``grouper(model, weight_decay)``: optimizer parameter groups covering every trainable parameter once."""

    def __call__(self, model: nn.Module, weight_decay: float, /) -> list[dict[str, Any]]: ...


class OptimizerFactory(Protocol):
    """``factory(model, param_groups, args, **optimizer_kwargs)``: a ``torch.optim.Optimizer`` over ``param_groups``
    (the param grouper's), its learning rate ``args.learning_rate``; its keyword-only parameters (with defaults)
    are the ``optimizer_kwargs`` it takes."""

    def __call__(
        self, model: nn.Module, param_groups: list[dict[str, Any]], args: ClmTrainingArguments, /
    ) -> torch.optim.Optimizer: ...


class ArchitectureFactory(Protocol):
    """``factory(preset, vocab_size, context_length, eos_token_id)``: a transformers ``PretrainedConfig`` of a
    causal LM sized by ``preset`` (a ``ConfigError`` naming the sizes when unknown)."""

    def __call__(self, preset: str, vocab_size: int, context_length: int, eos_token_id: int, /) -> PretrainedConfig: ...


@hookspec
def clmkit_register_chunkers(register: Register[ChunkerFactory]) -> None:
    """Register chunking strategies: ``register("name", factory)``, a ``ChunkerFactory``.

    The chunker is a callable that takes a batch of tokenized documents ``{"input_ids": [[int,
    ...], ...]}`` and returns training examples ``{"input_ids": [[int, ...], ...], ...}`` (any
    number of rows, none longer than ``context_length``). Extra columns it returns (e.g.
    ``position_ids``) travel to the collator. Set the class attribute ``adds_eos = True`` when the
    chunker appends one EOS per document, so token accounting is exact, and
    ``emits_document_boundaries = True`` when it packs several documents per row, marked by
    ``position_ids`` restarting at 0 (clmkit then refuses a collator that cannot keep them apart).
    A chunker must not change the tokenizer: a plugin that needs new tokens adds them in
    ``clmkit_prepare_model``.
    """


@hookspec
def clmkit_register_collators(register: Register[CollatorFactory]) -> None:
    """Register data collators: ``register("name", factory)``, a ``CollatorFactory``.

    The collator turns a list of examples into a batch of tensors ``{"input_ids",
    "attention_mask", "labels", ...}``. Labels are the unshifted targets (the loss shifts them);
    ``-100`` marks positions that are never targets. A collator that keeps the documents of packed
    rows apart (passes ``position_ids`` on, right pads, masks the label where positions restart)
    sets ``supports_document_boundaries = True``.
    """


@hookspec
def clmkit_register_losses(register: Register[LossFactory]) -> None:
    """Register loss functions: ``register("name", factory)``, a ``LossFactory``.

    A loss returns the *sum* of its per-item losses for one micro-batch (``Loss.loss_sum``) and the
    micro-batch's share of the normalizer (``Loss.normalizer``, e.g. the number of target tokens);
    clmkit divides the sum by the normalizer of the whole gradient-accumulation window over all
    processes, so every loss is exact under accumulation and data parallelism without doing
    anything itself.

    A loss says what it consumes with the class attribute ``Loss.consumes``:

    - ``"logits"``: the simple way. ``LossInputs.logits`` (B x T x V) is set and the loss computes
      whatever it likes from it and ``LossInputs.targets`` (the shifted labels).
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
def clmkit_register_filters(register: Register[FilterFactory]) -> None:
    """Register document filters: ``register("name", factory)``, a ``FilterFactory``.

    The filter's ``reason(text)`` returns a short reason to drop a raw document, or ``None`` to
    keep it; a filter with state overrides ``reset()`` (called before every pass over the data).
    Filters run before tokenization, in the order of ``ClmTrainingArguments.filters``; clmkit
    counts each reason.
    """


@hookspec
def clmkit_register_param_groupers(register: Register[ParamGrouper]) -> None:
    """Register optimizer parameter groupings: ``register("name", grouper)``, a ``ParamGrouper``.

    ``grouper(model, weight_decay)`` returns a list of optimizer parameter groups
    (``[{"params": [...], "weight_decay": float, ...}]``) covering every trainable parameter
    exactly once. Extra keys (e.g. ``lr``) are passed to the optimizer as per-group options.
    """


@hookspec
def clmkit_register_optimizers(register: Register[OptimizerFactory]) -> None:
    """Register optimizers: ``register("name", factory)``, an ``OptimizerFactory``, chosen with
    ``ClmTrainingArguments.optimizer`` and built with ``optimizer_kwargs``.

    The factory receives the model, the param grouper's groups (weight decay decided) and the run's
    arguments, and returns one ``torch.optim.Optimizer`` (or subclass) over exactly those parameters:
    both training paths step it, clip its gradients, drive its groups' ``lr`` with the LR scheduler
    (which scales each group's initial ``lr``) and save and load its ``state_dict`` in checkpoints.
    """


@hookspec
def clmkit_register_architectures(register: Register[ArchitectureFactory]) -> None:
    """Register model architectures: ``register("name", factory)``, an ``ArchitectureFactory``, chosen with
    ``clmkit train --architecture``.

    The factory returns a transformers config whose model ``AutoModelForCausalLM.from_config`` builds,
    so the saved model loads anywhere without clmkit. ``clmkit.models.sized_config`` turns a table of
    sizes into such a factory's body. clmkit pads ``vocab_size`` to a multiple of 64 before calling
    it and applies ``--config_overrides`` afterwards.
    """


@hookspec
def clmkit_prepare_model(
    model: nn.Module | None, tokenizer: PreTrainedTokenizerBase, args: ClmTrainingArguments, chunkers: Sequence[str]
) -> None:
    """Adapt the model and tokenizer to this run before anything else uses them.

    Called once per run on both training paths, after the arguments are checked and before the
    chunker, collator and loss are built, the data is prepared or the optimizer exists: the place
    to add tokens to the tokenizer, resize the model's embeddings and initialise the new rows.
    ``chunkers`` holds the chunker names the run uses (``args.chunker``, and each mixture source's),
    so a plugin can act only when one of its chunkers is in use. ``model`` is ``None`` when
    ``ClmTrainer`` gets a ``model_init`` instead of a model. Return nothing; change the objects
    in place.
    """


@hookspec
def clmkit_callbacks(args: ClmTrainingArguments) -> list[TrainerCallback] | None:
    """Return ``TrainerCallback`` objects to add to this run, or ``None`` for none.

    Called once per run (``ClmTrainer`` or ``ClmLoop``); the lists of all plugins are concatenated
    in plugin order, and both training paths call the callbacks' events the same way.
    """
