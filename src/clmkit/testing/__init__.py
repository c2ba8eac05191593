"""Test kit for clmkit plugins: a pytest plugin with tiny real fixtures, contract checks, and gradients on demand.

pytest loads it wherever clmkit is installed (entry point ``pytest11``; ``-p no:clmkit`` turns it
off); it needs pytest: ``pip install "clmkit[test]"``. Fixtures, all prefixed ``clmkit_``
(``clmkit.testing.fixtures``):

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

The same inputs as plain functions (``clmkit.testing.tiny``): ``tiny_corpus()``, ``tiny_tokenizer()``,
``tiny_model(tokenizer, ...)``, ``tiny_args(output_dir, ...)``, ``padded_examples(tokenizer, count=32)``
and ``NO_DROPOUT``. Contract checks (``clmkit.testing.contracts``): ``assert_chunker_contract``,
``assert_collator_contract``, ``assert_filter_contract``. Gradients (``clmkit.testing.gradients``):
``first_step_gradients`` and ``assert_exact_under_accumulation``.
"""

from __future__ import annotations

try:
    import pytest  # noqa: F401  (the fixtures need it; fail here with the fix rather than deep inside)
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without pytest
    raise ImportError(
        'clmkit.testing is a pytest plugin and needs pytest, which is not installed. Run: pip install "clmkit[test]"'
    ) from exc

from clmkit.testing.contracts import assert_chunker_contract, assert_collator_contract, assert_filter_contract
from clmkit.testing.fixtures import (
    clmkit_args,
    clmkit_corpus,
    clmkit_install_plugin,
    clmkit_model,
    clmkit_plugins,
    clmkit_tokenizer,
)
from clmkit.testing.gradients import (
    TEST_LOSS_NAME,
    Difference,
    FirstStep,
    assert_exact_under_accumulation,
    first_step_gradients,
)
from clmkit.testing.tiny import (
    CORPUS_PACKAGES,
    NO_DROPOUT,
    padded_examples,
    tiny_args,
    tiny_corpus,
    tiny_model,
    tiny_tokenizer,
)

__all__ = [
    "CORPUS_PACKAGES",
    "NO_DROPOUT",
    "TEST_LOSS_NAME",
    "Difference",
    "FirstStep",
    "assert_chunker_contract",
    "assert_collator_contract",
    "assert_exact_under_accumulation",
    "assert_filter_contract",
    "clmkit_args",
    "clmkit_corpus",
    "clmkit_install_plugin",
    "clmkit_model",
    "clmkit_plugins",
    "clmkit_tokenizer",
    "first_step_gradients",
    "padded_examples",
    "tiny_args",
    "tiny_corpus",
    "tiny_model",
    "tiny_tokenizer",
]
