"""The docs are checked like code: snippets run, every hook and built-in name is documented."""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tomllib
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import install_plugin_package, pinned_env

from clmkit import hookspecs
from clmkit.plugins import KINDS, OTHER_HOOKS, Plugins

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def hook_names() -> list[str]:
    return [name for name in dir(hookspecs) if name.startswith("clmkit_")]


DOCUMENTED_HOOKS = [*(kind.hook for kind in KINDS), *OTHER_HOOKS]


def test_the_documented_hooks_are_every_hookspec():
    """KINDS and OTHER_HOOKS name every hook, so checking them below checks every hook."""
    assert sorted(DOCUMENTED_HOOKS) == hook_names()


def test_the_registries_table_of_the_hook_reference_matches_kinds():
    rows = [line for line in (DOCS / "hooks.md").read_text().splitlines() if line.startswith("| ")]
    for kind in KINDS:
        row = next((r for r in rows if r.startswith(f"| {kind.name} |")), None)
        assert row is not None, f"docs/hooks.md: no row for the registry {kind.name!r}"
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[1] in (f"`{kind.hook}`", f"[`{kind.hook}`](#clmkit.hookspecs.{kind.hook})"), row
        assert cells[2].startswith(f"`{kind.option}`"), row
        if kind.kwargs_option:
            assert f"`{kind.kwargs_option}`" in cells[3], row


@pytest.mark.parametrize("kind", [kind.name for kind in KINDS])
def test_every_builtin_name_is_in_the_reference(kind, monkeypatch):
    monkeypatch.setenv("CLMKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    reference = (DOCS / "reference.md").read_text()
    builtin = [e.name for e in Plugins().registry(kind).values() if e.plugin.startswith("clmkit.builtins.")]
    assert builtin
    for name in builtin:
        assert f"`{name}`" in reference, f"built-in {kind} {name!r} missing from docs/reference.md"


def test_plugin_guide_snippets_register_and_train(tmp_path, clmkit_tokenizer, clmkit_model, raw_datasets, monkeypatch):
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
        model=clmkit_model(context_length=32),
        args=args,
        processing_class=clmkit_tokenizer,
        train_dataset=raw_datasets["train"],
        plugins=modules,
    )
    assert trainer.data_stats["train"].examples == len(raw_datasets["train"])  # one head per long document
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses and all(loss > 0 for loss in losses)


# ---- the Quickstart and how-to pages: every snippet runs at tiny sizes, or says why it cannot -----
#
# A page's fenced blocks run in order, in one namespace, in a temporary working directory that is on
# sys.path: ```python blocks are executed, ```bash lines must be `clmkit ...` commands (run in-process
# with TINY_CLI flags appended, which override the page's sizes), ```toml blocks must parse. A block
# right after `<!-- not run: REASON -->` is not run (the reason is shown on the page as a comment);
# one after `<!-- file: PATH -->` is written to PATH instead. Each page shrinks its sizes with textual
# replacements, and every replacement must match, so a changed page cannot silently run at full size.

BLOCK = re.compile(r"(?:<!-- (not run|file): (.+?) -->\n)?```(\w+)\n(.*?)```", flags=re.S)
TINY_CLI = [
    "--model-preset", "test", "--config_overrides", "num_hidden_layers=1", "--vocab_size", "512",
    "--context_length", "64",
    "--max_steps", "2", "--per_device_train_batch_size", "4", "--valid_split_percentage", "20",
    "--max_new_tokens", "4", "--disable_tqdm", "true",
]  # fmt: skip
SHRINK_RUN = [
    ("load_corpus()", "load_corpus(TINY_CORPUS, valid_percentage=20)"),
    ("vocab_size=8192", "vocab_size=512"),
    ('"tiny"', '"test"'),
]


@dataclass
class Snippet:
    page: str
    index: int
    note: str | None  # "not run" or "file"
    detail: str | None  # the reason, or the path
    lang: str
    code: str


