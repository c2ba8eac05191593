"""Bad options are refused before the tokenizer trains or any data is read: exit code 2 (or the typed error
from Python), one line naming the cause and the fix, no traceback, nothing written outside the output folder."""

from __future__ import annotations

import errno
import json
import math
import shutil
import tempfile
from collections import namedtuple

import pytest
import torch
from cli_flags import TINY
from support.bad_inputs import assert_refused, assert_unchanged, run_cli, snapshot

from clmkit import ClmTrainingArguments
from clmkit.errors import ClmkitError, ConfigError
from clmkit.generation import check_prompts, check_sampling
from clmkit.models import model_config
from clmkit.paths import StorageError, check_writable, storage_errors

NO_CUDA = not torch.cuda.is_available()
KEYTOKEN = ["--loss", "keytoken", "--loss_kwargs"]

# (id, extra flags of `clmkit train`, words the error line must hold)
TRAIN_CASES = [
    ("max_steps 0", ["--max_steps", "0"], ["max_steps", "positive", "--max_steps"]),
    ("max_steps -3", ["--max_steps", "-3"], ["max_steps", "-3", "-1"]),
    ("train batch 0", ["--per_device_train_batch_size", "0"], ["per_device_train_batch_size", "at least 1"]),
    ("eval batch -1", ["--per_device_eval_batch_size", "-1"], ["per_device_eval_batch_size", "at least 1"]),
    ("accumulation 0", ["--gradient_accumulation_steps", "0"], ["gradient_accumulation_steps", "at least 1"]),
    ("lr nan", ["--learning_rate", "nan"], ["learning_rate", "finite", "--learning_rate"]),
    ("lr inf", ["--learning_rate", "inf"], ["learning_rate", "finite"]),
    ("lr 0", ["--learning_rate", "0"], ["learning_rate", "above 0"]),
    ("lr negative", ["--learning_rate", "-0.001"], ["learning_rate", "above 0"]),
    ("epochs 0", ["--num_train_epochs", "0"], ["num_train_epochs", "above 0"]),
    ("max_loss 0", ["--max_loss", "0"], ["max_loss", "above 0"]),
    ("context 1", ["--context_length", "1"], ["context_length", "at least 2"]),
    (
        "hidden % heads",
        ["--config_overrides", "hidden_size=100,num_attention_heads=3"],
        ["hidden size 100", "3 attention", "multiple"],
    ),
    ("layers 0", ["--config_overrides", "num_hidden_layers=0"], ["num_hidden_layers", "at least 1"]),
    ("layers text", ["--config_overrides", "num_hidden_layers=abc"], ["num_hidden_layers", "whole number"]),
    ("heads float", ["--config_overrides", "num_attention_heads=2.5"], ["num_attention_heads", "whole number"]),
    ("odd rotary heads", ["--config_overrides", "hidden_size=50"], ["25 dimensions", "odd", "even"]),
    ("kv heads", ["--config_overrides", "num_key_value_heads=3"], ["2 attention heads", "3 key/value heads"]),
    ("dropout 1.5", ["--config_overrides", "attention_dropout=1.5"], ["attention_dropout", "[0, 1)"]),
    ("positions < context", ["--config_overrides", "max_position_embeddings=32"], ["32 positions", "context_length"]),
    ("gpt2 field", ["--config_overrides", "n_layer=1"], ["n_layer", "Qwen3Config does not have"]),
    (
        "gpt2 n_embd % n_head",
        ["--architecture", "gpt2", "--config_overrides", "n_embd=100,n_head=3"],
        ["hidden size 100"],
    ),
    ("gpt2 dropout", ["--architecture", "gpt2", "--config_overrides", "resid_pdrop=1.5"], ["resid_pdrop", "[0, 1)"]),
    ("preset", ["--model_preset", "huge"], ["preset", "huge", "tiny", "base"]),
    ("architecture", ["--architecture", "mamba"], ["architecture", "mamba", "llama", "qwen3"]),
    ("optimizer", ["--optimizer", "lion"], ["unknown optimizer", "lion", "muon"]),
    ("adamw kwarg", ["--optimizer", "adamw", "--optimizer_kwargs", '{"beta": 1}'], ["optimizer 'adamw'", "beta"]),
    ("muon kwarg", ["--optimizer_kwargs", '{"beta": 1}'], ["optimizer 'muon'", "beta", "muon_lr", "optimizer_kwargs"]),
    ("muon dtype", ["--optimizer", "muon", "--optimizer_kwargs", '{"ns_dtype": "fp8"}'], ["ns_dtype", "fp8"]),
    ("muon momentum", ["--optimizer", "muon", "--optimizer_kwargs", '{"momentum": 1.5}'], ["momentum", "1.5"]),
    ("muon lr", ["--optimizer", "muon", "--optimizer_kwargs", '{"muon_lr": "fast"}'], ["muon_lr", "a number"]),
    ("decay fraction 0", ["--lr_decay_fraction", "0"], ["lr_decay_fraction", "(0, 1]"]),
    ("decay fraction 2", ["--lr_decay_fraction", "2"], ["lr_decay_fraction", "(0, 1]"]),
    ("vocab 100", ["--vocab_size", "100"], ["vocab_size", "257", "byte"]),
    ("vocab 256", ["--vocab_size", "256"], ["vocab_size", "257"]),
    ("new tokens = context", ["--max_new_tokens", "64"], ["max_new_tokens 64", "context of 64", "at most 63"]),
    ("new tokens 0", ["--max_new_tokens", "0"], ["max_new_tokens", "at least 1"]),
    ("empty prompt", ["--prompts", ""], ["prompt", "empty"]),
    ("blank prompt", ["--prompts", "def f():", "   "], ["prompt", "empty"]),
    ("keywords str", [*KEYTOKEN, '{"keywords": "def"}'], ["keywords", "a list of strings", "'def'", "loss_kwargs"]),
    ("alpha str", [*KEYTOKEN, '{"alpha": "high"}'], ["alpha", "a number", "'high'"]),
    ("alpha nan", [*KEYTOKEN, '{"alpha": NaN}'], ["alpha", "a number"]),
    ("normalize", [*KEYTOKEN, '{"normalize": "mean"}'], ["normalize", "'weights'", "'course'"]),
    ("keytoken_ids", [*KEYTOKEN, '{"keytoken_ids": [1, "x"]}'], ["keytoken_ids", "whole numbers"]),
    ("unknown kwarg", ["--loss_kwargs", '{"beta": 1}'], ["beta", "does not take", "loss_kwargs"]),
    ("unknown loss", ["--loss", "nope"], ["unknown loss", "nope", "cross_entropy"]),
    ("pad multiple", ["--collator_kwargs", '{"pad_to_multiple_of": "8"}'], ["pad_to_multiple_of", "collator_kwargs"]),
    ("chunker kwarg", ["--chunker_kwargs", '{"size": 3}'], ["size", "does not take", "chunker_kwargs"]),
    (
        "filter int",
        ["--filters", '[{"code_quality": {"max_line_length": "long"}}]'],
        ["max_line_length", "whole number", "filters"],
    ),
    ("filter words", ["--filters", '[{"keywords": {"words": 5}}]'], ["words", "list of strings", "filters"]),
    ("filter no words", ["--filters", '[{"keywords": {"words": []}}]'], ["words", "at least one", "filters"]),
    ("split 0", ["--valid_split_percentage", "0"], ["valid_split_percentage", "between 0 and 100"]),
    ("split 100", ["--valid_split_percentage", "100"], ["valid_split_percentage", "between 0 and 100"]),
    ("extensions", ["--extensions", ","], ["extensions", "no extension"]),
    ("periodic eval", ["--periodic_eval_examples", "-1"], ["periodic_eval_examples", "0"]),
    pytest.param(
        "fp16 on cpu",
        ["--fp16"],
        ["fp16", "cpu", "--bf16", "fp32"],
        marks=pytest.mark.skipif(not NO_CUDA, reason="fp16 is fine on a GPU"),
        id="fp16 on cpu",
    ),
]


