"""Output folders and the disk: a folder checked writable before a run starts, and the OS errors of writing
(disk full, read-only file system, permission denied) turned into one line naming the path and the fix."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from clmkit.errors import ClmkitError

MIN_FREE_BYTES = 1 << 20  # below this a run cannot even write its arguments file
STORAGE_ERRNOS = frozenset(
    code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS, errno.EACCES, errno.EPERM) if code
)


class StorageError(ClmkitError, OSError):
    """A folder cannot be written: missing permission, a read-only file system, or a full disk."""


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def check_writable(folder: str | Path, option: str = "--output_dir") -> None:
    """Refuse an output folder that cannot be created or written, or whose disk is full, before any work.

    Probes the folder (or, when it does not exist yet, its nearest existing parent) by creating and
    removing a temporary file: nothing is left behind, and no folder is created.
    """
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise StorageError(f"output folder {str(folder)!r} is a file. Pass another {option}.")
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise StorageError(
            f"cannot create output folder {str(folder)!r}: {str(base)!r} is a file, not a folder. "
            f"Pass another {option}."
        )
    try:
        handle, probe = tempfile.mkstemp(prefix=".clmkit-write-test-", dir=base)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise storage_error(exc, base, option) or StorageError(
            f"cannot write in {str(base)!r} ({exc.strerror}). Pass a writable {option}."
        ) from None
    free = shutil.disk_usage(base).free
    if free < MIN_FREE_BYTES:
        raise StorageError(
            f"the disk of output folder {str(folder)!r} is full ({free:,} bytes free). Free space there (old "
            f"checkpoint-* folders, ~/.cache/huggingface/datasets), or pass an {option} on another disk."
        )


def storage_error(exc: OSError, folder: str | Path, option: str = "--output_dir") -> StorageError | None:
    """A one-line ``StorageError`` for an OSError of writing (disk full, read-only, permission denied) naming
    the file (``exc.filename``, else ``folder``) and the fix; ``None`` for any other OSError."""
    if exc.errno not in STORAGE_ERRNOS:
        return None
    where = str(exc.filename or folder)
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        try:
            free = f" ({shutil.disk_usage(_existing_ancestor(Path(where))).free:,} bytes free)"
        except OSError:
            free = ""
        return StorageError(
            f"no space left on the disk while writing {where!r}{free}. Free space there (old checkpoint-* folders, "
            f"~/.cache/huggingface/datasets; save_total_limit keeps fewer checkpoints), or pass an {option} on "
            "another disk."
        )
    if exc.errno == errno.EROFS:
        return StorageError(f"{where!r} is on a read-only file system. Pass an {option} on a writable disk.")
    return StorageError(
        f"permission denied writing {where!r}. Make it writable (chmod / chown), or pass another {option}."
    )


@contextlib.contextmanager
def storage_errors(folder: str | Path, option: str = "--output_dir") -> Iterator[None]:
    """Turn disk-full, read-only and permission OSErrors raised inside into a one-line ``StorageError``."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        error = storage_error(exc, folder, option)
        if error is None:
            raise
        raise error from exc
