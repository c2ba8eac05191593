"""Pushing a finished run to the Hugging Face Hub: the model folder, without checkpoints or unfinished saves."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import create_repo, upload_folder
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from clmkit.args import ClmTrainingArguments
from clmkit.training.checkpoint import DELETING_PREFIX, PARTIAL_PREFIX


def upload_output_folder(args: ClmTrainingArguments) -> None:
    """Upload ``args.output_dir`` to ``args.hub_model_id`` (default: the folder's name), checkpoints left out."""
    repo_id = args.hub_model_id or Path(str(args.output_dir)).absolute().name
    repo = create_repo(repo_id, token=args.hub_token, private=args.hub_private_repo, exist_ok=True)
    upload_folder(
        repo_id=repo.repo_id,
        folder_path=str(args.output_dir),
        commit_message="End of training",
        token=args.hub_token,
        ignore_patterns=[f"{PREFIX_CHECKPOINT_DIR}-*", f"{PARTIAL_PREFIX}*", f"{DELETING_PREFIX}*"],
    )
