"""Checkpoints that are never lost, never half-read, and never run code.

Both training paths save a checkpoint the same way (``CheckpointWriter``): every file is written into
``<output_dir>/.partial-checkpoint-N``; then ``clmkit_checkpoint.json`` is written last (the data position,
the settings an exact resume depends on, and a manifest of every file of the folder with its size and
SHA-256); the files are flushed to disk; the folder is renamed to ``checkpoint-N``; and only then are older
checkpoints rotated away (``rotate_checkpoints``: clmkit's own checkpoints only, never the newest). A run
killed at any moment therefore leaves its previous checkpoint, or the new one, complete.

Before anything is loaded from a checkpoint, ``verify_checkpoint`` checks it against its manifest: a
missing, truncated or changed file (same size, other content) and a file the save did not write are all
refused. ``read_checkpoint`` also compares the settings. ``newest_complete_checkpoint`` is what
``resume_from_checkpoint=True`` (and the CLI's ``last``) resumes from: the newest complete checkpoint,
naming the incomplete ones it skipped.

clmkit writes what it keeps itself (the loop's LR scheduler and RNG states) as JSON, which cannot run
code when read; what transformers and accelerate write as pickles (``optimizer.pt``, ``rng_state.pth``,
``optimizer.bin``) they read back with ``torch.load(weights_only=True)``, which cannot run code either.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from clmkit.args import ClmTrainingArguments
from clmkit.errors import ClmkitError
from clmkit.outputs import apply_umask

logger = logging.getLogger(__name__)

STATE_FILE = "clmkit_checkpoint.json"
FORMAT = "clmkit-checkpoint"
VERSION = 3  # 1: sizes only (clmkit 0.2); 2: sizes and SHA-256; 3: and the global order's data position
PARTIAL_PREFIX = ".partial-"  # a save in progress, or one a kill interrupted
DELETING_PREFIX = ".deleting-"  # a checkpoint being removed (rotation, or a step saved again)
OWNER_FILE = ".clmkit-checkpoint"  # written first into every checkpoint folder clmkit makes, removed last
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
# model config keys that describe the software, not the model
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype")
RESUME_ELSEWHERE = (
    "Resume from another checkpoint-N folder (--resume_from_checkpoint last takes the newest complete one), "
    "or copy the checkpoint again."
)


class CheckpointError(ClmkitError):
    """A checkpoint is incomplete, damaged, or was made with other settings than the run resuming from it."""


def fault_point(stage: str) -> None:
    """A named stage of a checkpoint save. It does nothing: tests replace it to stop a save there, as a kill would."""


# ---- settings -------------------------------------------------------------------------------------


def run_settings(
    model: PreTrainedModel, args: ClmTrainingArguments, tokenizer: Any, num_processes: int
) -> dict[str, dict[str, Any]]:
    """What a run must share with a checkpoint to resume it exactly: model, data preparation, data order and the
    optimizer whose state it holds."""
    config = {k: v for k, v in model.config.to_diff_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    data = {
        "chunker": args.chunker,
        "chunker_kwargs": args.chunker_kwargs,
        "filters": args.filters,
        "context_length": args.context_length,
        "text_column": args.text_column,
        "collator": args.collator,
        "collator_kwargs": args.collator_kwargs,
        "tokenizer_size": len(tokenizer),
    }
    order = {  # the global order of examples depends on these, not on how a step is split (clmkit.data.order)
        "global_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * num_processes,
        "seed": args.seed,
        "data_seed": args.data_seed,
        "train_sampling_strategy": args.train_sampling_strategy,
    }
    optimizer = {"optimizer": args.optimizer, "optimizer_kwargs": args.optimizer_kwargs}  # the state it loads
    return json.loads(
        json.dumps({"model": config, "data": data, "data order": order, "optimizer": optimizer}, default=str)
    )


def setting_differences(saved: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]]) -> list[str]:
    """``"<group> <key>: <saved> in the checkpoint, <current> now"`` for every setting that differs."""
    differences = []
    for group in sorted(set(saved) | set(current)):
        old, new = saved.get(group, {}), current.get(group, {})
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                differences.append(f"{group} {key}: {old.get(key)!r} in the checkpoint, {new.get(key)!r} now")
    return differences


# ---- the manifest -----------------------------------------------------------------------------------


def _digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder
        pass
    finally:
        os.close(fd)


def _files(folder: Path) -> list[Path]:
    """Every file under ``folder`` except the manifest, sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p != folder / STATE_FILE)


