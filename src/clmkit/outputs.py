"""Output folders that clmkit owns: a marker naming what clmkit wrote there, an exclusive lock for one run at a
time, and removal that touches only clmkit's own entries.

clmkit never deletes or replaces a file it did not write. A folder it writes into gets a ``.clmkit`` marker
(JSON) listing the entries it wrote; ``--overwrite`` removes those and clmkit's checkpoints (folders holding
clmkit's checkpoint manifest), nothing else. The current directory, its ancestors, the home directory and the
inputs of a run are never an output folder to overwrite.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from clmkit.errors import ConfigError

MARKER = ".clmkit"
LOCK = ".clmkit.lock"
CLMKIT_FILES = frozenset({MARKER, LOCK})
TRANSIENT_PREFIXES = (".clmkit.", ".write-")  # atomic writes in progress: a marker's temporary file, a save


def default_mode(folder: bool = False) -> int:
    """The permissions a new file (or folder) gets under this process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


def apply_umask(path: Path) -> None:
    """Give ``path`` and everything below it the permissions of this process's umask: libraries that write
    through temporary files (safetensors, tempfile) leave 0600 files other users of the machine cannot read."""
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not item.is_symlink():
            os.chmod(item, default_mode(folder=item.is_dir()))


class OutputFolder:
    """One output folder: what clmkit wrote there (its marker), what it did not, and the run's lock."""

    def __init__(self, path: str | Path, kind: str) -> None:
        self.path = Path(path)
        self.kind = kind  # "train" or "prepared": what clmkit writes there

    @property
    def marker(self) -> Path:
        return self.path / MARKER

    def is_clmkit(self) -> bool:
        """Whether clmkit wrote into this folder before (its marker is there)."""
        return self.marker.is_file()

    def owned(self) -> set[str]:
        """The entries the marker says clmkit wrote, that are still there."""
        if not self.is_clmkit():
            return set()
        try:
            recorded = json.loads(self.marker.read_text(encoding="utf-8")).get("entries", [])
        except (OSError, ValueError, AttributeError):
            recorded = []
        return {name for name in recorded if isinstance(name, str) and (self.path / name).exists()}

    def checkpoints(self) -> list[Path]:
        """clmkit's checkpoints here: ``checkpoint-*`` folders holding clmkit's manifest, and the
        ``.partial-checkpoint-*`` / ``.deleting-checkpoint-*`` folders a killed save or rotation left."""
        from clmkit.training.checkpoint import DELETING_PREFIX, PARTIAL_PREFIX, is_owned_checkpoint_folder

        if not self.path.is_dir():
            return []
        candidates = [
            *self.path.glob("checkpoint-*"),
            *self.path.glob(f"{PARTIAL_PREFIX}checkpoint-*"),
            *self.path.glob(f"{DELETING_PREFIX}checkpoint-*"),
        ]
        return sorted(p for p in candidates if is_owned_checkpoint_folder(p))

    def foreign(self) -> list[str]:
        """Entries clmkit did not write: never removed, never replaced."""
        if not self.path.is_dir():
            return []
        ours = self.owned() | CLMKIT_FILES | {p.name for p in self.checkpoints()}
        return sorted(
            p.name for p in self.path.iterdir() if p.name not in ours and not p.name.startswith(TRANSIENT_PREFIXES)
        )

    def check_not_in_use(self) -> None:
        """Refuse at once when another run holds this folder's lock (its files are in flux: say so, not what)."""
        lock_path = self.path / LOCK
        if os.environ.get("RANK", "0") != "0" or not lock_path.is_file():
            return
        with open(lock_path, encoding="utf-8") as handle:
            _lock(handle, lock_path)  # released when the handle closes

    def record(self, names: Iterable[str]) -> None:
        """Add ``names`` to the entries clmkit wrote here (the marker is rewritten atomically, by the main process
        of a multi-process launch only: two processes rewriting it could each drop the other's entries)."""
        if not _main_process():
            return
        from clmkit import __version__
        from clmkit.report import write_json

        entries = sorted(self.owned() | {n for n in names if n not in CLMKIT_FILES})
        write_json(self.marker, {"written_by": f"clmkit {__version__}", "kind": self.kind, "entries": entries})

    def remove_owned(self) -> list[str]:
        """Remove what clmkit wrote here (the marker's entries and clmkit's checkpoints); return their names."""
        from clmkit.training.checkpoint import remove_checkpoint_folder

        removed = []
        for folder in self.checkpoints():
            remove_checkpoint_folder(folder)
            removed.append(folder.name)
        for name in sorted(self.owned()):
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            removed.append(name)
        if self.is_clmkit():
            self.record([])  # forget the removed entries
        return removed

    def save_model(self, trainer: Any) -> list[str]:
        """``trainer.save_model`` into a temporary folder, then each file moved into this folder and recorded.

        A file of the same name that clmkit did not write is never replaced: that is an error before
        anything moves.
        """
        return self.write_with(trainer.save_model)

    def write_with(self, write: Callable[[str], Any]) -> list[str]:
        """``write(tmp)`` into a temporary folder here, then each entry moved in (replacing only clmkit's own
        entries) and recorded; returns the entries' names."""
        tmp = Path(tempfile.mkdtemp(prefix=".write-", dir=self.path))  # ours by construction: removed below
        try:
            write(str(tmp))
            names = sorted(p.name for p in tmp.iterdir())
            for name in names:
                apply_umask(tmp / name)
            clashes = sorted(set(names) & set(self.foreign()))
            if clashes:
                raise ConfigError(
                    f"writing {', '.join(clashes)} into {str(self.path)!r} would replace files clmkit did not "
                    "write. Move them away, or pass another --output_dir."
                )
            for name in names:
                target = self.path / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)  # clmkit's own entry: foreign ones were refused above
                os.replace(tmp / name, target)
            self.record(names)
            return names
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[OutputFolder]:
        """Hold an exclusive lock on the folder (created if needed) for one run; a second run is refused.

        The lock is an OS file lock (``fcntl.flock``), released on any exit of the process, so a
        killed run leaves no stale lock. A folder this call created and that holds nothing but the
        lock afterwards (a run that failed before writing) is removed again. Only the main process
        of a multi-process launch locks.
        """
        if not _main_process():
            yield self
            return
        try:
            self.path.mkdir(parents=True)
            created = True  # by this call: two runs racing never both believe it
        except FileExistsError:
            created = False
        except OSError as exc:
            raise ConfigError(
                f"cannot create output folder {str(self.path)!r} ({exc.strerror}). Pass a writable --output_dir."
            ) from None
        lock_path = self.path / LOCK
        handle = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the whole run
        try:
            _lock(handle, lock_path)  # refused: nothing of the folder is touched, it is the other run's
        except BaseException:
            handle.close()
            raise
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
            handle.flush()
            yield self
        finally:
            if created:
                self._clean_failed_start()  # still holding the lock: no other run is inside
            handle.close()

    def _clean_failed_start(self) -> None:
        """Remove the folder this run created when it holds nothing but the lock (the run wrote nothing)."""
        if self.path.is_dir() and {p.name for p in self.path.iterdir()} <= {LOCK}:
            (self.path / LOCK).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # a run that just opened a new lock file here keeps the folder
                self.path.rmdir()


