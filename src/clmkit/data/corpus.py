"""Raw text corpora with a train and a validation split: the embedded default, files, directories, the hub.

The default corpus is the Python source of the running interpreter's standard library: real code,
the same on every machine of one Python version, available offline. Splits are deterministic: a
file (or, for row-based data, a text) lands in validation when a hash of its path (or text) falls
below ``valid_percentage``, so adding files never moves the others between splits.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import sysconfig
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict

from clmkit.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# a loader of `datasets` per data file suffix; .txt files are read whole, one document per file
DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
TEXT_FILE_SUFFIX = ".txt"
SKIPPED_FOLDERS = frozenset({"site-packages", "__pycache__", "node_modules"})
VALIDATION_SPLIT_NAMES = ("validation", "valid", "test")
BINARY_SNIFF_BYTES = 8192  # a NUL byte in a file's first bytes marks it as binary (text never holds one)
MAX_UNDECODABLE_FRACTION = 0.5  # above this share of replacement characters a file is garbage, not text
MAX_CONTROL_FRACTION = 0.1  # above this share of control bytes (not tab, newline, ...) a file is binary
_CONTROL_BYTES = bytes(b for b in range(32) if b not in b"\t\n\r\x0b\x0c\x1b")


def decode_document(raw: bytes) -> tuple[str | None, bool]:
    """A file's text and whether it needed replacement characters; ``None`` for a binary or garbage file:
    a NUL byte near its start, more than 10% control bytes, or more than half of it undecodable as UTF-8
    (a file in another encoding, e.g. Latin-1 or KOI8-R, keeps its text with replacement characters)."""
    head = raw[:BINARY_SNIFF_BYTES]
    if b"\x00" in head or len(head) - len(head.translate(None, _CONTROL_BYTES)) > MAX_CONTROL_FRACTION * len(head):
        return None, False
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
    if text.count("\ufffd") > MAX_UNDECODABLE_FRACTION * len(text):
        return None, True
    return text, True


@dataclass(frozen=True)
class Corpus:
    """The splits a run trains and evaluates on, and where they came from.

    ``splits["train"]`` is raw text (a ``Dataset``, a stream, or a ``Mixture``) or examples made by
    ``clmkit prepare``; ``splits["validation"]`` is a ``Dataset``. ``info`` says where the corpus came
    from and how many documents each split holds (written to ``metrics.json`` and the model card);
    ``tokenizer`` is the one a prepared folder was made with, else ``None``.
    """

    splits: Mapping[str, Any]
    info: dict[str, Any]
    tokenizer: Any = None

    @classmethod
    def of(cls, splits: Mapping[str, Any], source: str, non_utf8_files: int = 0, binary_files: int = 0) -> Corpus:
        """A raw corpus of in-memory splits, its ``info`` counted from them.

        A corpus of a single document (one file, one row) is split inside that document, so that it
        has a validation split: see ``split_lone_document``.
        """
        splits = split_lone_document(splits)
        documents = {name: len(split) for name, split in splits.items()}
        info = {"source": source, "documents": documents, "non_utf8_files": non_utf8_files}
        if binary_files:
            info["skipped_binary_files"] = binary_files
        return cls(splits, info)


def split_lone_document(splits: Mapping[str, Any], text_column: str | None = None) -> Mapping[str, Any]:
    """Splits whose validation split is empty because the corpus is one document: the end of that document
    (``LONE_DOCUMENT_VALID_FRACTION`` of it, cut at a line break when there is one) becomes the validation
    split, the rest trains. Other splits are returned as they are."""
    train, valid = splits.get("train"), splits.get("validation")
    if not isinstance(train, Dataset) or not isinstance(valid, Dataset) or len(valid) or len(train) != 1:
        return splits
    columns = [c for c in train.column_names if isinstance(train[0][c], str) and c != "path"]
    column = text_column or (columns[0] if len(columns) == 1 else "content" if "content" in columns else None)
    if column is None:
        return splits
    text = train[0][column]
    if not isinstance(text, str) or len(text) < 2:
        return splits
    cut = max(1, int(len(text) * (1 - LONE_DOCUMENT_VALID_FRACTION)))
    newline = text.rfind("\n", 0, cut)
    if newline > len(text) // 2:
        cut = newline + 1
    row = train[0]
    head = {k: [text[:cut] if k == column else v] for k, v in row.items()}
    tail = {k: [text[cut:] if k == column else v] for k, v in row.items()}
    return DatasetDict(
        train=Dataset.from_dict(head, features=train.features),
        validation=Dataset.from_dict(tail, features=train.features),
    )


LONE_DOCUMENT_VALID_FRACTION = 0.1


def stdlib_root() -> Path:
    """The folder of this interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def load_corpus(
    source: str | None = None,
    text_column: str = "content",
    valid_percentage: float = 2.0,
    extensions: Sequence[str] = (".py",),
) -> Corpus:
    """Load ``source``: None (the standard library), a directory, data files or globs, or a hub name."""
    if not 0 < valid_percentage < 100:
        raise ConfigError(
            f"valid_split_percentage must be between 0 and 100 (exclusive), got {valid_percentage}. Use e.g. 2."
        )
    if source is None:
        return source_files_corpus(stdlib_root(), (".py",), text_column, valid_percentage, label="stdlib")
    if any(ch in source for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(Path(source).expanduser()), recursive=True))
        if not files:
            raise DataError(f"--dataset {source!r} matches no file. Fix the pattern (e.g. 'data/*.jsonl').")
        return data_files_corpus(files, text_column, valid_percentage, label=source)
    path = Path(source).expanduser()
    if path.is_dir():
        return source_files_corpus(path, extensions, text_column, valid_percentage, label=source)
    if path.is_file():
        return data_files_corpus([path], text_column, valid_percentage, label=source)
    if _looks_like_path(source):
        raise DataError(
            f"--dataset {source!r} does not exist. Pass an existing directory or data file, "
            "or leave --dataset out to use the standard library."
        )
    return hub_corpus(source, text_column, valid_percentage)


