"""Ordinary inputs that used to crash, and faults: a one-document corpus trains; binary files are skipped and
counted; a model folder without tokenizer or weights is refused by name; a diverged loss stops like NaN; a very
long document is tokenized in bounded pieces. Refusals are one line with exit code 2, nothing written outside
the output folder."""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from cli_flags import TINY
from support.bad_inputs import assert_refused, assert_unchanged, run_cli, snapshot

from clmkit.data.chunking import chunk_dataset, chunk_stats, encode_long, text_pieces, tokenize_documents
from clmkit.data.corpus import decode_document, load_corpus
from clmkit.data.tokenizer import train_tokenizer
from clmkit.errors import DataError
from clmkit.generation import check_model_dir
from clmkit.training.components import (
    DivergedError,
    DivergenceGuard,
    NonFiniteLossError,
    check_final_eval,
    check_finite_loss,
    last_finite_checkpoint,
)

ROOT = Path(__file__).resolve().parents[2]
TEXTWRAP = Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py"


def binary_bytes(seed: int = 0, size: int = 4000) -> bytes:
    return bytes(random.Random(seed).randrange(256) for _ in range(size)) + b"\x00\x01\x02"


def garbage_bytes(seed: int = 0, size: int = 4000) -> bytes:
    """No NUL, no control byte, but almost nothing decodes as UTF-8."""
    return bytes(random.Random(seed).randrange(0x80, 0xC0) for _ in range(size))


# ---- corpora ------------------------------------------------------------------------------------------


def test_a_corpus_of_one_file_trains(tmp_path):
    """It used to end in `Column name ['input_ids'] not in the dataset`: the validation split was empty."""
    (tmp_path / "one").mkdir()
    shutil.copy(TEXTWRAP, tmp_path / "one" / "textwrap.py")
    out = tmp_path / "out"
    before = snapshot(tmp_path, skip=[out])
    argv = ["train", "--dataset", str(tmp_path / "one"), *TINY, "--max_steps", "2", "--output_dir", str(out)]
    argv += ["--save_strategy", "no", "--eval_strategy", "no", "--prompts", "def f():"]
    result = run_cli(argv)
    assert result.code == 0, result.stderr[-3000:]
    assert_unchanged(before, snapshot(tmp_path, skip=[out]))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["corpus"]["documents"] == {"train": 1, "validation": 1}
    assert math.isfinite(metrics["eval_loss"])


@pytest.mark.parametrize("kind", ["one file", "one row"])
def test_a_lone_document_is_split_inside(tmp_path, kind):
    text = TEXTWRAP.read_text(encoding="utf-8")
    if kind == "one file":
        (tmp_path / "a.txt").write_text(text)
        corpus = load_corpus(str(tmp_path / "a.txt"), valid_percentage=2)
    else:
        (tmp_path / "a.jsonl").write_text(json.dumps({"content": text, "id": 7}) + "\n")
        corpus = load_corpus(str(tmp_path / "a.jsonl"), valid_percentage=2)
    train, valid = corpus.splits["train"], corpus.splits["validation"]
    assert len(train) == len(valid) == 1
    assert train[0]["content"] + valid[0]["content"] == text
    assert valid[0]["content"].startswith(("    ", "\n", "#", "d", "c")) or "\n" in valid[0]["content"]
    assert 0.05 < len(valid[0]["content"]) / len(text) < 0.2


def test_binary_files_are_skipped_and_counted(tmp_path):
    shutil.copy(TEXTWRAP, tmp_path / "good.py")
    shutil.copy(TEXTWRAP, tmp_path / "good2.py")
    (tmp_path / "blob.py").write_bytes(binary_bytes())
    (tmp_path / "noise.py").write_bytes(garbage_bytes())
    (tmp_path / "latin1.py").write_bytes("name = 'café'\n".encode("latin-1") * 20)  # text, other encoding: kept
    corpus = load_corpus(str(tmp_path), valid_percentage=30)
    assert corpus.info["skipped_binary_files"] == 2 and corpus.info["non_utf8_files"] == 1
    texts = [*corpus.splits["train"]["content"], *corpus.splits["validation"]["content"]]
    assert len(texts) == 3 and all("\x00" not in t for t in texts)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("nul bytes", binary_bytes()),
        ("undecodable", garbage_bytes()),
        ("control bytes", bytes(range(1, 8)) * 500),
        ("utf-16", "print('hello')\n".encode("utf-16") * 50),
    ],
)
def test_decode_document_rejects_binary(name, data):
    assert decode_document(data)[0] is None


