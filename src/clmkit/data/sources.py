"""Where a run's text comes from: a folder made by ``clmkit prepare``, a mixture, or one raw corpus, read whole or
streamed. Plain values in, a ``Corpus`` out, so scripts, ``bench/`` and the CLI load data the same way.
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clmkit.data.corpus import (
    DATA_FILE_BUILDERS,
    Corpus,
    in_validation,
    is_prepared,
    list_source_files,
    load_corpus,
    split_mask,
    stdlib_root,
)
from clmkit.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

PREPARED_STATS = "prepare_stats.json"  # what `clmkit prepare` counted, saved beside its splits


def load_data(
    dataset: str | None = None,
    *,
    text_column: str = "content",
    valid_percentage: float = 2.0,
    extensions: Sequence[str] = (".py",),
    streaming: bool = False,
    mixture: list[dict[str, Any]] | None = None,
) -> Corpus:
    """A prepared folder as saved, a ``mixture`` (the entries of a config's ``mixture:``), or one raw corpus
    (``load_corpus``: the standard library when ``dataset`` is None), its train split streamed if ``streaming``."""
    if mixture is not None:
        if dataset is not None:
            raise ConfigError("the config's mixture names the datasets to train on; drop --dataset, or the mixture.")
        return load_mixture(mixture, text_column, valid_percentage, extensions, streaming)
    if is_prepared(dataset):
        assert dataset is not None
        if streaming:
            raise ConfigError(
                f"--dataset {dataset!r} is a prepared folder, read from disk as needed already. Drop --streaming."
            )
        return load_prepared(Path(dataset).expanduser())
    return load_raw(dataset, text_column, valid_percentage, extensions, streaming)


def load_prepared(folder: Path) -> Corpus:
    """A folder written by ``clmkit prepare``: its splits, statistics and tokenizer."""
    from datasets import load_from_disk

    from clmkit.data.tokenizer import load_tokenizer

    splits = load_from_disk(str(folder))
    if not {"train", "validation"} <= set(splits):
        raise DataError(
            f"prepared dataset {str(folder)!r} lacks a train or validation split (it has {list(splits)}). "
            "Prepare it again with `clmkit prepare`."
        )
    stats_file = folder / PREPARED_STATS
    info = json.loads(stats_file.read_text()) if stats_file.is_file() else {"source": str(folder)}
    return Corpus(splits, info, load_tokenizer(str(folder)))


def load_raw(
    dataset: str | None, text_column: str, valid_percentage: float, extensions: Sequence[str], streaming: bool
) -> Corpus:
    """One raw corpus: loaded whole (``load_corpus``), or with ``streaming`` its train split as a stream."""
    if streaming:
        return stream_corpus(dataset, text_column, valid_percentage, extensions)
    corpus = load_corpus(dataset, text_column, valid_percentage, extensions)
    if corpus.info["non_utf8_files"]:
        logger.info("%d files are not valid UTF-8; decoded with replacement characters", corpus.info["non_utf8_files"])
    return corpus


def stream_corpus(dataset: str | None, text_column: str, valid_percentage: float, extensions: Sequence[str]) -> Corpus:
    """A local corpus whose train split is an ``IterableDataset`` and whose validation split is in memory.

    The split is ``load_corpus``'s: files (of a directory, or .txt files) by a hash of their path,
    read by ``stream_files``; rows of data files by a hash of their text, read by
    ``load_dataset(..., streaming=True)``, which takes one pass up front to collect the validation rows.
    """
    from datasets import Dataset, load_dataset

    from clmkit.data.streaming import stream_files

    label = dataset or "stdlib"
    path = Path(dataset).expanduser() if dataset else stdlib_root()
    root = path if path.is_dir() else None
    if root is not None:
        files = list_source_files(root, extensions if dataset else [".py"])
    elif dataset and any(ch in dataset for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
    elif path.is_file():
        files = [path]
    else:
        raise ConfigError(
            f"--streaming reads local files, and --dataset {label!r} is not a directory, data file or glob "
            "that exists. Pass one, or drop --streaming."
        )
    builders = {DATA_FILE_BUILDERS.get(p.suffix) for p in files}
    if root is not None or builders == {None}:  # one document per file, split by path
        valid = split_mask([(p.relative_to(root) if root else p).as_posix() for p in files], valid_percentage)
        train_files = [p for p, v in zip(files, valid, strict=True) if not v]
        validation = Dataset.from_list(list(stream_files([p for p, v in zip(files, valid, strict=True) if v])))
        info = {
            "source": label,
            "streaming": True,
            "documents": {"train": len(train_files), "validation": len(validation)},
        }
        return Corpus({"train": stream_files(train_files, text_column), "validation": validation}, info)
    if len(builders) != 1 or None in builders:
        raise DataError(
            f"--dataset {label!r} names files of types {sorted({p.suffix for p in files})}; a stream reads one type "
            f"among {', '.join(DATA_FILE_BUILDERS)} or whole text files. Pass files of one supported type."
        )
    stream = load_dataset(builders.pop(), data_files=[str(p) for p in files], split="train", streaming=True)
    first = next(iter(stream), None)
    if first is None or text_column not in first:
        raise DataError(
            f"{label!r} has no column {text_column!r} (its columns are {list(first or [])}). "
            "Pass --text_column with the column that holds the text."
        )

    def held_out(row: dict[str, Any]) -> bool:
        text = row[text_column]
        return in_validation(text if isinstance(text, str) else "", valid_percentage)

    validation = Dataset.from_list([row for row in stream if held_out(row)])
    if len(validation) == 0:
        raise DataError(
            f"no row of {label!r} falls in the validation split ({valid_percentage}% by a hash of the text). "
            "Raise --valid_split_percentage or pass more data."
        )
    info = {"source": label, "streaming": True, "documents": {"validation": len(validation)}}
    return Corpus({"train": stream.filter(lambda row: not held_out(row)), "validation": validation}, info)


def load_mixture(
    entries: list[dict[str, Any]],
    text_column: str,
    valid_percentage: float = 2.0,
    extensions: Sequence[str] = (".py",),
    streaming: bool = False,
) -> Corpus:
    """A config's ``mixture:`` entries as a ``Mixture`` to train on, each source loaded like ``--dataset``.

    The validation split is the union of the sources' validation splits (in the run's text column),
    so every source is evaluated; it is cut with the run's chunker and filters, which keeps eval loss
    comparable between runs that mix the same data differently.
    """
    from datasets import concatenate_datasets

    from clmkit.data.mixtures import Mixture, sources_from_config

    # sources_from_config calls load once per entry, in order: the n-th call loads the n-th entry
    listed = entries if isinstance(entries, list) else []  # anything else: sources_from_config says what it takes
    columns = [e.get("text_column") if isinstance(e, dict) else None for e in listed]
    loaded: list[Corpus] = []

    def load(dataset: str) -> Any:
        column = columns[len(loaded)] or text_column
        loaded.append(load_raw(str(dataset), column, valid_percentage, extensions, streaming))
        return loaded[-1].splits["train"]

    mixture = Mixture(sources_from_config(entries, load))
    validation = []
    for src, part in zip(mixture.sources, loaded, strict=True):
        column = src.text_column or text_column
        split = part.splits["validation"].select_columns([column])
        validation.append(split if column == text_column else split.rename_column(column, text_column))
    info = {
        "source": "mixture of " + ", ".join(mixture.names),
        "mixture": [
            {"name": name, "probability": round(p, 4), **part.info}
            for name, p, part in zip(mixture.names, mixture.probabilities, loaded, strict=True)
        ],
        "documents": {"validation": sum(len(v) for v in validation)},
    }
    return Corpus({"train": mixture, "validation": concatenate_datasets(validation)}, info)
