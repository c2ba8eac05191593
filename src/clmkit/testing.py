"""Test kit for clmkit plugins: a pytest plugin with tiny real fixtures, and the exactness check.

pytest loads it wherever clmkit is installed (entry point ``pytest11``; ``-p no:clmkit`` turns it
off). Fixtures, all prefixed ``clmkit_``:

- ``clmkit_corpus``: real Python source, the files of the standard library's ``json`` and ``email``
  packages, sorted by path (so ``email``'s come first).
- ``clmkit_tokenizer``: a byte-level BPE tokenizer (512 tokens) trained on it; a fresh copy per
  test, so a test may add tokens.
- ``clmkit_model``: ``make(context_length=64, seed=0, architecture="gpt2", **config_overrides)`` builds
  a 2-layer, 64-dim model (GPT-2 unless ``architecture`` names another) sized to ``clmkit_tokenizer``.
- ``clmkit_args``: ``make(**overrides)`` gives ``ClmTrainingArguments`` for a quick, quiet CPU run
  in the test's ``tmp_path``; any field can be overridden, ``output_dir`` included.
- ``clmkit_plugins``: ``make(*plugin_objects)`` gives a ``Plugins`` with the built-ins and those only.
- ``clmkit_install_plugin``: ``install(plugin, name)`` makes a plugin object look installed
  (an entry point of group ``clmkit``) for one test, so ``Plugins()``, ``ClmTrainer`` and an
  in-process ``clmkit.cli.main`` all find it by name.

The same things as plain functions, for module-scoped fixtures and scripts: ``tiny_corpus()``,
``tiny_tokenizer()``, ``tiny_model(tokenizer, ...)``, ``tiny_args(output_dir, ...)``, and
``padded_examples(tokenizer, count=32)`` (tokenized examples of uneven length, so batches of them
are padded); ``NO_DROPOUT`` is the config overrides of a dropout-free model.

``assert_exact_under_accumulation`` fails unless a loss gives the same gradients with batch 32 as
with batch 8 x gradient accumulation 4, on padded data.
"""

from __future__ import annotations

import copy
import functools
import importlib
import re
import sys
import sysconfig
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

from clmkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from clmkit.args import ClmTrainingArguments
    from clmkit.plugins import Plugins

CORPUS_PACKAGES = ("json", "email")
TEST_LOSS_NAME = "clmkit_testing_loss"
NO_DROPOUT: dict[str, Any] = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


# ---- tiny real data and models ------------------------------------------------------------------