def snippets(page: str) -> list[Snippet]:
    text = (DOCS / page).read_text()
    return [Snippet(page, i, *m.groups()) for i, m in enumerate(BLOCK.finditer(text))]


def run_page(
    page: str,
    replacements: list[tuple[str, str]],
    workdir: Path,
    corpus: Path,
    namespace: dict | None = None,
    instead: dict[str, Callable[[Snippet], None]] | None = None,
) -> dict:
    """Run every snippet of ``page`` as described above; return the Python namespace."""
    from clmkit.cli import main

    ns = {"__name__": "doc_" + re.sub(r"\W", "_", page), "TINY_CORPUS": str(corpus), **(namespace or {})}
    unused = dict.fromkeys(range(len(replacements)))
    for snippet in snippets(page):
        code = snippet.code
        for i, (old, new) in enumerate(replacements):
            if old in code:
                code = code.replace(old, new)
                unused.pop(i, None)
        if snippet.note == "not run":
            assert len(snippet.detail) > 20, f"{page} block {snippet.index}: say why it cannot run here"
            for key, action in (instead or {}).items():
                if key in code:
                    action(snippet)
        elif snippet.note == "file":
            path = workdir / snippet.detail
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(code)
        elif snippet.lang == "python":
            exec(compile(code, f"docs/{page}#{snippet.index}", "exec"), ns)
        elif snippet.lang == "bash":
            for line in filter(None, (line.split("  #")[0].strip() for line in code.splitlines())):
                assert line.startswith("clmkit "), (
                    f"{page}: {line!r} is no clmkit command; mark it <!-- not run: why -->"
                )
                argv = shlex.split(line)[1:]
                assert main(argv + (TINY_CLI + ["--dataset", str(corpus)] if argv[0] == "train" else [])) == 0, line
        elif snippet.lang == "toml":
            tomllib.loads(code)
        else:
            pytest.fail(f"{page} block {snippet.index}: no way to run a {snippet.lang!r} block; mark it not run")
    assert not unused, f"{page}: replacements that no longer match: {[replacements[i][0] for i in unused]}"
    return ns


@pytest.fixture
def page_env(tmp_path, monkeypatch, corpus_dir):
    """The working directory (also on sys.path) and corpus a page runs in; third-party plugins autoload."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("CLMKIT_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("CLMKIT_PLUGINS", raising=False)
    return tmp_path, corpus_dir


def test_quickstart_runs(page_env):
    ns = run_page("index.md", [*SHRINK_RUN, ("max_steps=600", "max_steps=2")], *page_env)
    assert (page_env[0] / "clmkit-out" / "model.safetensors").is_file()
    assert ns["trainer"].state.global_step == 2


def test_course_recipe_runs_on_local_data(page_env, clmkit_tokenizer, raw_datasets):
    shrink = [
        ('model_config("gpt2", "base"', 'model_config("gpt2", "test"'),
        ("context_length = 128", "context_length = 64"),
        ('["plt", "pd", "sk", "fit", "predict"]', '["self", "return", "def"]'),  # single tokens of the tiny tokenizer
        ("per_device_train_batch_size=32", "per_device_train_batch_size=4"),
        ("per_device_eval_batch_size=32", "per_device_eval_batch_size=4"),
        ("gradient_accumulation_steps=8", "gradient_accumulation_steps=2"),
        ("num_train_epochs=1", "max_steps=2"),
        ("fp16=True", "fp16=False"),  # no fp16 on a CPU
        ("max_new_tokens=32", "max_new_tokens=4"),
    ]
    ns = run_page(
        "howto/course-recipe.md",
        shrink,
        *page_env,
        namespace={"raw_datasets": raw_datasets, "tokenizer": clmkit_tokenizer},
    )
    assert ns["trainer"].loss.__class__.__name__ == "KeyToken"
    assert ns["trainer"].chunker.__class__.__name__ == "Overflow"


def test_choose_a_chunker_measures_both_builtins(page_env, capsys):
    run_page("howto/choose-a-chunker.md", SHRINK_RUN[:2], *page_env)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines if "examples" in line] == ["concat", "overflow"]


@pytest.fixture
def install_guide_package(page_env, monkeypatch):
    """``install(package, passed)``: the action of a guide's ``pip install -e`` block. It installs the package the
    page wrote into a temporary site folder, runs its tests there (``passed`` of them must pass), and puts the
    folder on ``sys.path`` so the page's later blocks find the plugin by name."""
    workdir, _ = page_env
    site = workdir / "site-packages"

    def install(package: str, passed: int) -> Callable[[Snippet], None]:
        def action(snippet: Snippet) -> None:
            folder = workdir / package
            install_plugin_package(folder, target=site)
            env = pinned_env(PYTHONPATH=str(site))
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                cwd=folder,
                env=env,
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0 and f"{passed} passed" in done.stdout, done.stdout + done.stderr
            monkeypatch.syspath_prepend(str(site))
            importlib.invalidate_caches()

        return action

    return install