def test_ordinary_text_is_kept():
    assert decode_document(b"x = 1\n\tif x:\x0c\n") == ("x = 1\n\tif x:\x0c\n", False)
    text, replaced = decode_document("été = 1\n".encode("latin-1"))
    assert replaced and text.endswith("= 1\n")


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ({"a.py": binary_bytes(1), "b.py": binary_bytes(2)}, ["no usable text", "2 of its 2 files", "binary"]),
        ({"a.py": garbage_bytes(1)}, ["no usable text", "binary or not UTF-8", "--extensions"]),
    ],
    ids=["binary", "garbage"],
)
def test_a_corpus_of_only_binary_files_is_refused(tmp_path, files, words):
    (tmp_path / "data").mkdir()
    for name, data in files.items():
        (tmp_path / "data" / name).write_bytes(data)
    out = tmp_path / "out"
    before = snapshot(tmp_path, skip=[out])
    argv = ["train", "--dataset", str(tmp_path / "data"), *TINY, "--output_dir", str(out)]
    assert_refused(run_cli(argv), *words)
    assert_unchanged(before, snapshot(tmp_path, skip=[out]))


def test_an_empty_eval_dataset_is_named(clmkit_model, clmkit_tokenizer, clmkit_args):
    from datasets import Dataset

    from clmkit import ClmTrainer

    train = Dataset.from_dict({"content": ["def f():\n    return 1\n" * 20] * 4})
    with pytest.raises(DataError, match="eval dataset holds no document"):
        ClmTrainer(
            model=clmkit_model(),
            args=clmkit_args(),
            processing_class=clmkit_tokenizer,
            train_dataset=train,
            eval_dataset=Dataset.from_dict({"content": []}),
        )


# ---- long documents --------------------------------------------------------------------------------------


def test_long_documents_are_tokenized_in_pieces_with_the_same_tokens():
    text = TEXTWRAP.read_text(encoding="utf-8") * 2
    tokenizer = train_tokenizer([text], vocab_size=400)
    whole = tokenizer(text, add_special_tokens=False)["input_ids"]
    for size in (300, 2000, 40000):
        assert "".join(text_pieces(text, size)) == text
        assert encode_long(tokenizer, text, size).tolist() == whole
    flat = text.replace("\n", " ")  # one line
    assert encode_long(tokenizer, flat, 1000).tolist() == tokenizer(flat, add_special_tokens=False)["input_ids"]


def test_long_document_benchmark_smoke(capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import long_document
    finally:
        sys.path.remove(str(ROOT / "bench"))
    code = long_document.main(["--size", "0.3", "--vocab_size", "300"])
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] > 50_000 and result["examples"] > 0
    assert result["peak_growth_mib"] >= 0 and code in (0, 1)


# ---- model folders ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from clmkit.generation import default_generation_config
    from clmkit.models import build_model, model_config

    folder = tmp_path_factory.mktemp("model")
    tokenizer = train_tokenizer([TEXTWRAP.read_text(encoding="utf-8")], vocab_size=300)
    torch.manual_seed(0)
    model = build_model(model_config("gpt2", "test", len(tokenizer), 128, tokenizer.eos_token_id, {"n_layer": 1}))
    model.generation_config = default_generation_config(tokenizer.eos_token_id, 8)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def broken_copy(model_dir: Path, dest: Path, remove: tuple[str, ...]) -> Path:
    shutil.copytree(model_dir, dest)
    for name in remove:
        (dest / name).unlink(missing_ok=True)
    return dest


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.mark.parametrize("command", ["generate", "eval"])
@pytest.mark.parametrize(
    ("missing", "remove", "words"),
    [
        ("tokenizer", TOKENIZER_FILES, ["no tokenizer files", "save_pretrained"]),
        ("weights", ("model.safetensors",), ["no weights", "model.safetensors", "clmkit train"]),
        ("config", ("config.json",), ["not a saved model folder", "config.json"]),
    ],
)
def test_incomplete_model_folder_is_refused(tmp_path, model_dir, command, missing, remove, words):
    broken = broken_copy(model_dir, tmp_path / "model", remove)
    before = snapshot(tmp_path)
    argv = [command, str(broken), "def f():"] if command == "generate" else [command, str(broken)]
    if command == "eval":
        argv += ["--dataset", str(tmp_path / "model")]  # never read: the folder is refused first
    assert_refused(run_cli(argv), *words, str(broken))
    assert_unchanged(before, snapshot(tmp_path))
    with pytest.raises(DataError):
        check_model_dir(broken)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--temperature", "-1"], ["temperature", "at least 0"]),
        (["--top_p", "0"], ["top_p", "(0, 1]"]),
        (["--top_p", "1.5"], ["top_p", "(0, 1]"]),
        (["--max_new_tokens", "0"], ["max_new_tokens", "at least 1"]),
        (["--max_new_tokens", "128"], ["max_new_tokens 128", "context of 128", "at most 127"]),
    ],
    ids=["temperature", "top_p 0", "top_p 1.5", "no new token", "no room"],
)
def test_generate_refuses_bad_sampling_options(tmp_path, model_dir, extra, words):
    before = snapshot(model_dir)
    assert_refused(run_cli(["generate", str(model_dir), "def f():", *extra]), *words)
    assert_unchanged(before, snapshot(model_dir))


