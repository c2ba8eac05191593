"""The ``clmkit`` command: ``train``, ``prepare``, ``eval``, ``generate`` and ``plugins``.

``clmkit train`` with no arguments trains a byte-level BPE tokenizer and a small Qwen3-style model on this
interpreter's standard library in 450 steps (about two minutes on a CPU), and leaves a complete model folder.
Every ``ClmTrainingArguments`` (hence ``TrainingArguments``) field is a flag; ``--config run.yaml``
takes the same fields, and flags override it. Bad input ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence

from clmkit.cli.commands import cmd_eval, cmd_generate, cmd_new_plugin, cmd_plugins, cmd_prepare
from clmkit.cli.options import Parser
from clmkit.cli.train import cmd_train
from clmkit.errors import ClmkitError

logger = logging.getLogger("clmkit")

COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "train": (cmd_train, "train a tokenizer and a causal LM (defaults: the stdlib, 450 steps, ~2 minutes on a CPU)"),
    "prepare": (cmd_prepare, "tokenize and chunk a corpus once, for train"),
    "eval": (cmd_eval, "perplexity and bits per byte of a saved model"),
    "generate": (cmd_generate, "complete a prompt with a saved model"),
    "plugins": (cmd_plugins, "list the loaded plugins as JSON"),
    "new-plugin": (cmd_new_plugin, "write a plugin package (or add a plugin to one) from the template of its kind"),
}


class _StderrHandler(logging.Handler):
    """Writes to the current ``sys.stderr`` (which tests may replace) as ``clmkit: message``."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"clmkit: {record.getMessage()}", file=sys.stderr)


def _setup_logging() -> None:
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _end_distributed() -> None:
    """Under torchrun, end every process together: one exiting while another tears down gloo can abort it."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clmkit`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        top = Parser(
            prog="clmkit", description="Train causal language models from scratch. `clmkit train` runs the default job."
        )
        commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
        for name, (_, summary) in COMMANDS.items():
            commands.add_parser(name, help=summary, add_help=False)
        try:
            top.parse_args(argv)  # prints the help or a one-line error
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 0
        return 2
    command, rest = argv[0], argv[1:]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true but no accelerator")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight loading and saving bars; training and data bars stay
    _setup_logging()
    try:
        code = COMMANDS[command][0](rest)
        _end_distributed()
        return code
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 0
    except ClmkitError as exc:
        print(f"clmkit {command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clmkit {command}: interrupted.", file=sys.stderr)
        return 130
