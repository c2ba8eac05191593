"""The docs are checked like code: snippets run, every hook and built-in name is documented."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest

from clmkit import hookspecs
from clmkit.plugins import REGISTRIES, Plugins

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def hook_names() -> list[str]:
    return [name for name in dir(hookspecs) if name.startswith("clmkit_")]


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_is_documented(hook):
    assert hook in (DOCS / "concepts.md").read_text(), f"{hook} missing from docs/concepts.md"
    assert hook in (DOCS / "plugins.md").read_text() or hook in (DOCS / "reference.md").read_text()


@pytest.mark.parametrize("kind", list(REGISTRIES))
def test_every_builtin_name_is_in_the_reference(kind, monkeypatch):
    monkeypatch.setenv("CLMKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    reference = (DOCS / "reference.md").read_text()
    builtin = [e.name for e in Plugins().registry(kind).values() if e.plugin.startswith("clmkit.builtins.")]
    assert builtin
    for name in builtin:
        assert f"`{name}`" in reference, f"built-in {kind} {name!r} missing from docs/reference.md"


def test_plugin_guide_snippets_register_and_train(tmp_path, tokenizer, make_model, raw_datasets, monkeypatch):
    """Each snippet of docs/plugins.md runs as a plugin module, and its names train a real model."""
    from clmkit import ClmTrainer, ClmTrainingArguments

    monkeypatch.setenv("CLMKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    modules = []
    for i, code in enumerate(python_blocks(DOCS / "plugins.md")):
        module = types.ModuleType(f"doc_plugin_{i}")
        exec(compile(code, f"docs/plugins.md#{i}", "exec"), module.__dict__)
        modules.append(module)
    args = ClmTrainingArguments(
        output_dir=str(tmp_path),
        context_length=32,
        loss="last_half",
        chunker="head",
        max_steps=3,
        logging_steps=1,
        per_device_train_batch_size=4,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        use_cpu=True,
    )
    trainer = ClmTrainer(
        model=make_model(context_length=32),
        args=args,
        processing_class=tokenizer,
        train_dataset=raw_datasets["train"],
        plugins=modules,
    )
    assert trainer.data_stats["train"].examples == len(raw_datasets["train"])  # one head per long document
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses and all(loss > 0 for loss in losses)