@functools.cache
def tiny_corpus() -> tuple[str, ...]:
    """About 30 real documents: the Python files of the standard library's ``json`` and ``email``."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for package in CORPUS_PACKAGES for p in (stdlib / package).glob("*.py"))
    return tuple(p.read_text(encoding="utf-8", errors="replace") for p in files)


@functools.cache
def _trained_tokenizer(vocab_size: int) -> PreTrainedTokenizerBase:
    from clmkit.data.tokenizer import train_tokenizer

    return train_tokenizer(tiny_corpus(), vocab_size=vocab_size)


def tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerBase:
    """A fresh copy of a byte-level BPE tokenizer trained once on ``tiny_corpus()``."""
    return copy.deepcopy(_trained_tokenizer(vocab_size))


def tiny_model(
    tokenizer: PreTrainedTokenizerBase,
    context_length: int = 64,
    seed: int = 0,
    architecture: str = "gpt2",
    **overrides: Any,
) -> PreTrainedModel:
    """A 2-layer, 64-dim model of ``architecture`` (preset ``test``) sized to ``tokenizer``, initialized from
    ``seed``."""
    import torch

    from clmkit.models import build_model, model_config

    torch.manual_seed(seed)
    config = model_config(architecture, "test", len(tokenizer), context_length, tokenizer.eos_token_id, overrides)
    return build_model(config)


def tiny_args(output_dir: str | Path, **overrides: Any) -> ClmTrainingArguments:
    """``ClmTrainingArguments`` for a quick, quiet, reproducible CPU run; any field can be overridden."""
    from clmkit.args import ClmTrainingArguments

    defaults: dict[str, Any] = {
        "output_dir": str(output_dir),
        "context_length": 64,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8,
        "learning_rate": 3e-3,
        "report_to": "none",
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
    }
    return ClmTrainingArguments(**{**defaults, **overrides})


def padded_examples(tokenizer: PreTrainedTokenizerBase, count: int = 32, max_length: int = 64) -> Dataset:
    """``count`` tokenized examples of uneven lengths (3 to ``max_length`` tokens), some with a real EOS.

    Batches of them are padded, so a loss whose denominator is wrong under accumulation shows it.
    """
    from datasets import Dataset

    stream = [t for text in tiny_corpus() for t in [*tokenizer(text)["input_ids"], tokenizer.eos_token_id]]
    lengths = [3 + (i * 37) % (max_length - 2) for i in range(count)]
    starts = [sum(lengths[:i]) for i in range(count)]
    return Dataset.from_dict({"input_ids": [stream[s : s + n] for s, n in zip(starts, lengths, strict=True)]})


# ---- plugins for one test -----------------------------------------------------------------------


def _write_distribution(site: Path, distribution: str, entry_point: str, value: str) -> None:
    """Put a distribution with one ``clmkit`` entry point into the folder ``site``."""
    info = site / f"{distribution.replace('-', '_')}-0.0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.0.0\n")
    (info / "entry_points.txt").write_text(f"[clmkit]\n{entry_point} = {value}\n")


# ---- the exactness check ------------------------------------------------------------------------


class _OneLoss:
    """A plugin that registers one loss factory under ``TEST_LOSS_NAME``."""

    def __init__(self, factory: Callable[..., Any]) -> None:
        self.factory = factory

    @hookimpl
    def clmkit_register_losses(self, register: Callable[[str, Any], None]) -> None:
        register(TEST_LOSS_NAME, self.factory)


def _gradient_recorder() -> Any:
    from transformers import TrainerCallback

    class GradientRecorder(TrainerCallback):
        """Keeps a copy of every gradient just before the first optimizer step."""

        def __init__(self) -> None:
            self.grads: dict[str, Any] | None = None

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if self.grads is None:
                self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

    return GradientRecorder()


def _first_step(
    loss: str,
    batch_size: int,
    accumulation: int,
    *,
    tokenizer: PreTrainedTokenizerBase,
    data: Dataset,
    output_dir: str | Path,
    loss_kwargs: dict[str, Any] | None = None,
    plugins: Sequence[object] = (),
    chunked_loss: bool = True,
) -> tuple[dict[str, Any], float]:
    """Train one optimizer step of a tiny dropout-free GPT-2; return its gradients and logged loss."""
    from clmkit.training.trainer import ClmTrainer

    recorder = _gradient_recorder()
    args = tiny_args(
        output_dir,
        loss=loss,
        loss_kwargs=loss_kwargs or {},
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
    assert recorder.grads, "no gradient reached the optimizer step"
    return recorder.grads, logged


def _gradient_message(loss: object, name: str, detail: str) -> str:
    return (
        f"loss {loss!r}: the gradient of {name} differs between batch 32 and "
        f"batch 8 x accumulation 4, so the loss is not exact under gradient accumulation. {detail}"
    )


def assert_exact_under_accumulation(
    loss: str | Callable[..., Any] | object,
    *,
    loss_kwargs: dict[str, Any] | None = None,
    plugins: Sequence[object] = (),
    tokenizer: PreTrainedTokenizerBase | None = None,
    chunked_loss: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-6,
) -> None:
    """Fail unless one optimizer step with batch 32 equals one with batch 8 x accumulation 4.

    ``loss`` is a registered name (from ``plugins`` or an installed plugin), a loss factory (a
    ``Loss`` subclass), or a ``Loss`` object. Both runs train a tiny dropout-free GPT-2 from the
    same initialization on the same 32 padded examples of uneven length; the gradients of every
    parameter just before the optimizer step and the logged training loss must agree.
    """
    import tempfile

    import torch

    from clmkit.training.losses import Loss

    if not isinstance(loss, str):
        instance = loss
        factory: Callable[..., Any] = (lambda tokenizer=None: instance) if isinstance(loss, Loss) else cast(Any, loss)
        plugins = [*plugins, _OneLoss(factory)]
        loss = TEST_LOSS_NAME
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    data = padded_examples(tokenizer)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for batch_size, accumulation in ((32, 1), (8, 4)):
            runs[accumulation] = _first_step(
                loss,
                batch_size,
                accumulation,
                tokenizer=tokenizer,
                data=data,
                output_dir=Path(tmp) / f"accumulation-{accumulation}",
                loss_kwargs=loss_kwargs,
                plugins=plugins,
                chunked_loss=chunked_loss,
            )
    (big, big_loss), (small, small_loss) = runs[1], runs[4]
    assert small.keys() == big.keys()
    for name, grad in big.items():
        torch.testing.assert_close(
            small[name],
            grad,
            rtol=rtol,
            atol=atol,
            msg=functools.partial(_gradient_message, loss, name),
        )
    assert small_loss == pytest.approx(big_loss, rel=rtol, abs=atol), (
        f"loss {loss!r}: logged training loss {small_loss} with batch 8 x accumulation 4, {big_loss} with batch 32"
    )


# ---- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def clmkit_corpus() -> list[str]:
    """Real Python source: the standard library's ``json`` and ``email`` packages (about 30 files)."""
    return list(tiny_corpus())