@pytest.fixture
def workspace(tmp_path, corpus_dir):
    """A copy of the corpus and a user's file; every case must leave both untouched."""
    shutil.copytree(corpus_dir, tmp_path / "corpus")
    (tmp_path / "notes.txt").write_text("mine")
    return tmp_path


def refuse(workspace, argv, words, out=None):
    out = out or workspace / "out"
    before = snapshot(workspace, skip=[out])
    line = assert_refused(run_cli(argv), *words)
    assert_unchanged(before, snapshot(workspace, skip=[out]))
    assert not (out / "tokenizer.json").exists()  # refused before the tokenizer trained
    return line


def _id(case):
    return case[0]


@pytest.mark.parametrize(("name", "extra", "words"), TRAIN_CASES, ids=[_id(c) for c in TRAIN_CASES[:-1]] + [None])
def test_train_refuses_bad_options_before_any_work(workspace, name, extra, words):
    out = workspace / "out"
    argv = ["train", "--dataset", str(workspace / "corpus"), *TINY, "--output_dir", str(out), *extra]
    refuse(workspace, argv, words)
    assert not out.exists() or not any(out.iterdir())


def test_bad_option_in_a_config_file(workspace):
    config = workspace / "run.yaml"
    config.write_text("learning_rate: .nan\nmax_steps: 10\n")
    argv = ["train", "--config", str(config), "--dataset", str(workspace / "corpus"), *TINY]
    refuse(workspace, [*argv, "--output_dir", str(workspace / "out")], ["learning_rate", "finite"])


