"""What a run leaves in its output folder besides the model: metrics, loss curve, model card, arguments.

Every file is written atomically (a temporary file in the same folder, then ``os.replace``), so an
interrupted run never leaves a half-written file behind: each one is the old version or the new.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from clmkit.outputs import default_mode

Point = tuple[float, float]


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary path next to ``path``, then move it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, default_mode())  # mkstemp makes 0600 files; others on a shared machine may read results
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    atomic_write(path, lambda tmp: _write(tmp, text))


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (indented; NaN and inf as JSON null)."""
    write_text(path, json.dumps(_finite(data), indent=2) + "\n")


def _finite(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, Mapping):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(v) for v in data]
    return data


def training_args_yaml(values: Mapping[str, Any], command: str) -> str:
    """The run's arguments as YAML that ``clmkit train --config`` reads back; fields left out take defaults."""
    one_line = command.replace("\n", "\\n")  # a newline would end the comment
    header = (
        f"# clmkit training arguments, written by: {one_line}\n"
        "# Repeat the run: clmkit train --config training_args.yaml (flags override these values).\n"
        "# Fields not listed keep their defaults.\n"
    )
    return header + yaml.dump(dict(values), Dumper=_Dumper, sort_keys=False, allow_unicode=True)


class _Dumper(yaml.SafeDumper):
    """Writes strings with line breaks in double quotes (``"import os\\n"``) instead of folded blocks."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style='"' if "\n" in text else None)


_Dumper.add_representer(str, _represent_str)


def loss_points(log_history: Sequence[Mapping[str, Any]]) -> tuple[list[Point], list[Point]]:
    """(tokens seen, loss) of every training log and every evaluation in a Trainer's ``log_history``.

    Evaluations carry no token count; they get the count of the training log at the same step (or
    the nearest earlier one).
    """
    train = [(float(e["tokens_seen"]), float(e["loss"])) for e in log_history if "loss" in e and "tokens_seen" in e]
    steps = [(int(e["step"]), float(e["tokens_seen"])) for e in log_history if "loss" in e and "tokens_seen" in e]
    evals = []
    for entry in log_history:
        if "eval_loss" in entry:
            seen = [tokens for step, tokens in steps if step <= entry.get("step", 0)]
            evals.append((seen[-1] if seen else 0.0, float(entry["eval_loss"])))
    return train, evals


def plot_loss_curve(
    path: str | Path, train: Sequence[Point], evals: Sequence[Point], final: Point | None, title: str
) -> None:
    """A PNG of training loss, periodic eval loss and the final eval loss against tokens seen (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=110)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="tab:blue", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss (periodic)", color="tab:orange", markersize=4)
    if final:
        ax.plot(*final, "*", label="eval loss (whole validation split)", color="tab:red", markersize=11)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


METRIC_ROWS = (
    ("eval_loss", "eval loss (nats/token)", "{:.4f}"),
    ("eval_perplexity", "eval perplexity", "{:.2f}"),
    ("eval_bits_per_byte", "eval bits per byte", "{:.4f}"),
    ("eval_accuracy", "eval next-token accuracy", "{:.3f}"),
    ("train_loss", "last train loss", "{:.4f}"),
    ("tokens_seen", "tokens seen", "{:,.0f}"),
    ("tokens_per_second", "tokens per second", "{:,.0f}"),
    ("global_step", "optimizer steps", "{:,.0f}"),
    ("parameters", "parameters", "{:,.0f}"),
    ("train_runtime_seconds", "training time (s)", "{:.1f}"),
    ("wall_time_seconds", "wall time of the command (s)", "{:.1f}"),
)


def metrics_table(metrics: Mapping[str, Any]) -> str:
    """A markdown table of the headline metrics that ``metrics`` has."""
    rows = ["| metric | value |", "| --- | --- |"]
    for key, label, fmt in METRIC_ROWS:
        value = metrics.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            rows.append(f"| {label} | {fmt.format(value)} |")
    return "\n".join(rows)


def model_card(
    title: str,
    description: str,
    metrics: Mapping[str, Any],
    command: str,
    samples: Mapping[str, str],
    model_type: str,
) -> str:
    """README.md of the output folder: what the model is, its metrics, how it was made, sample completions."""
    sample_blocks = "\n\n".join(
        f"Prompt `{prompt.encode('unicode_escape').decode()}`:\n\n```python\n{text}\n```"
        for prompt, text in samples.items()
    )
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [clmkit, {model_type}, causal-lm, text-generation]
---

# {title}

{description}

## Metrics

{metrics_table(metrics)}

Evaluation is token-weighted over the whole validation split. Bits per byte = total loss in nats /
ln 2 / UTF-8 bytes of the evaluated text, comparable across tokenizers. All figures are in
`metrics.json`; `loss_curve.png` plots train and eval loss against tokens seen.

## How it was made

```bash
{command}
```

The arguments are in `training_args.yaml`; `clmkit train --config training_args.yaml` repeats the run.

## Sample completions

{sample_blocks}

## Use

```python
from transformers import pipeline

generator = pipeline("text-generation", model="path/to/this/folder")
print(generator("def fibonacci(n):", max_new_tokens=48)[0]["generated_text"])
```
"""
