"""Corpora: the standard library default, directories, data files, the hub (mocked), and bad input."""

from __future__ import annotations

import json
import shutil

import pytest
from datasets import Dataset, DatasetDict

from clmkit.data.corpus import is_prepared, load_corpus, split_mask, stdlib_root
from clmkit.errors import ConfigError, DataError

CORPUS_FILES = sorted((stdlib_root() / "json").glob("*.py")) + sorted((stdlib_root() / "email").glob("*.py"))


@pytest.fixture
def source_dir(tmp_path):
    """Twelve real stdlib files, plus files that must be skipped (hidden, site-packages, other suffix)."""
    root = tmp_path / "src"
    (root / "pkg").mkdir(parents=True)
    for i, path in enumerate(CORPUS_FILES[:12]):
        (root / ("pkg" if i % 2 else "") / f"{i}_{path.name}").write_bytes(path.read_bytes())
    for skipped in (".hidden", "site-packages", "__pycache__"):
        (root / skipped).mkdir()
        (root / skipped / "skip.py").write_text("SKIPPED = True\n")
    (root / "notes.md").write_text("# not python\n")
    return root


def test_stdlib_corpus_is_split_by_path_about_two_percent():
    corpus = load_corpus()
    train, valid = corpus.splits["train"], corpus.splits["validation"]
    root = stdlib_root()
    files = [p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts]
    assert len(train) + len(valid) == len(files) > 500
    assert 0.01 < len(valid) / len(files) < 0.04
    assert not set(train["path"]) & set(valid["path"])
    non_utf8 = 0
    for path in files:
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            non_utf8 += 1
    assert corpus.info["non_utf8_files"] == non_utf8
    assert corpus.info["documents"] == {"train": len(train), "validation": len(valid)}
    assert all(not p.startswith("site-packages/") for p in list(train["path"]))


def test_directory_corpus_reads_matching_files_and_skips_the_rest(source_dir):
    corpus = load_corpus(str(source_dir), valid_percentage=20)
    paths = list(corpus.splits["train"]["path"]) + list(corpus.splits["validation"]["path"])
    assert len(paths) == 12
    assert all(p.endswith(".py") and "skip" not in p for p in paths)
    assert len(corpus.splits["validation"]) >= 1
    originals = {p.read_text(encoding="utf-8") for p in CORPUS_FILES[:12]}
    assert set(list(corpus.splits["train"]["content"])) <= originals


def test_configurable_extensions_and_text_column(source_dir):
    (source_dir / "pkg" / "more.md").write_text("## more\n")
    corpus = load_corpus(str(source_dir), text_column="text", extensions=["md", ".pyi"], valid_percentage=50)
    texts = list(corpus.splits["train"]["text"]) + list(corpus.splits["validation"]["text"])
    assert sorted(texts) == ["# not python\n", "## more\n"]
    assert len(corpus.splits["train"]) == len(corpus.splits["validation"]) == 1


def test_split_is_stable_when_files_are_added(source_dir):
    before = load_corpus(str(source_dir), valid_percentage=20)
    shutil.copy(CORPUS_FILES[-1], source_dir / "added.py")
    after = load_corpus(str(source_dir), valid_percentage=20)
    assert set(list(before.splits["validation"]["path"])) <= set(list(after.splits["validation"]["path"])) | {
        "added.py"
    }
    assert set(list(before.splits["train"]["path"])) <= set(list(after.splits["train"]["path"]))


def test_split_mask_keeps_one_document_in_each_split():
    assert split_mask(["a", "b"], 0.001).count(True) == 1
    assert split_mask(["only"], 99.999) == [False]  # a lone document trains
    assert split_mask(["a", "b"], 99.999).count(False) == 1
    keys = [f"file{i}.py" for i in range(4000)]
    assert 60 < sum(split_mask(keys, 2.0)) < 100