def write_checkpoint_state(folder: Path, position: dict[str, Any], settings: dict[str, dict[str, Any]]) -> None:
    """Flush every file of ``folder`` to disk, then write ``clmkit_checkpoint.json`` last: position, settings,
    and the manifest (size and SHA-256 of each file)."""
    files = {}
    for path in _files(folder):
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
            os.fsync(f.fileno())
        files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": digest}
    state = {"format": FORMAT, "version": VERSION, "position": position, "settings": settings, "files": files}
    tmp = folder / f".{STATE_FILE}.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        f.write(json.dumps(state, indent=2, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / STATE_FILE)
    for sub in {p.parent for p in folder.rglob("*")} | {folder}:
        _fsync(sub)


def _load_manifest(folder: Path) -> dict[str, Any] | None:
    """The parsed manifest if it is one clmkit writes (any version), else ``None``."""
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(state, dict) or not {"position", "settings", "files"} <= set(state):
        return None
    if not isinstance(state["files"], dict) or not isinstance(state["position"], dict):
        return None
    return state


def is_clmkit_checkpoint(folder: str | Path) -> bool:
    """Whether ``folder`` holds a manifest that clmkit wrote: the only folders clmkit ever deletes or replaces."""
    folder = Path(folder)
    return folder.is_dir() and (folder / STATE_FILE).is_file() and _load_manifest(folder) is not None


def is_owned_checkpoint_folder(folder: str | Path) -> bool:
    """Whether clmkit made ``folder``: it holds clmkit's owner file (a partial, finished or half-deleted checkpoint)
    or a complete manifest (a checkpoint of an earlier clmkit). Only such folders are ever deleted."""
    folder = Path(folder)
    return (
        folder.is_dir()
        and not folder.is_symlink()
        and ((folder / OWNER_FILE).is_file() or is_clmkit_checkpoint(folder))
    )


def remove_checkpoint_folder(folder: Path) -> None:
    """Delete a checkpoint folder clmkit made, its owner file last (a kill midway leaves a folder still known as
    clmkit's); a folder of that name that clmkit did not make is a ``CheckpointError`` and stays untouched."""
    if not folder.exists() and not folder.is_symlink():
        return
    if not is_owned_checkpoint_folder(folder):
        raise CheckpointError(
            f"{folder} exists and clmkit did not write it (no {OWNER_FILE} or {STATE_FILE} in it), so clmkit will not "
            "delete or replace it. Move it out of the output folder, or train into another output_dir."
        )
    for entry in folder.iterdir():
        if entry.name == OWNER_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (folder / OWNER_FILE).unlink(missing_ok=True)
    folder.rmdir()


# fingerprint (name, size, mtime of every file) -> manifest, for folders already verified in this process:
# resolving ``last`` and then resuming hashes a checkpoint once, not twice
_verified: dict[str, tuple[tuple[tuple[str, int, int], ...], dict[str, Any]]] = {}