def test_generate_refuses_an_empty_prompt(model_dir):
    assert_refused(run_cli(["generate", str(model_dir), ""]), "prompt", "empty")


# ---- divergence ----------------------------------------------------------------------------------------------


def save_checkpoint(folder: Path, step: int, value: float) -> Path:
    from safetensors.torch import save_file

    from clmkit.training.checkpoint import write_checkpoint_state

    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": torch.full((3,), value), "steps": torch.tensor([step])}, str(path / "model.safetensors"))
    write_checkpoint_state(path, {"epoch": 0, "batches_in_epoch": step}, {})  # complete: clmkit's manifest last
    return path


def test_an_exploding_loss_stops_like_nan(tmp_path):
    good = save_checkpoint(tmp_path, 10, 1.0)
    save_checkpoint(tmp_path, 20, math.inf)  # saved after the weights blew up: not a checkpoint to resume
    (tmp_path / "checkpoint-30").mkdir()  # pickled weights only: never unpickled, never named
    (tmp_path / "checkpoint-30" / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(DivergedError) as info:
        check_finite_loss(torch.tensor(8.5e8), 25, str(tmp_path), max_loss=100.0)
    message = str(info.value)
    assert "8.5e+08" in message and "step 25" in message and f"Last good checkpoint: {good}." in message
    assert isinstance(info.value, NonFiniteLossError)
    if not torch.cuda.is_available():
        assert "bf16" not in message and "fp16" not in message  # the CPU cannot take that advice
    with pytest.raises(NonFiniteLossError, match="became nan"):
        check_finite_loss(torch.tensor(math.nan), 3, str(tmp_path))
    check_finite_loss(torch.tensor(9.0), 3, str(tmp_path), max_loss=100.0)  # an ordinary loss passes


def test_the_divergence_bound_is_relative_to_the_first_loss_unless_set():
    guard = DivergenceGuard(None)
    guard.check(torch.tensor(45.0), 1, None)  # a loss plugin's scale (z-loss) is its own: not divergence
    guard.check(torch.tensor(9_000.0), 2, None)
    with pytest.raises(DivergedError, match="above max_loss 4.5e"):
        guard.check(torch.tensor(8.5e8), 3, None)
    with pytest.raises(DivergedError, match="above max_loss 20"):
        DivergenceGuard(20.0).check(torch.tensor(30.0), 1, None)


def test_a_non_finite_final_evaluation_is_not_a_success(tmp_path):
    good = save_checkpoint(tmp_path, 4, 0.5)
    with pytest.raises(DivergedError) as info:
        check_final_eval({"eval_loss": 8.5e8, "eval_perplexity": math.inf}, tmp_path)
    assert "eval_perplexity inf" in str(info.value) and str(good) in str(info.value)
    check_final_eval({"eval_loss": 4.2, "eval_perplexity": math.exp(4.2)}, tmp_path)
    assert last_finite_checkpoint(tmp_path / "missing") is None


def test_a_batch_mixing_long_and_short_documents_keeps_one_column_type(clmkit_tokenizer, monkeypatch):
    """Long documents come back as compact arrays, short ones as lists: the column stays list<int32>, so
    chunking and its statistics work (the standard library has such a batch: pydoc_data/topics.py)."""
    from datasets import Dataset

    from clmkit.builtins.chunkers import Concat

    monkeypatch.setattr("clmkit.data.chunking.MAX_PIECE_CHARS", 2000)
    texts = [TEXTWRAP.read_text(encoding="utf-8"), "x = 1\n", "def f():\n    return 2\n"]
    tokenized = tokenize_documents(Dataset.from_dict({"content": texts}), clmkit_tokenizer, "content")
    assert str(tokenized.features["input_ids"].feature.dtype) == "int32"
    assert tokenized[0]["input_ids"] == clmkit_tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    chunker = Concat(clmkit_tokenizer, 64)
    stats = chunk_stats(tokenized, chunk_dataset(tokenized, chunker), chunker)
    assert stats.documents == 3 and stats.tokens_kept + stats.tokens_dropped == stats.tokens
