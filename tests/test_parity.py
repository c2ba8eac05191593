"""Both training paths, one assembly: every registered name trains to the same loss curve in ClmTrainer and ClmLoop.

The cases come from the registries themselves (built-ins) plus the names of the two plugin packages, and
``test_every_registered_name_has_a_case`` fails when a name is added without joining the parity run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset
from support import PLUGIN_PACKAGES, install_plugin_packages

from clmkit import ClmTrainer
from clmkit.plugins import KINDS, Plugins
from clmkit.testing import NO_DROPOUT, tiny_args
from clmkit.training.loop import ClmLoop

# names that need arguments to do anything on the test corpus (or to run at all)
NAME_KWARGS: dict[tuple[str, str], dict[str, Any]] = {
    ("filters", "keywords"): {"words": ["def", "import"]},
    ("losses", "keytoken"): {"keywords": ["self", "return"], "alpha": 1.0},
    ("chunkers", "fim"): {"rate": 0.9},
}
PLUGIN_NAMES = {
    ("chunkers", "fim"): "clmkit_fim.plugin",
    ("losses", "z_loss"): "clmkit_zloss",
    ("losses", "label_smoothing"): "clmkit_zloss",
}
BUILTIN_NAMES = [(kind.name, name) for kind in KINDS for name in Plugins(autoload=False).registry(kind.name)]


def run_arguments(kind: str, name: str) -> dict[str, Any]:
    """The ``ClmTrainingArguments`` fields that choose ``name`` of registry ``kind``."""
    option = next(k for k in KINDS if k.name == kind)
    kwargs = NAME_KWARGS.get((kind, name), {})
    if kind == "architectures":  # chooses the model, not an argument
        return {}
    if kind == "filters":
        return {"filters": [{name: kwargs} if kwargs else name]}
    return {option.option: name, **({option.kwargs_option: kwargs} if option.kwargs_option else {})}


def model_overrides(kind: str, name: str) -> dict[str, Any]:
    """The ``clmkit_model`` arguments of a case: its architecture (GPT-2 unless the case is one), without dropout."""
    architecture = name if kind == "architectures" else "gpt2"
    return {"architecture": architecture, **(NO_DROPOUT if architecture == "gpt2" else {})}


def loss_curves(
    model_for, tokenizer, corpus, plugins: list[object], tmp_path: Path, model: dict[str, Any], **fields: Any
):
    """Six logged steps (batch 4 x accumulation 2) of the same run through ClmTrainer and ClmLoop."""
    models = [model_for(**model) for _ in range(2)]  # both built before a plugin may grow the tokenizer
    curves = []
    for cls, model in zip((ClmTrainer, ClmLoop), models, strict=True):
        args = tiny_args(
            tmp_path / cls.__name__,
            max_steps=6,
            warmup_steps=2,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,
            logging_strategy="steps",
            logging_steps=1,
            **fields,
        )
        run = cls(
            model=model,
            args=args,
            processing_class=tokenizer,
            train_dataset=Dataset.from_dict({"content": list(corpus[2:])}),
            eval_dataset=Dataset.from_dict({"content": list(corpus[:2])}),
            plugins=plugins,
        )
        run.train()
        curves.append([e["loss"] for e in run.state.log_history if "loss" in e])
        curves.append(run.evaluate()["eval_loss"])
    return curves


@pytest.mark.parametrize(("kind", "name"), [*BUILTIN_NAMES, *PLUGIN_NAMES], ids=lambda v: v)
def test_both_paths_give_the_same_loss_curve(
    kind, name, clmkit_model, clmkit_tokenizer, clmkit_corpus, tmp_path, monkeypatch
):
    monkeypatch.setenv("CLMKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins: list[object] = []
    if (kind, name) in PLUGIN_NAMES:
        install_plugin_packages()
        plugins = [__import__(PLUGIN_NAMES[kind, name], fromlist=["_"])]
    trainer, trainer_eval, loop, loop_eval = loss_curves(
        clmkit_model,
        clmkit_tokenizer,
        clmkit_corpus,
        plugins,
        tmp_path,
        model_overrides(kind, name),
        **run_arguments(kind, name),
    )
    assert len(trainer) == len(loop) == 6 and all(math.isfinite(x) for x in trainer)
    assert loop == pytest.approx(trainer, rel=1e-5), f"{kind} {name!r}: the two paths diverge"
    assert loop_eval == pytest.approx(trainer_eval, rel=1e-5)


def test_every_registered_name_has_a_case(monkeypatch):
    """A name added to the built-ins or to a plugin package of this repository joins the parity run."""
    monkeypatch.setenv("CLMKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    install_plugin_packages()
    modules = [__import__(m, fromlist=["_"]) for m in sorted(set(PLUGIN_NAMES.values()))]
    plugins = Plugins(extra=modules)
    registered = {(kind.name, name) for kind in KINDS for name in plugins.registry(kind.name)}
    assert registered == set(BUILTIN_NAMES) | set(PLUGIN_NAMES)
    assert {m.__name__.split(".")[0].replace("_", "-") for m in modules} == set(PLUGIN_PACKAGES)