@pytest.fixture
def clmkit_tokenizer() -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer of 512 tokens trained on ``clmkit_corpus``; a fresh copy per test."""
    return tiny_tokenizer()


@pytest.fixture
def clmkit_model(clmkit_tokenizer: PreTrainedTokenizerBase) -> Callable[..., PreTrainedModel]:
    """``make(context_length=64, seed=0, architecture="gpt2", **config_overrides)``: a tiny model sized to
    ``clmkit_tokenizer``."""

    def make(context_length: int = 64, seed: int = 0, **overrides: Any) -> PreTrainedModel:
        return tiny_model(clmkit_tokenizer, context_length, seed, **overrides)

    return make


@pytest.fixture
def clmkit_args(tmp_path: Path) -> Callable[..., ClmTrainingArguments]:
    """``make(**overrides)``: ``ClmTrainingArguments`` for a quick, quiet CPU run in ``tmp_path / "out"``.

    Any field can be overridden, ``output_dir`` included.
    """

    def make(**overrides: Any) -> ClmTrainingArguments:
        return tiny_args(overrides.pop("output_dir", tmp_path / "out"), **overrides)

    return make


@pytest.fixture
def clmkit_plugins() -> Callable[..., Plugins]:
    """``make(*plugins)``: a ``Plugins`` holding the built-ins and these plugin objects, nothing installed."""
    from clmkit.plugins import Plugins

    def make(*plugins: object) -> Plugins:
        return Plugins(extra=plugins, autoload=False)

    return make


@pytest.fixture
def clmkit_install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``install(plugin, name, distribution=None)``: the plugin object looks installed for this test.

    It gets a ``clmkit`` entry point ``name`` in a distribution (default ``clmkit-testing-<name>``)
    on ``sys.path``, so plugin discovery finds it in this process; both vanish after the test.
    """
    site = tmp_path / "clmkit-installed-plugins"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def install(plugin: object, name: str, distribution: str | None = None) -> None:
        module = types.ModuleType("clmkit_testing_plugin_" + re.sub(r"\W", "_", name))
        module.plugin = plugin  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, module.__name__, module)
        _write_distribution(site, distribution or f"clmkit-testing-{name}", name, f"{module.__name__}:plugin")
        importlib.invalidate_caches()

    return install
