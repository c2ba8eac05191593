"""CLI paths into the data strategies: ``--streaming``, a config's ``mixture:``, ``prepare --filters``."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from cli_flags import TINY

from clmkit.cli import main
from clmkit.cli.options import parse_train_args
from clmkit.data.corpus import load_corpus
from clmkit.data.sources import load_data


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory):
    """JSON lines with a ``text`` column: short scripts, a few of them repeated."""
    path = tmp_path_factory.mktemp("rows") / "scripts.jsonl"
    texts = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(60)] + ["print('again')\n"] * 3
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_streamed_data_files_split_like_the_loaded_ones(rows_file):
    loaded = load_corpus(str(rows_file), "text", valid_percentage=20).splits
    streamed = load_data(str(rows_file), text_column="text", valid_percentage=20, streaming=True)
    assert sorted(streamed.splits["validation"]["text"]) == sorted(loaded["validation"]["text"])
    assert sorted(row["text"] for row in streamed.splits["train"]) == sorted(loaded["train"]["text"])


def test_train_streaming_a_directory(corpus_dir, tmp_path):
    out = tmp_path / "out"
    argv = ["train", "--dataset", str(corpus_dir), *TINY, "--streaming", "--max_steps", "6", "--output_dir", str(out)]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    loaded = load_corpus(str(corpus_dir), valid_percentage=20).splits
    assert metrics["corpus"]["streaming"] is True
    assert metrics["corpus"]["documents"] == {"train": len(loaded["train"]), "validation": len(loaded["validation"])}
    assert metrics["global_step"] == 6 and math.isfinite(metrics["eval_loss"])
    assert "train" not in metrics["data"] and metrics["data"]["eval"]["examples"] > 0  # a stream is not counted


def test_streaming_without_max_steps_is_refused(corpus_dir, tmp_path, capsys):
    argv = ["train", "--dataset", str(corpus_dir), *TINY, "--streaming", "--output_dir", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "max_steps" in one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_train_on_a_mixture_from_the_config(corpus_dir, rows_file, tmp_path):
    mixture = [
        {"dataset": str(rows_file), "name": "scripts", "text_column": "text", "chunker": "packed", "weight": 1},
        {"dataset": str(corpus_dir), "name": "library", "chunker": "concat", "filters": ["exact_dedup"], "weight": 3},
    ]
    config = tmp_path / "mix.yaml"
    config.write_text(yaml.safe_dump({"mixture": mixture, "max_steps": 6}))
    out = tmp_path / "out"
    assert main(["train", "--config", str(config), *TINY, "--output_dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["corpus"]["source"] == "mixture of scripts, library"
    assert [s["probability"] for s in metrics["corpus"]["mixture"]] == [0.25, 0.75]
    rows = load_corpus(str(rows_file), "text", valid_percentage=20).splits["validation"]
    files = load_corpus(str(corpus_dir), valid_percentage=20).splits["validation"]
    assert metrics["corpus"]["documents"]["validation"] == len(rows) + len(files)
    assert {"train/scripts", "train/library"} <= set(metrics["data"])
    assert metrics["data"]["train/scripts"]["examples"] < metrics["data"]["train/scripts"]["documents"]  # packed
    assert metrics["global_step"] == 6 and math.isfinite(metrics["eval_loss"])
    source, *_ = parse_train_args(["--config", str(out / "training_args.yaml")])
    assert source.mixture == mixture  # the saved arguments repeat the mixture


@pytest.mark.parametrize(
    ("entry", "flags", "expected"),
    [
        ({"weight": 0}, [], "weight"),
        ({"chunker": "nope"}, [], "nope"),
        ({}, ["--dataset", "x/"], "drop --dataset"),
    ],
)
def test_bad_mixtures_are_one_line_errors(corpus_dir, tmp_path, capsys, entry, flags, expected):
    config = tmp_path / "mix.yaml"
    config.write_text(yaml.safe_dump({"mixture": [{"dataset": str(corpus_dir), **entry}]}))
    assert main(["train", "--config", str(config), *TINY, *flags, "--output_dir", str(tmp_path / "o")]) == 2
    assert expected in one_line_error(capsys)


def test_prepare_applies_filters_and_saves_their_reports(corpus_dir, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for path in corpus_dir.iterdir():
        (corpus / path.name).write_bytes(path.read_bytes())
        (corpus / f"copy_of_{path.name}").write_bytes(path.read_bytes())
    out = tmp_path / "prepared"
    argv = ["prepare", "--dataset", str(corpus), "--vocab_size", "512", "--context_length", "64"]
    assert main([*argv, "--valid_split_percentage", "20", "--filters", "exact_dedup", "--output_dir", str(out)]) == 0
    stats = json.loads((out / "prepare_stats.json").read_text())
    splits = load_corpus(str(corpus), valid_percentage=20).splits
    for split in ("train", "validation"):
        texts = splits[split]["content"]
        (report,) = stats["filter_reports"][split]
        assert report["filter"] == "exact_dedup" and report["documents_in"] == len(texts)
        assert report["removed"] == len(texts) - len(set(texts))
        assert stats["splits"][split]["documents"] == len(set(texts))
    assert stats["filter_reports"]["train"][0]["removed"] > 0