def test_chunker_plugin_guide_end_to_end(page_env, install_guide_package, capsys):
    """Generate the package with the CLI, write the page's files, install it, run its tests (the contract check
    among them), then train with it by name from the CLI and from Python."""
    shrink = [*SHRINK_RUN, ("max_steps=600", "max_steps=2")]
    install = {"pip install -e": install_guide_package("clmkit-concat-reset", 4)}  # 3 of the page + the installed one
    ns = run_page("howto/chunker-plugin.md", shrink, *page_env, instead=install)
    assert '"distribution": "clmkit-concat-reset"' in capsys.readouterr().out
    metrics = json.loads((page_env[0] / "clmkit-out" / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and metrics["data"]["train"]["fill_rate"] == 1.0
    trainer = ns["trainer"]
    example = trainer.train_dataset[0]
    eos = trainer.processing_class.eos_token_id
    for i in range(1, len(example["input_ids"])):
        previous = example["input_ids"][i - 1]
        assert example["position_ids"][i] == (0 if previous == eos else example["position_ids"][i - 1] + 1)
    assert trainer.state.global_step == 2


def test_loss_plugin_guide_end_to_end(page_env, install_guide_package, capsys):
    """Generate the package, write the page's files, install it, run its tests, then train with it by name."""
    run_page(
        "howto/loss-plugin.md", [], *page_env, instead={"pip install -e": install_guide_package("clmkit-focal-loss", 5)}
    )
    out = capsys.readouterr().out
    assert '"distribution": "clmkit-focal-loss"' in out
    metrics = json.loads((page_env[0] / "clmkit-out" / "metrics.json").read_text())
    assert (
        metrics["global_step"] == 2 and math.isfinite(metrics["eval_loss"]) and math.isfinite(metrics["eval_objective"])
    )


def test_fill_in_the_middle_guide_runs(page_env):
    shrink = [
        *SHRINK_RUN,
        ("256", "64"),
        ("max_steps=2000", "max_steps=2"),
        ("per_device_train_batch_size=16", "per_device_train_batch_size=4"),
    ]
    install = {
        "pip install ./plugins/clmkit-fim": lambda _: install_plugin_package(DOCS.parent / "plugins" / "clmkit-fim")
    }
    ns = run_page("howto/fill-in-the-middle.md", shrink, *page_env, instead=install)
    assert "<fim_middle>" in ns["tokenizer"].get_vocab()
    assert isinstance(ns["infill"](ns["model"], ns["tokenizer"], "x = ", "\n", max_new_tokens=2), str)


def test_multi_process_script_runs_on_one_process(page_env, clmkit_tokenizer):
    clmkit_tokenizer.save_pretrained(page_env[0] / "clmkit-out")  # "trained once, before the launch"
    shrink = [
        *SHRINK_RUN[::2],
        ("max_steps=600", "max_steps=2"),
        ("context_length=128", "context_length=64"),
        ("per_device_train_batch_size=16", "per_device_train_batch_size=4"),
    ]
    ns = run_page("howto/multi-process.md", shrink, *page_env)
    assert ns["trainer"].state.global_step == 2 and (page_env[0] / "run-ddp" / "model.safetensors").is_file()


def test_every_page_is_in_the_site_navigation():
    import yaml

    def pages(nav):
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            yield from pages(value) if isinstance(value, list) else [value]

    nav = set(pages(yaml.safe_load((DOCS.parent / "mkdocs.yml").read_text())["nav"]))
    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert on_disk == nav, (
        f"pages missing from mkdocs.yml nav: {sorted(on_disk - nav)}; missing files: {sorted(nav - on_disk)}"
    )


@pytest.fixture(scope="module")
def built_site(tmp_path_factory) -> Path:
    """The docs site, built once with ``mkdocs build --strict`` (a warning, e.g. a broken link or anchor, fails)."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings-python is not installed")
    site = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=DOCS.parent,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr
    return site


def test_site_builds_strict(built_site):
    assert (built_site / "index.html").is_file()


@pytest.mark.parametrize("hook", DOCUMENTED_HOOKS)
def test_every_hook_is_in_the_generated_hook_reference(built_site, hook):
    """docs/hooks.md renders clmkit.hookspecs: each hook gets a generated section with its docstring."""
    generated = (built_site / "hooks" / "index.html").read_text()
    assert f'id="clmkit.hookspecs.{hook}"' in generated, f"{hook} missing from the generated hook reference"
    summary = (getattr(hookspecs, hook).__doc__ or "").strip().splitlines()[0]
    words = re.findall(r"\w+", summary)[:4]
    assert words and re.search(r"\W+".join(words), re.sub(r"<[^>]+>", "", generated)), (
        f"the docstring of {hook} is not rendered in the hook reference"
    )


def test_every_eval_metric_is_documented(clmkit_tokenizer, clmkit_model, clmkit_args, raw_datasets):
    """What an evaluation during training reports, with a loss other than cross-entropy, is in the Concepts page."""
    from clmkit import ClmTrainer

    args = clmkit_args(loss="keytoken", loss_kwargs={"keywords": ["self", "def"]}, max_steps=1)
    trainer = ClmTrainer(
        model=clmkit_model(),
        args=args,
        processing_class=clmkit_tokenizer,
        train_dataset=raw_datasets["train"],
        eval_dataset=raw_datasets["valid"],
    )
    trainer.train()
    timing = {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}  # the Trainer's own
    reported = {key for key in trainer.evaluate() if key.startswith("eval_")} - timing
    concepts = (DOCS / "concepts.md").read_text()
    assert {"eval_objective", "eval_tokens_seen"} <= reported
    assert [key for key in sorted(reported) if f"`{key}`" not in concepts] == []


def test_the_builtin_classes_plugins_subclass_are_in_the_reference():
    import clmkit

    reference = (DOCS / "reference.md").read_text()
    public = [name for name in clmkit.__all__ if getattr(clmkit, name).__module__.startswith("clmkit.builtins.")]
    assert len(public) == 9
    assert [name for name in public if f"`clmkit.{name}`" not in reference] == []


def test_the_quickstart_run_is_timed_in_one_place_and_its_steps_agree():
    """The default run's steps are clmkit train's default everywhere; only docs/cli.md states how long it takes."""
    from clmkit.cli.options import TRAIN_DEFAULTS

    steps = f"{TRAIN_DEFAULTS['max_steps']} steps"
    cli = (DOCS / "cli.md").read_text()
    assert steps in cli and re.search(r"\*\*\d+ min \d+ s\*\* in all", cli)
    duration = re.compile(r"\b(?:about|in|takes) (?:a few|one|two|three|four|five|\d+) min(?:utes?)?\b")
    for page in (DOCS.parent / "README.md", DOCS / "index.md"):
        text = page.read_text()
        assert steps in text and "cli.md#clmkit-train-with-no-arguments" in text, page.name
        assert not duration.search(text), f"{page.name} states a run time: {duration.search(text).group()}"
