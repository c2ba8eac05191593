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

    An evaluation sits at the tokens seen when it ran (``eval_tokens_seen``, which clmkit's evaluations
    log), not at the last training log's: with ``eval_steps`` not a multiple of ``logging_steps`` the two
    differ. An evaluation without the count (one at step 0, or a history written by another trainer) gets
    the count interpolated by step between the logs around it, from 0 tokens at step 0.
    """
    train = [(float(e["tokens_seen"]), float(e["loss"])) for e in log_history if "loss" in e and "tokens_seen" in e]
    known = sorted(
        {(0, 0.0)}
        | {(int(e["step"]), float(e["tokens_seen"])) for e in log_history if "loss" in e and "tokens_seen" in e}
        | {(int(e["step"]), float(e["eval_tokens_seen"])) for e in log_history if "eval_tokens_seen" in e}
    )
    evals = []
    for entry in log_history:
        if "eval_loss" in entry:
            seen = entry.get("eval_tokens_seen")
            x = float(seen) if seen is not None else _tokens_at(int(entry.get("step", 0)), known)
            evals.append((x, float(entry["eval_loss"])))
    return train, evals


def _tokens_at(step: int, known: Sequence[tuple[int, float]]) -> float:
    """Tokens seen at ``step``, interpolated linearly between the (step, tokens) points around it (``known`` sorted,
    from (0, 0)); past the last one, at the average rate so far."""
    before = max((p for p in known if p[0] <= step), default=known[0])
    after = min((p for p in known if p[0] >= step), default=None)
    if after is None:
        return before[1] * step / before[0] if before[0] else 0.0
    if after[0] == before[0]:
        return before[1]
    return before[1] + (after[1] - before[1]) * (step - before[0]) / (after[0] - before[0])


# the training loss is the run's objective (any registered loss); evaluation is always token cross-entropy
TRAIN_LABEL = "train objective (the run's loss)"
EVAL_LABEL = "eval cross-entropy (periodic)"
FINAL_LABEL = "eval cross-entropy (whole validation split)"


def plot_loss_curve(
    path: str | Path, train: Sequence[Point], evals: Sequence[Point], final: Point | None, title: str
) -> None:
    """A PNG of the training objective, the periodic eval cross-entropy and the final one against tokens seen (no
    display needed); the two are the same quantity only when the run's loss is ``cross_entropy``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=110)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train, strict=True), label=TRAIN_LABEL, color="tab:blue", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label=EVAL_LABEL, color="tab:orange", markersize=4)
    if final:
        ax.plot(*final, "*", label=FINAL_LABEL, color="tab:red", markersize=11)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("nats per token")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


METRIC_ROWS = (
    ("eval_loss", "eval cross-entropy (nats/token)", "{:.4f}"),
    ("eval_objective", "eval objective (the run's loss on the eval set)", "{:.4f}"),
    ("eval_perplexity", "eval perplexity", "{:.2f}"),
    ("eval_bits_per_byte", "eval bits per byte", "{:.4f}"),
    ("eval_accuracy", "eval next-token accuracy", "{:.3f}"),
    ("train_loss", "last train objective (the run's loss)", "{:.4f}"),
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

Evaluation is token-weighted over the whole validation split. The eval loss is token cross-entropy whatever
loss trained the model, so runs with different losses compare; the train figures are the training objective
(the run's loss), the same quantity only for `cross_entropy`, and a run with another loss also reports its
objective on the eval set. Bits per byte = total cross-entropy in nats / ln 2 / UTF-8 bytes of the evaluated
text, comparable across tokenizers. All figures are in `metrics.json`; `loss_curve.png` plots the train
objective and the eval cross-entropy against tokens seen.

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