# ---- the output folder -------------------------------------------------------------------------------

OsFault = namedtuple("OsFault", "code words")
OS_FAULTS = {
    "read-only": OsFault(errno.EROFS, ["read-only", "--output_dir"]),
    "permission": OsFault(errno.EACCES, ["permission denied", "chmod", "--output_dir"]),
}


@pytest.mark.parametrize("fault", list(OS_FAULTS))
def test_unwritable_output_folder_is_refused_up_front(workspace, monkeypatch, fault):
    code, words = OS_FAULTS[fault]

    def refuse_to_write(*args, **kwargs):
        raise OSError(code, "simulated", str(workspace))

    monkeypatch.setattr(tempfile, "mkstemp", refuse_to_write)
    argv = ["train", "--dataset", str(workspace / "corpus"), *TINY, "--output_dir", str(workspace / "out")]
    line = refuse(workspace, argv, [*words, str(workspace)])
    assert "Traceback" not in line


def test_full_disk_is_refused_up_front(workspace, monkeypatch):
    usage = shutil.disk_usage(workspace)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=4096))
    argv = ["train", "--dataset", str(workspace / "corpus"), *TINY, "--output_dir", str(workspace / "out")]
    refuse(workspace, argv, ["disk", "full", "4,096 bytes free", "free space", "checkpoint"])


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_output_folder_that_is_a_file(workspace, where):
    target = workspace / "notes.txt"
    out = target if where == "a file" else target / "sub"
    argv = ["train", "--dataset", str(workspace / "corpus"), *TINY, "--output_dir", str(out)]
    refuse(workspace, argv, ["notes.txt", "is a file", "--output_dir"], out=workspace / "none")


# ---- clmkit prepare -----------------------------------------------------------------------------------

PREPARE_CASES = [
    ("vocab", ["--vocab_size", "10"], ["vocab_size", "257"]),
    ("context", ["--context_length", "1"], ["context_length", "at least 2"]),
    ("split", ["--valid_split_percentage", "-5"], ["valid_split_percentage"]),
    ("filters", ["--filters", '[{"code_quality": {"scan_lines": -1}}]'], ["scan_lines", "0 or more"]),
]


@pytest.mark.parametrize(("name", "extra", "words"), PREPARE_CASES, ids=[c[0] for c in PREPARE_CASES])
def test_prepare_refuses_bad_options(workspace, name, extra, words):
    argv = ["prepare", "--dataset", str(workspace / "corpus"), "--output_dir", str(workspace / "out"), *extra]
    refuse(workspace, argv, words)


def test_prepare_into_a_file(workspace):
    argv = ["prepare", "--dataset", str(workspace / "corpus"), "--output_dir", str(workspace / "notes.txt")]
    refuse(workspace, argv, ["is a file"], out=workspace / "none")


# ---- the same checks from Python -----------------------------------------------------------------------

ARGS_CASES = [
    ({"max_steps": 0}, "max_steps"),
    ({"max_steps": -3}, "max_steps"),
    ({"per_device_train_batch_size": 0}, "per_device_train_batch_size"),
    ({"learning_rate": math.nan}, "learning_rate"),
    ({"learning_rate": -1.0}, "learning_rate"),
    ({"max_loss": -1.0}, "max_loss"),
]


@pytest.mark.parametrize(("kwargs", "word"), ARGS_CASES, ids=[next(iter(c[0])) + str(c[0]) for c in ARGS_CASES])
def test_training_arguments_refuse_bad_values(tmp_path, kwargs, word):
    with pytest.raises(ConfigError, match=word):
        ClmTrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", **kwargs)