def _looks_like_path(source: str) -> bool:
    """A hub name is ``name`` or ``owner/name``; anything else that does not exist is a missing path."""
    suffix = Path(source).suffix
    return (
        source.startswith((".", "/", "~"))
        or "\\" in source
        or source.count("/") > 1
        or suffix in DATA_FILE_BUILDERS
        or suffix == TEXT_FILE_SUFFIX
    )


def source_files_corpus(
    root: Path, extensions: Sequence[str], text_column: str, valid_percentage: float, label: str
) -> Corpus:
    """Every file under ``root`` ending in one of ``extensions``, one document per file, split by path.

    Hidden folders, ``site-packages``, ``__pycache__`` and ``node_modules`` are skipped. Files that are
    not valid UTF-8 are decoded with replacement characters and counted in ``non_utf8_files``.
    """
    return _files_as_corpus(root, list_source_files(root, extensions), text_column, valid_percentage, label)


def list_source_files(root: Path, extensions: Sequence[str]) -> list[Path]:
    """The files under ``root`` that ``source_files_corpus`` reads, sorted (also the files a stream reads)."""
    suffixes = tuple(e if e.startswith(".") else f".{e}" for e in extensions)
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix in suffixes
        and p.is_file()
        and not any(part.startswith(".") or part in SKIPPED_FOLDERS for part in p.relative_to(root).parts[:-1])
    )
    if not files:
        raise DataError(
            f"directory {str(root)!r} holds no file ending in {', '.join(suffixes)} (searched recursively, "
            "skipping hidden folders and site-packages). Pass --extensions (e.g. .py,.pyi) or other data."
        )
    return files


def _files_as_corpus(
    root: Path | None, files: Sequence[Path], text_column: str, valid_percentage: float, label: str
) -> Corpus:
    rows: dict[str, list[str]] = {"path": [], text_column: []}
    non_utf8 = binary = 0
    for path in files:
        text, replaced = decode_document(path.read_bytes())
        if text is None:
            binary += 1
            logger.warning("skipping %s: binary or undecodable (not UTF-8 text)", path)
            continue
        non_utf8 += replaced
        rows["path"].append((path.relative_to(root) if root else path).as_posix())
        rows[text_column].append(text)
    if not any(rows[text_column]):
        if binary:
            raise DataError(
                f"the corpus {label!r} holds no usable text: {binary} of its {len(files)} files are binary or not "
                "UTF-8 text (NUL bytes, or mostly undecodable) and were skipped. Point at text files "
                "(--extensions picks which files of a directory are read)."
            )
        raise DataError(f"the corpus {label!r} is empty: its {len(files)} files hold no text. Point at real data.")
    if binary:
        logger.warning("skipped %d of %d files of %r: binary or not UTF-8 text", binary, len(files), label)
    valid = split_mask(rows["path"], valid_percentage)
    splits = DatasetDict(
        train=Dataset.from_dict({k: [v for v, m in zip(col, valid, strict=True) if not m] for k, col in rows.items()}),
        validation=Dataset.from_dict({k: [v for v, m in zip(col, valid, strict=True) if m] for k, col in rows.items()}),
    )
    return Corpus.of(splits, label, non_utf8, binary)


