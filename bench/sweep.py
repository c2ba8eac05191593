"""Sweep ``clmkit train`` flags at a fixed wall clock: every combination of a grid trained for the same time.

Each combination of the ``--grid`` axes (each a ``clmkit train`` flag and its values, on top of
``--base-args``) trains for ``--budget`` seconds through time_to_quality's clmkit path: its own
schedule run over wall-clock time (``wallclock.WallClockSchedule``), one corpus and one tokenizer
made once for all, and the same exact evaluation (bits per byte over the whole validation split,
fp32, outside the clock). It prints a markdown table sorted by bits/byte, one row per combination
with the command that reproduces that row alone.

Only models of one size compare: a combination whose non-embedding parameters are outside +-10%
of the course's GPT-2 of the same preset is refused before anything trains (exit 2), unless
``--any-size``.

    python bench/sweep.py --budget 150 --grid architecture=llama,gpt2 --grid optimizer=adamw,muon \\
        --grid learning_rate=2e-3,4e-3 --grid per_device_train_batch_size=16,32 --grid lr_scheduler_type=cosine,wsd
    python bench/sweep.py --list --grid optimizer=adamw,muon --grid learning_rate=2e-3,4e-3   # trains nothing

A grid value cannot hold a comma: put such flags (``--config_overrides a=1,b=2``) in ``--base-args``.
The corpus and tokenizer flags are shared by every row, so they go in ``--base-args`` too.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import tempfile
from pathlib import Path
from typing import Any

from time_to_quality import (
    BenchError,
    clmkit_trainer,
    command_line,
    environment,
    fail,
    flag_names,
    model_sizes,
    parse_clmkit,
    prepare,
    print_header,
    train_for,
)

from clmkit.errors import ClmkitError

SHARED = frozenset(  # the corpus and the tokenizer: made once, so the same for every row
    {"config", "dataset", "extensions", "valid_split_percentage", "streaming", "tokenizer", "vocab_size", "text_column"}
)

Axis = tuple[str, list[str]]


def parse_axis(text: str) -> Axis:
    """``learning_rate=2e-3,4e-3`` as ``("learning_rate", ["2e-3", "4e-3"])``."""
    name, sep, values = text.partition("=")
    name = name.strip().removeprefix("--").replace("-", "_")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not name or not items:
        raise BenchError(f"--grid {text!r} is not FLAG=V1,V2,...; write e.g. --grid learning_rate=2e-3,4e-3.")
    if name in SHARED:
        raise BenchError(f"--grid {name}: the corpus and tokenizer are shared by all rows; set it in --base-args.")
    return name, items


def combinations(axes: list[Axis]) -> list[dict[str, str]]:
    """Every combination of the axes' values, the first axis varying slowest."""
    names = [name for name, _ in axes]
    if len(set(names)) < len(names):
        raise BenchError(f"--grid names a flag twice: {', '.join(names)}.")
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(v for _, v in axes))]


def combination_flags(base: list[str], combination: dict[str, str]) -> list[str]:
    """The ``clmkit train`` flags of one row: the base flags, then the row's grid values."""
    taken = flag_names(base) & set(combination)
    if taken:
        raise BenchError(f"--base-args sets {', '.join(sorted(taken))}, which --grid varies; drop it from one.")
    return [*base, *(part for name, value in combination.items() for part in (f"--{name}", value))]


def row_command(flags: list[str], budget: float, seed: int) -> str:
    """The time_to_quality command that trains and scores one row alone."""
    return shlex.join(
        ["python", "bench/time_to_quality.py", "--only", "clmkit", "--seeds", "1", "--first-seed", str(seed)]
        + ["--budget", f"{budget:g}", "--clmkit-args", shlex.join(flags)]
    )