def _lock(handle: Any, lock_path: Path) -> None:
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): runs are not locked against each other
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = json.loads(lock_path.read_text(encoding="utf-8"))
            who = f"process {holder['pid']} on {holder['host']}"
        except (OSError, ValueError, KeyError, TypeError):
            who = "another process"
        raise ConfigError(
            f"output folder {str(lock_path.parent)!r} is in use by another clmkit run ({who}). "
            "Wait for it to finish, or pass another --output_dir."
        ) from None


def check_overwritable(folder: Path, inputs: Sequence[str | Path | None]) -> None:
    """Refuse to overwrite the current directory, an ancestor of it, the home directory, or a run's input."""
    target = folder.expanduser().resolve()
    cwd = Path.cwd().resolve()
    protected = {Path.home().resolve(): "the home directory"}
    protected.update({p: "an ancestor of the current directory" for p in cwd.parents})
    protected[cwd] = "the current directory"
    if target in protected:
        raise ConfigError(
            f"--overwrite would replace files in {str(folder)!r}, {protected[target]}. "
            "Pass a folder of its own as --output_dir."
        )
    for item in inputs:
        if item is None:
            continue
        source = Path(item).expanduser().resolve()
        if target == source or target in source.parents:
            raise ConfigError(
                f"--overwrite would replace files in {str(folder)!r}, which holds the run's input {str(item)!r}. "
                "Pass another --output_dir."
            )


def _main_process() -> bool:
    """Whether this is the main process of a launch (``torchrun`` sets ``RANK``), the one that keeps the folder."""
    return os.environ.get("RANK", "0") == "0"
