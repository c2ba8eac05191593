"""ClmTrainingArguments: parsed by HfArgumentParser from flags, YAML and JSON, like TrainingArguments."""

from __future__ import annotations

import json

import pytest
import yaml
from transformers import HfArgumentParser

from clmkit import ClmTrainingArguments
from clmkit.errors import ConfigError

LOSS_KWARGS = {"keywords": ["plt", "fit"], "alpha": 2.0, "normalize": "course"}
EXPECTED = {
    "chunker": "overflow",
    "loss": "keytoken",
    "loss_kwargs": LOSS_KWARGS,
    "context_length": 256,
    "text_column": "text",
    "gradient_accumulation_steps": 8,
    "learning_rate": 5e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 1000,
    "weight_decay": 0.1,
    "chunked_loss": False,
}


def parser() -> HfArgumentParser:
    return HfArgumentParser(ClmTrainingArguments)


def check(args: ClmTrainingArguments) -> None:
    got = {key: getattr(args, key) for key in EXPECTED}
    got["lr_scheduler_type"] = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
    assert got == EXPECTED
    assert args.chunker_kwargs == {} and args.collator_kwargs == {}


def test_flags(tmp_path):
    flags = ["--output_dir", str(tmp_path), "--chunker", "overflow", "--loss", "keytoken"]
    flags += ["--loss_kwargs", json.dumps(LOSS_KWARGS), "--context_length", "256", "--text_column", "text"]
    flags += ["--gradient_accumulation_steps", "8", "--learning_rate", "5e-4", "--lr_scheduler_type", "cosine"]
    flags += ["--warmup_steps", "1000", "--weight_decay", "0.1", "--chunked_loss", "false"]
    (args,) = parser().parse_args_into_dataclasses(flags)
    check(args)


@pytest.mark.parametrize("kwargs_as", ["mapping", "json string"])
def test_yaml_file(tmp_path, kwargs_as):
    config = {**EXPECTED, "output_dir": str(tmp_path)}
    if kwargs_as == "json string":
        config["loss_kwargs"] = json.dumps(LOSS_KWARGS)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    (args,) = parser().parse_yaml_file(path)
    check(args)


def test_json_file(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({**EXPECTED, "output_dir": str(tmp_path)}))
    (args,) = parser().parse_json_file(path)
    check(args)


@pytest.mark.parametrize("value", ['{"alpha": 2.0', '["plt"]'])
def test_loss_kwargs_that_are_not_a_json_object(tmp_path, value):
    with pytest.raises(ConfigError, match="loss_kwargs"):
        parser().parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--loss_kwargs", value])
