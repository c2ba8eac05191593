"""The state ``ClmLoop`` keeps in a checkpoint beside accelerate's model and optimizer: the LR scheduler and
the RNG states, as JSON, so resuming reads no pickle (a pickle could run code). The data position is in the
checkpoint's manifest (``clmkit.data.order``)."""

from __future__ import annotations

import base64
import json
import logging
import pickle
import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from clmkit.training.checkpoint import RESUME_ELSEWHERE, CheckpointError

SCHEDULER_FILE = "scheduler_state.json"  # the loop's LR scheduler state
RNG_FILE = "rng_state_{}.json"  # the loop's RNG states, one file per process

logger = logging.getLogger(__name__)


def save_loop_state(accelerator: Any, folder: Path, scheduler: Any) -> None:
    """Model and optimizer through accelerate, the RNG states of this process and (main process) the scheduler
    as JSON; accelerate's RNG pickles, just written, are removed (the JSON replaces them)."""
    accelerator.save_state(str(folder))  # model (safetensors) and optimizer (read back with weights_only=True)
    save_json(folder / RNG_FILE.format(accelerator.process_index), rng_state(), "RNG state")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for pickled in folder.glob("random_states_*.pkl"):
            pickled.unlink()
        save_json(folder / SCHEDULER_FILE, scheduler.state_dict(), "LR scheduler state")


def load_loop_state(accelerator: Any, folder: Path, scheduler: Any) -> None:
    """Restore what ``save_loop_state`` wrote; files that are not clmkit's are a ``CheckpointError``.

    A process that did not exist when the checkpoint was made (resuming on more processes) takes process 0's
    RNG state; the data order does not depend on it (``clmkit.data.order``), only dropout does.
    """
    scheduler_state = load_json(folder / SCHEDULER_FILE)
    rng_file = folder / RNG_FILE.format(accelerator.process_index)
    if not rng_file.is_file():  # made by fewer processes (an elastic resume): this one starts from process 0's
        logger.info("%s has no RNG state of process %d; it takes process 0's", folder, accelerator.process_index)
        rng_file = folder / RNG_FILE.format(0)
    rng = load_json(rng_file)
    try:
        # model (safetensors) and optimizer (torch.load with weights_only=True: no code runs); no custom
        # objects are registered, and the RNG pickle accelerate would look for is not in clmkit's checkpoints
        accelerator.load_state(str(folder))
        scheduler.load_state_dict(scheduler_state)
        set_rng_state(rng)
    except (pickle.UnpicklingError, RuntimeError, ValueError, KeyError, TypeError, OSError) as error:
        raise CheckpointError(
            f"could not load checkpoint {folder}: {type(error).__name__}: {error}. Its files are not what "
            "clmkit wrote. Resume from another checkpoint-N folder."
        ) from error


def save_json(path: str | Path, state: Any, what: str) -> None:
    """``state`` as JSON (floats exactly: Python writes the shortest repr that reads back the same)."""
    try:
        text = json.dumps(state, indent=1, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"the {what} cannot be saved as JSON ({error}); clmkit does not write pickles into checkpoints. "
            "Use a transformers LR scheduler (lr_scheduler_type), or train with ClmTrainer."
        ) from error
    Path(path).write_text(text + "\n", encoding="utf-8")


def load_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(
            f"{path} is not the JSON clmkit writes ({error}). Nothing was loaded. {RESUME_ELSEWHERE}"
        ) from error


def _tensor_text(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _text_tensor(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def _device_module() -> Any:
    """The torch module of this machine's accelerator (``torch.cuda``, ...), or ``None``."""
    if not torch.accelerator.is_available():
        return None
    device = torch.accelerator.current_accelerator()
    return torch.get_device_module(device.type) if device is not None else None


def rng_state() -> dict[str, Any]:
    """Python's, NumPy's, torch's and the accelerator's RNG states, as JSON-ready values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = cast(tuple[str, Any, int, int, float], np.random.get_state())
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _tensor_text(torch.get_rng_state()),
    }
    module = _device_module()
    if module is not None:
        states = module.get_rng_state_all() if hasattr(module, "get_rng_state_all") else [module.get_rng_state()]
        state["device"] = [_tensor_text(s) for s in states]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states ``rng_state`` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_text_tensor(state["torch"]))
    module = _device_module()
    if module is not None and "device" in state:
        states = [_text_tensor(s) for s in state["device"]]
        if hasattr(module, "set_rng_state_all") and len(states) == module.device_count():
            module.set_rng_state_all(states)
        else:
            module.set_rng_state(states[0])