def _fingerprint(folder: Path) -> tuple[tuple[str, int, int], ...]:
    return tuple(
        (p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    )


def checkpoint_problems(folder: str | Path) -> tuple[list[str], dict[str, Any] | None]:
    """What is wrong with ``folder`` as a complete clmkit checkpoint (nothing: ``[]``), and its manifest."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"checkpoint folder {folder} does not exist"], None
    if not (folder / STATE_FILE).is_file():
        return [
            f"{STATE_FILE} is missing (it is written last: the save did not finish, or another tool made the folder)"
        ], None
    state = _load_manifest(folder)
    if state is None:
        return [f"{STATE_FILE} is damaged or not clmkit's (not the JSON manifest clmkit writes)"], None
    key = str(folder.resolve())
    fingerprint = _fingerprint(folder)
    if key in _verified and _verified[key][0] == fingerprint:
        return [], _verified[key][1]
    files: dict[str, Any] = state["files"]
    if state.get("format") != FORMAT or state.get("version") != VERSION:
        return [
            f"it was written by an older clmkit (manifest version {state.get('version', 1)}; version {VERSION} "
            "checkpoints hold content hashes and the data position of the global order, which it lacks)"
        ], None
    unsafe = sorted(n for n in files if not isinstance(n, str) or Path(n).is_absolute() or ".." in Path(n).parts)
    if unsafe:
        return [f"its manifest names files outside the folder: {', '.join(map(str, unsafe))}"], None
    missing, truncated, changed = [], [], []
    for name, entry in sorted(files.items()):
        path = folder / name
        if not isinstance(entry, dict) or not {"size", "sha256"} <= set(entry):
            changed.append(f"{name} (no size and hash in the manifest)")
        elif not path.is_file():
            missing.append(name)
        elif path.stat().st_size != entry["size"]:
            truncated.append(f"{name} ({path.stat().st_size} of {entry['size']} bytes)")
        elif _digest(path) != entry["sha256"]:
            changed.append(f"{name} (same size, other content)")
    unexpected = [n for n in (p.relative_to(folder).as_posix() for p in _files(folder)) if n not in files]
    problems = (
        ([f"missing {', '.join(missing)}"] if missing else [])
        + ([f"truncated {', '.join(truncated)}"] if truncated else [])
        + ([f"changed {', '.join(changed)}"] if changed else [])
        + ([f"unexpected {', '.join(unexpected)} (not written by the save)"] if unexpected else [])
    )
    if problems:
        return problems, None
    _verified[key] = (fingerprint, state)
    return [], state


def verify_checkpoint(folder: str | Path) -> dict[str, Any]:
    """The manifest of ``folder``, after checking every file against it; reads nothing else.

    Raises ``CheckpointError`` naming every missing, truncated, changed or unexpected file.
    """
    folder = Path(folder)
    problems, state = checkpoint_problems(folder)
    if state is not None:
        return state
    if not folder.is_dir():
        raise CheckpointError(
            f"checkpoint folder {folder} does not exist. Nothing was loaded. Pass a checkpoint-N folder, or resume "
            "from the newest complete one (resume_from_checkpoint=True, or --resume_from_checkpoint last)."
        )
    if not (folder / STATE_FILE).is_file():
        raise CheckpointError(
            f"{folder} is not a complete clmkit checkpoint: {problems[0]}. Nothing was loaded. {RESUME_ELSEWHERE}"
        )
    if "older clmkit" in problems[0]:
        raise CheckpointError(
            f"checkpoint {folder} cannot be checked: {problems[0]}. Nothing was loaded. Resume it with the clmkit "
            "version that wrote it, or start a new run (no resume_from_checkpoint)."
        )
    raise CheckpointError(
        f"checkpoint {folder} is incomplete or damaged: {'; '.join(problems)}. Nothing was loaded. {RESUME_ELSEWHERE}"
    )


def read_checkpoint(folder: str | Path, settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The data position saved in ``folder``, after checking that it is complete, undamaged and made with ``settings``.

    Raises ``CheckpointError`` naming every missing, truncated, changed or unexpected file, or every setting
    that differs. Nothing but the folder's file listing, its files' bytes and its manifest is read.
    """
    saved = verify_checkpoint(folder)
    differences = setting_differences(saved["settings"], settings)
    if any("global_batch_size" in d for d in differences):
        differences.append(
            "the order of the data depends on the global batch size (per_device_train_batch_size x "
            "gradient_accumulation_steps x processes), and any split of the same global batch resumes it"
        )
    if differences:
        raise CheckpointError(
            f"checkpoint {folder} was made with other settings than this run: {'; '.join(differences)}. "
            "Nothing was loaded. Resume with the checkpoint's settings, or start a new run "
            "(a different output_dir, no resume_from_checkpoint)."
        )
    return saved["position"]


# ---- which checkpoint to resume from --------------------------------------------------------------


def _steps(output_dir: Path, prefix: str = "") -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``<prefix>checkpoint-N`` folder in ``output_dir``, newest first."""
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        match = _CHECKPOINT_NAME.match(path.name[len(prefix) :]) if path.name.startswith(prefix) else None
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def newest_complete_checkpoint(output_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The newest ``checkpoint-N`` folder of ``output_dir`` that is complete and undamaged (``None``: none is),
    and ``"<name>: <reason>"`` for each newer folder skipped on the way (unfinished saves included).

    Each candidate is checked against its manifest (sizes and hashes) before it is chosen; nothing is loaded.
    """
    output_dir = Path(output_dir)
    skipped: list[str] = []
    chosen: Path | None = None
    chosen_step = -1
    for step, folder in _steps(output_dir):
        problems, _ = checkpoint_problems(folder)
        if not problems:
            chosen, chosen_step = folder, step
            break
        skipped.append(f"{folder.name}: {'; '.join(problems)}")
    unfinished = [
        f"{folder.name}: an unfinished save (the run stopped while writing it)"
        for step, folder in _steps(output_dir, PARTIAL_PREFIX)
        if step > chosen_step
    ]
    return chosen, unfinished + skipped


def resolve_resume(value: str | Path | bool, output_dir: str | Path) -> tuple[Path, list[str]]:
    """The checkpoint a resume starts from, checked complete and undamaged, and the folders skipped to find it.

    ``value`` ``True`` or ``"last"``: the newest complete checkpoint of ``output_dir`` (``newest_complete_checkpoint``);
    else the folder ``value`` itself. Raises ``CheckpointError`` (cause and fix) if there is none or it is
    incomplete or damaged. Reads only file listings, file bytes and manifests; writes nothing.
    """
    if value is True or value == "last":
        chosen, skipped = newest_complete_checkpoint(output_dir)
        if chosen is None:
            what = "resume_from_checkpoint=True" if value is True else "--resume_from_checkpoint last"
            detail = f" (skipped {'; '.join(skipped)})" if skipped else ""
            raise CheckpointError(
                f"{what}, but {output_dir} holds no checkpoint-N folder that is complete{detail}. "
                "Start without resuming, or pass a checkpoint folder."
            )
        for reason in skipped:
            logger.warning("skipped checkpoint %s", reason)
        return chosen, skipped
    folder = Path(str(value))
    verify_checkpoint(folder)
    return folder, []


# ---- writing: a partial folder, completed, renamed, then rotation ---------------------------------------


class CheckpointWriter:
    """One checkpoint save, shared by both paths: ``begin()`` gives the folder to write into (on every process),
    ``commit()`` completes it (manifest last, flushed) and renames it to ``checkpoint-N``; ``abort()`` removes
    the unfinished folder after an error. ``barrier`` makes every process wait for the others.
    """

    def __init__(
        self, output_dir: str | Path, step: int, is_main: bool, barrier: Callable[[], Any] = lambda: None
    ) -> None:
        self.final = Path(output_dir) / f"checkpoint-{step}"
        self.partial = self.final.with_name(PARTIAL_PREFIX + self.final.name)
        self.is_main, self.barrier = is_main, barrier

    def begin(self) -> Path:
        if self.is_main:
            if self.final.exists() and not is_clmkit_checkpoint(self.final):
                raise CheckpointError(
                    f"{self.final} exists and is not a clmkit checkpoint, so clmkit will not replace it with the "
                    "checkpoint of this step. Move it out of the output folder, or train into another output_dir."
                )
            remove_checkpoint_folder(self.partial)  # a save of this step a kill interrupted
            self.partial.mkdir(parents=True)
            (self.partial / OWNER_FILE).touch()
        fault_point("partial folder made")
        self.barrier()
        return self.partial

    def reached(self, stage: str) -> None:
        fault_point(stage)

    def commit(self, position: dict[str, Any], settings: dict[str, dict[str, Any]]) -> Path:
        self.barrier()  # every process has written its files
        if self.is_main:
            fault_point("files written")
            apply_umask(self.partial)  # readable as the user's umask says, like every file clmkit writes
            write_checkpoint_state(self.partial, position, settings)
            fault_point("manifest written")
            old = None
            if self.final.exists():  # this step saved again: clmkit's (checked in begin), replaced
                old = self.final.with_name(DELETING_PREFIX + self.final.name)
                remove_checkpoint_folder(old)
                os.replace(self.final, old)
                fault_point("previous copy moved aside")
            os.replace(self.partial, self.final)
            _fsync(self.final.parent)
            fault_point("renamed")
            if old is not None:
                remove_checkpoint_folder(old)
        self.barrier()
        return self.final

    def abort(self) -> None:
        if self.is_main and is_owned_checkpoint_folder(self.partial):
            remove_checkpoint_folder(self.partial)


def rotate_checkpoints(
    output_dir: str | Path, save_total_limit: int | None, keep: Iterable[str | Path | None] = ()
) -> list[Path]:
    """Delete the oldest of clmkit's checkpoints beyond ``save_total_limit``; return the deleted folders.

    Only folders holding clmkit's manifest count and are deleted (never a user's ``checkpoint-old`` or
    ``checkpoint-7`` without one); the newest by step and the folders in ``keep`` (the one just written, the
    best one) are never deleted. Each is renamed to ``.deleting-checkpoint-N`` before it is removed, so a kill
    midway never leaves a half-deleted ``checkpoint-N``. Leftover ``.deleting-`` folders clmkit made are removed
    too.
    """
    output_dir = Path(output_dir)
    deleted: list[Path] = []
    if save_total_limit is not None and save_total_limit > 0:
        ours = [folder for _, folder in reversed(_steps(output_dir)) if is_clmkit_checkpoint(folder)]  # oldest first
        protected = {Path(k).resolve() for k in keep if k} | ({ours[-1].resolve()} if ours else set())
        to_keep = max(save_total_limit, len(protected & {f.resolve() for f in ours}))
        remaining = len(ours)
        for folder in ours:
            if remaining <= to_keep:
                break
            if folder.resolve() in protected:
                continue
            doomed = folder.with_name(DELETING_PREFIX + folder.name)
            remove_checkpoint_folder(doomed)
            os.replace(folder, doomed)
            fault_point("rotating")
            remove_checkpoint_folder(doomed)
            deleted.append(folder)
            remaining -= 1
    for _, leftover in _steps(output_dir, DELETING_PREFIX):
        if is_owned_checkpoint_folder(leftover):  # a user's folder of that name stays
            remove_checkpoint_folder(leftover)
    return deleted
