"""What every bad-input test asserts: exit code 2 (or the typed error), one line naming cause and fix,
no traceback, and no file outside the output folder changed."""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clmkit.cli import main

Snapshot = dict[str, tuple[int, str]]


def snapshot(root: Path, skip: Sequence[Path] = ()) -> Snapshot:
    """Size and content hash of every file under ``root`` (folders in ``skip`` left out)."""
    skipped = [p.resolve() for p in skip]
    files: Snapshot = {}
    for path in sorted(root.rglob("*")):
        resolved = path.resolve()
        if path.is_file() and not any(resolved == s or s in resolved.parents for s in skipped):
            files[path.relative_to(root).as_posix()] = (path.stat().st_size, _digest(path))
    return files


def _digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(argv: Sequence[str]) -> CliResult:
    """``clmkit ARGV`` in this process, its output captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return CliResult(code, out.getvalue(), err.getvalue())


def assert_refused(result: CliResult, *words: str) -> str:
    """Exit code 2, no traceback, one ``clmkit ...: error: ...`` line holding every word of ``words``
    (case-insensitive); returns that line."""
    assert result.code == 2, (result.code, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word.lower() in errors[0].lower(), (word, errors[0])
    return errors[0]


def assert_unchanged(before: Snapshot, after: Snapshot) -> None:
    """No file of the snapshot was added, removed or changed."""
    added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not (added or removed or changed), {"added": added, "removed": removed, "changed": changed}