def check_sizes(rows: list[dict[str, Any]], vocab_size: int, any_size: bool) -> None:
    """Record each row's non-embedding parameters; refuse a row outside +-10% of the course's size unless
    ``any_size`` (the flags are parsed and checked here too, before anything trains)."""
    for row in rows:
        sizes = model_sizes(row["flags"], vocab_size)
        row["non_embedding_parameters"], row["size_ratio"] = sizes["clmkit"], sizes["ratio"]
        if not sizes["comparable"] and not any_size:
            raise BenchError(
                f"{shlex.join(row['flags'])} gives {sizes['ratio']:.2f} times the course model's non-embedding "
                "parameters, outside +-10%; change its size or pass --any-size."
            )


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sweep.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--grid", action="append", default=[], help="FLAG=V1,V2,...: a `clmkit train` flag and its values; repeat."
    )
    parser.add_argument("--base-args", default="", help="`clmkit train` flags (quoted) common to every row.")
    parser.add_argument("--budget", type=float, default=150.0, help="Training seconds per row.")
    parser.add_argument("--seed", type=int, default=0, help="The seed of every row (initialization, data order).")
    parser.add_argument("--any-size", action="store_true", help="Allow rows of another size than the course's.")
    parser.add_argument("--list", action="store_true", help="Print the rows and their sizes, train nothing.")
    parser.add_argument("--json", type=Path, help="Also write every row to this JSON file.")
    return parser


def main() -> None:
    cli = parser()
    options = cli.parse_args()
    if options.budget <= 0:
        cli.error("--budget must be above 0")
    try:
        sweep(options, command_line(cli, options))
    except (BenchError, ClmkitError) as exc:
        fail(cli.prog, exc)


def sweep(options: argparse.Namespace, command: str) -> None:
    """Check every row, then (unless ``--list``) train and score each, and print the table."""
    axes = [parse_axis(text) for text in options.grid]
    base = shlex.split(options.base_args)
    rows: list[dict[str, Any]] = [
        {"grid": combo, "flags": combination_flags(base, combo)} for combo in combinations(axes)
    ]
    _, tok_options, _, _ = parse_clmkit(base)
    check_sizes(rows, tok_options.vocab_size, options.any_size)
    if options.list:
        for row in rows:
            print(
                f"{shlex.join(row['flags']) or '(defaults)'}: {row['non_embedding_parameters']:,} non-embedding "
                f"parameters ({row['size_ratio']:.3f} x the course's)"
            )
        return
    env = environment()
    print_header(command, env)
    setup = prepare(base)
    with tempfile.TemporaryDirectory() as tmp:
        for number, row in enumerate(rows):
            trainer = clmkit_trainer(row["flags"], options.seed, setup, f"{tmp}/{number}")
            result, _ = train_for(trainer, options.budget, setup)
            row |= result | {"command": row_command(row["flags"], options.budget, options.seed)}
            print(
                f"[{number + 1}/{len(rows)}] {json.dumps(row['grid'])}: {result['eval_bits_per_byte']:.4f} "
                f"bits/byte in {result['steps']} steps",
                flush=True,
            )
    rows.sort(key=lambda row: row["eval_bits_per_byte"])
    print()
    print(table(rows, [name for name, _ in axes]))
    if options.json:
        record = {"command": command, "environment": env, "budget_seconds": options.budget, "rows": rows}
        options.json.write_text(json.dumps(record, indent=2) + "\n")


def table(rows: list[dict[str, Any]], axes: list[str]) -> str:
    """The rows as a markdown table, in the order given."""
    header = [*axes, "steps", "tokens trained", "non-emb params", "eval loss", "bits/byte", "command"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(axes) + " ---: |" * 5 + " --- |"]
    for row in rows:
        cells = [
            *(row["grid"][name] for name in axes),
            str(row["steps"]),
            f"{row['tokens_trained']:,}",
            f"{row['non_embedding_parameters']:,}",
            f"{row['eval_loss']:.4f}",
            f"{row['eval_bits_per_byte']:.4f}",
            f"`{row['command']}`",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