def test_non_utf8_file_is_decoded_with_replacement_and_counted(tmp_path):
    (tmp_path / "good.py").write_text("x = 1\n" * 20)
    (tmp_path / "latin1.py").write_bytes("name = 'café'\n".encode("latin-1") * 20)
    corpus = load_corpus(str(tmp_path), valid_percentage=50)
    texts = list(corpus.splits["train"]["content"]) + list(corpus.splits["validation"]["content"])
    assert corpus.info["non_utf8_files"] == 1
    assert any("caf\ufffd" in t for t in texts)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_data_files_with_glob(tmp_path, clmkit_corpus, suffix):
    writers = {".jsonl": "to_json", ".json": "to_json", ".csv": "to_csv", ".parquet": "to_parquet"}
    rows = [{"text": t, "id": i} for i, t in enumerate(clmkit_corpus[:10])]
    for part in range(2):
        getattr(Dataset.from_list(rows[part * 5 : part * 5 + 5]), writers[suffix])(
            str(tmp_path / f"part{part}{suffix}")
        )
    corpus = load_corpus(str(tmp_path / f"part*{suffix}"), text_column="text", valid_percentage=20)
    got = list(corpus.splits["train"]["text"]) + list(corpus.splits["validation"]["text"])
    assert sorted(got) == sorted(t for t in clmkit_corpus[:10])
    assert len(corpus.splits["validation"]) >= 1


def test_txt_files_are_one_document_each(tmp_path, clmkit_corpus):
    for i, text in enumerate(clmkit_corpus[:3]):
        (tmp_path / f"doc{i}.txt").write_text(text)
    corpus = load_corpus(str(tmp_path / "*.txt"), valid_percentage=30)
    assert len(corpus.splits["train"]) + len(corpus.splits["validation"]) == 3


def test_missing_text_column_lists_the_columns(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"print({i})", "id": i}) for i in range(5)))
    with pytest.raises(DataError, match=r"no column 'content'; its columns are \['text', 'id'\]"):
        load_corpus(str(path))


@pytest.mark.parametrize(
    ("source", "files", "message"),
    [
        ("nope", {}, "does not exist"),
        ("nope.jsonl", {}, "does not exist"),
        ("*.jsonl", {}, "matches no file"),
        (".", {"x.md": "hi"}, r"holds no file ending in \.py"),
        (".", {"a.py": "", "b.py": ""}, "is empty"),
        ("d.jsonl", {"d.jsonl": ""}, "is empty|could not read"),
    ],
)
def test_bad_sources(tmp_path, source, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=message):
        load_corpus(str(tmp_path / source))


def test_valid_percentage_must_be_a_percentage():
    with pytest.raises(ConfigError, match="between 0 and 100"):
        load_corpus(None, valid_percentage=0)


def test_hub_name_goes_to_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(name, *args, **kwargs):
        calls.append(name)
        return DatasetDict(
            train=Dataset.from_dict({"content": ["a = 1", "b = 2"]}),
            valid=Dataset.from_dict({"content": ["c = 3"]}),
        )

    monkeypatch.setattr("datasets.load_dataset", fake_load_dataset)
    corpus = load_corpus("huggingface-course/codeparrot-ds")
    assert calls == ["huggingface-course/codeparrot-ds"]
    assert list(corpus.splits["validation"]["content"]) == ["c = 3"]


def test_hub_failure_is_one_clear_error(monkeypatch):
    def offline(name, *args, **kwargs):
        raise ConnectionError("Couldn't reach the hub\nmore detail")

    monkeypatch.setattr("datasets.load_dataset", offline)
    with pytest.raises(DataError, match="loading it from the hub failed.*ConnectionError: Couldn't reach the hub"):
        load_corpus("someone/dataset")


def test_is_prepared(tmp_path):
    assert not is_prepared(tmp_path)
    DatasetDict(train=Dataset.from_dict({"input_ids": [[1, 2]]})).save_to_disk(str(tmp_path / "p"))
    assert is_prepared(tmp_path / "p")