@pytest.mark.skipif(not NO_CUDA, reason="fp16 is fine on a GPU")
def test_fp16_on_cpu_names_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="Drop --fp16 to train in fp32, or pass --bf16"):
        ClmTrainingArguments(output_dir=str(tmp_path), fp16=True, report_to="none")


@pytest.mark.parametrize(
    ("architecture", "overrides", "word"),
    [
        ("gpt2", {"n_embd": 64, "n_head": 5}, "not divisible"),
        ("gpt2", {"n_head": 0}, "num_attention_heads"),
        ("gpt2", {"attn_pdrop": -0.1}, "attn_pdrop"),
        ("llama", {"hidden_size": 64, "num_attention_heads": 5, "num_key_value_heads": 5}, "not divisible"),
        ("qwen3", {"num_key_value_heads": 0}, "num_key_value_heads"),
    ],
)
def test_model_shape_is_checked(architecture, overrides, word):
    with pytest.raises(ConfigError, match=word):
        model_config(architecture, "test", 300, 64, 0, overrides)


@pytest.mark.parametrize(
    ("values", "word"),
    [
        ((0, 0.7, 0.9, 64), "max_new_tokens"),
        ((64, 0.7, 0.9, 64), "no room"),
        ((8, -0.1, 0.9, 64), "temperature"),
        ((8, math.nan, 0.9, 64), "temperature"),
        ((8, 0.7, 0.0, 64), "top_p"),
        ((8, 0.7, 1.01, 64), "top_p"),
    ],
)
def test_sampling_options_are_checked(values, word):
    with pytest.raises(ConfigError, match=word):
        check_sampling(*values)


def test_greedy_and_full_nucleus_are_fine():
    check_sampling(8, 0.0, 1.0, 64)
    check_sampling(8, 0.7, 0.9, None)
    with pytest.raises(ConfigError, match="empty"):
        check_prompts(["ok", ""])


def test_keytoken_factory_refuses_wrong_types(clmkit_tokenizer):
    from clmkit.builtins.losses import KeyToken

    with pytest.raises(ConfigError, match="list of strings"):
        KeyToken(clmkit_tokenizer, keywords="def")
    with pytest.raises(ConfigError, match="a number"):
        KeyToken(clmkit_tokenizer, alpha="high")
    with pytest.raises(ConfigError, match="outside the tokenizer"):
        KeyToken(clmkit_tokenizer, keytoken_ids=[10**9])


def test_filter_factories_refuse_wrong_types():
    from clmkit.builtins.filters import CodeQuality, Keywords

    with pytest.raises(ConfigError, match="max_mean_line_length"):
        CodeQuality(max_mean_line_length="wide")
    with pytest.raises(ConfigError, match="words"):
        Keywords(words=[1, 2])
    assert Keywords(words="pandas").words == ("pandas",)  # one word as a string stays allowed


def test_check_writable_leaves_nothing_behind(tmp_path):
    before = snapshot(tmp_path)
    check_writable(tmp_path / "a" / "b")
    check_writable(tmp_path)
    assert_unchanged(before, snapshot(tmp_path))
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, ["no space left", "bytes free", "checkpoint", "--output_dir"]),
        (errno.EROFS, ["read-only", "--output_dir"]),
        (errno.EACCES, ["permission denied", "--output_dir"]),
    ],
)
def test_write_errors_become_one_line_naming_the_path(tmp_path, code, words):
    target = tmp_path / "out" / "model.safetensors"
    with pytest.raises(StorageError) as info, storage_errors(tmp_path / "out"):
        raise OSError(code, "simulated", str(target))
    message = str(info.value)
    assert isinstance(info.value, ClmkitError) and str(target) in message and "\n" not in message
    for word in words:
        assert word in message


def test_other_os_errors_pass_through(tmp_path):
    with pytest.raises(FileNotFoundError), storage_errors(tmp_path):
        raise FileNotFoundError(errno.ENOENT, "gone", "x")


def test_plugin_kwargs_types_from_a_config_file(workspace):
    config = workspace / "run.yaml"
    config.write_text(json.dumps({"loss": "keytoken", "loss_kwargs": {"keywords": "def"}}))
    argv = ["train", "--config", str(config), "--dataset", str(workspace / "corpus"), *TINY]
    refuse(workspace, [*argv, "--output_dir", str(workspace / "out")], ["keywords", "list of strings"])
