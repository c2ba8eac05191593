"""Checkpoints that are checked before anything is loaded: complete, and made with this run's settings.

Both training paths write ``clmkit_checkpoint.json`` last into every ``checkpoint-N`` folder: the
data position, the settings an exact resume depends on (model config, data preparation, batch
layout), and a manifest of every file of the folder with its size. ``read_checkpoint`` checks the
manifest (a killed save, a copied or pruned folder) and the settings, and names every problem,
before the caller loads anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel
from transformers.trainer_utils import get_last_checkpoint

from clmkit.args import ClmTrainingArguments
from clmkit.errors import ClmkitError

STATE_FILE = "clmkit_checkpoint.json"
# model config keys that describe the software, not the model
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype")


class CheckpointError(ClmkitError):
    """A checkpoint is incomplete, or was made with other settings than the run resuming from it."""


def run_settings(
    model: PreTrainedModel, args: ClmTrainingArguments, tokenizer: Any, num_processes: int
) -> dict[str, dict[str, Any]]:
    """What a run must share with a checkpoint to resume it exactly: model, data preparation, and data order."""
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
    order = {
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "num_processes": num_processes,
        "seed": args.seed,
        "data_seed": args.data_seed,
        "train_sampling_strategy": args.train_sampling_strategy,
    }
    return json.loads(json.dumps({"model": config, "data": data, "data order": order}, default=str))


def write_checkpoint_state(folder: Path, position: dict[str, int], settings: dict[str, dict[str, Any]]) -> None:
    """Write ``clmkit_checkpoint.json`` last: position, settings, and the manifest of the files already there."""
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    state = {"position": position, "settings": settings, "files": files}
    (folder / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_checkpoint(folder: str | Path, settings: dict[str, dict[str, Any]]) -> dict[str, int]:
    """The data position saved in ``folder``, after checking that it is complete and made with ``settings``.

    Raises ``CheckpointError`` naming every missing or truncated file, or every setting that differs.
    """
    folder = Path(folder)
    state_file = folder / STATE_FILE
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist. Pass a checkpoint-N folder of a loop run.")
    if not state_file.is_file():
        raise CheckpointError(
            f"{folder} is not a complete clmkit checkpoint: {STATE_FILE} is missing (it is written last: the "
            "save did not finish, or another tool made the folder). Nothing was loaded. Resume from another "
            "checkpoint-N folder."
        )
    saved = json.loads(state_file.read_text(encoding="utf-8"))
    missing = sorted(name for name in saved["files"] if not (folder / name).is_file())
    truncated = sorted(
        f"{name} ({(folder / name).stat().st_size} of {size} bytes)"
        for name, size in saved["files"].items()
        if name not in missing and (folder / name).stat().st_size != size
    )
    if missing or truncated:
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"truncated {', '.join(truncated)}"] if truncated else []
        )
        raise CheckpointError(
            f"checkpoint {folder} is incomplete: {'; '.join(problems)}. Nothing was loaded. "
            "Resume from another checkpoint-N folder, or copy the checkpoint again."
        )
    differences = setting_differences(saved["settings"], settings)
    if differences:
        raise CheckpointError(
            f"checkpoint {folder} was made with other settings than this run: {'; '.join(differences)}. "
            "Nothing was loaded. Resume with the checkpoint's settings, or start a new run "
            "(a different output_dir, no resume_from_checkpoint)."
        )
    return saved["position"]


def find_checkpoint(checkpoint: str | bool, output_dir: str) -> str:
    """``checkpoint`` itself, or for ``True`` the last ``checkpoint-N`` in ``output_dir``."""
    if checkpoint is not True:
        return str(checkpoint)
    last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
    if last is None:
        raise CheckpointError(f"resume_from_checkpoint=True, but {output_dir} holds no checkpoint-N folder.")
    return last


def setting_differences(saved: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]]) -> list[str]:
    """``"<group> <key>: <saved> in the checkpoint, <current> now"`` for every setting that differs."""
    differences = []
    for group in sorted(set(saved) | set(current)):
        old, new = saved.get(group, {}), current.get(group, {})
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                differences.append(f"{group} {key}: {old.get(key)!r} in the checkpoint, {new.get(key)!r} now")
    return differences