def data_files_corpus(files: Sequence[Path], text_column: str, valid_percentage: float, label: str) -> Corpus:
    """json / jsonl / parquet / csv rows (split by a hash of the text), or .txt files (one document each)."""
    suffixes = {p.suffix for p in files}
    if suffixes == {TEXT_FILE_SUFFIX}:
        return _files_as_corpus(None, files, text_column, valid_percentage, label)
    builders = {DATA_FILE_BUILDERS.get(s) for s in suffixes}
    if None in builders or len(builders) != 1:
        raise DataError(
            f"--dataset {label!r} names files of types {sorted(suffixes)}; clmkit reads one type at a time among "
            f"{', '.join([*DATA_FILE_BUILDERS, TEXT_FILE_SUFFIX])}. Pass files of one supported type."
        )
    from datasets import load_dataset

    try:
        with _quiet_datasets():
            dataset = load_dataset(builders.pop(), data_files=[str(p) for p in files], split="train")
    except Exception as exc:  # malformed data: pyarrow / datasets raise many types
        raise DataError(f"could not read {label!r}: {_first_line(exc)}. Fix the file or pass another one.") from exc
    _check_text_column(dataset, text_column, label)
    if len(dataset) == 0 or not any(dataset[text_column]):
        raise DataError(f"the corpus {label!r} is empty: no row holds text. Point at real data.")
    return Corpus.of(split_by_text(dataset, text_column, valid_percentage), label)


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No "Generating train split" progress bar while local files are converted (they are small next to training)."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def hub_corpus(name: str, text_column: str, valid_percentage: float) -> Corpus:
    """A hub dataset through ``load_dataset``: its own validation split if it has one, else a hash split."""
    from datasets import load_dataset

    try:
        loaded = load_dataset(name)
    except Exception as exc:  # offline, unknown name, gated repo: the hub client raises many types
        raise DataError(
            f"--dataset {name!r} is not a local path and loading it from the hub failed ({_first_line(exc)}). "
            "Check the name and that you are online (HF_HUB_OFFLINE unset), or pass a local path."
        ) from exc
    if "train" not in loaded:
        raise DataError(f"hub dataset {name!r} has no 'train' split (it has {list(loaded)}). Pick another dataset.")
    _check_text_column(loaded["train"], text_column, name)
    for split in VALIDATION_SPLIT_NAMES:
        if split in loaded:
            return Corpus.of(DatasetDict(train=loaded["train"], validation=loaded[split]), name)
    return Corpus.of(split_by_text(loaded["train"], text_column, valid_percentage), name)


def _check_text_column(dataset: Dataset, text_column: str, label: str) -> None:
    if text_column not in dataset.column_names:
        raise DataError(
            f"{label!r} has no column {text_column!r}; its columns are {dataset.column_names}. "
            "Pass --text_column with the column that holds the text."
        )


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _unit_hash(key: str) -> float:
    """A stable number in [0, 1) for a string (the same on every machine and Python run)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=8).digest(), "big") / 2**64


def in_validation(key: str, valid_percentage: float) -> bool:
    """Whether one document (by its path or text) is held out: ``split_mask``'s rule for a stream of unknown size."""
    return _unit_hash(key) < valid_percentage / 100


def split_mask(keys: Sequence[str], valid_percentage: float) -> list[bool]:
    """True for the keys in validation: hash below the percentage; one key in each split when there are two."""
    hashes = [_unit_hash(k) for k in keys]
    mask = [h < valid_percentage / 100 and len(keys) >= 2 for h in hashes]  # in_validation, hashed once
    if len(keys) >= 2 and not any(mask):
        mask[hashes.index(min(hashes))] = True
    if len(keys) >= 2 and all(mask):
        mask[hashes.index(max(hashes))] = False
    return mask


def split_by_text(dataset: Dataset, text_column: str, valid_percentage: float) -> DatasetDict:
    """Split rows by a hash of their text, so the split does not depend on row order."""
    mask = split_mask([t if isinstance(t, str) else "" for t in dataset[text_column]], valid_percentage)
    valid_rows = [i for i, m in enumerate(mask) if m]
    train_rows = [i for i, m in enumerate(mask) if not m]
    return DatasetDict(train=dataset.select(train_rows), validation=dataset.select(valid_rows))


def is_prepared(path: str | Path | None) -> bool:
    """Whether ``path`` is a folder written by ``clmkit prepare`` (a saved DatasetDict)."""
    return path is not None and (Path(path).expanduser() / "dataset_dict.json").is_file()
