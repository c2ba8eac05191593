"""Preparing a run's datasets once, up front: filters, tokenization and chunking, for datasets,
streams and mixtures; shared by ``ClmTrainer`` and the Accelerate loop.

raw documents ─ filters (registry ``filters``) ─ tokenizer ─ chunker ─ examples. A ``Dataset`` is
prepared eagerly with statistics (``ChunkStats``, ``FilterReport``); an ``IterableDataset`` lazily,
batch by batch; a ``Mixture`` source by source, then interleaved by weight.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import pyarrow.compute as pc
from datasets import Dataset, Features, IterableDataset, List, Value, interleave_datasets

from clmkit.args import ClmTrainingArguments, parse_filter_specs
from clmkit.data.chunking import Chunker, ChunkStats, chunk_dataset, chunk_stats, column_names, tokenize_documents
from clmkit.data.filters import FilterChain, FilterReport, build_filters, filter_documents
from clmkit.data.mixtures import Mixture, Source
from clmkit.data.packing import require_boundary_collator
from clmkit.data.streaming import check_stream_not_empty, check_streaming_steps
from clmkit.errors import ConfigError, DataError
from clmkit.plugins import Plugins

logger = logging.getLogger(__name__)

RawData: TypeAlias = Dataset | IterableDataset | Mixture | Sequence[Source]


@dataclass
class PreparedData:
    """A run's datasets as examples, and what preparing them counted.

    ``stats`` holds a ``ChunkStats`` per split that is not a stream (``"train"``, ``"eval"`` or
    ``"eval_<name>"``, and ``"train/<source>"`` per mixture source); ``filter_reports`` a list of
    ``FilterReport`` per split that ran filters.
    """

    train: Dataset | IterableDataset | None
    eval: Dataset | IterableDataset | dict[str, Dataset | IterableDataset | None] | None
    stats: dict[str, ChunkStats] = field(default_factory=dict)
    filter_reports: dict[str, list[FilterReport]] = field(default_factory=dict)


def prepare_datasets(
    train_dataset: RawData | None,
    eval_dataset: RawData | Mapping[str, RawData] | None,
    tokenizer: Any,
    args: ClmTrainingArguments,
    chunker: Chunker,
    *,
    plugins: Plugins,
    collator: Any,
) -> PreparedData:
    """Prepare the train split and the eval split (or named eval splits) once, with their statistics."""
    prepared = PreparedData(None, None)
    preparer = Preparer(tokenizer, args, plugins, collator, prepared.stats, prepared.filter_reports)
    prepared.train = preparer.prepare(train_dataset, chunker, "train")
    check_streaming_steps(prepared.train, args.max_steps, args.max_tokens)
    if isinstance(eval_dataset, Mapping):
        prepared.eval = {k: preparer.prepare(v, chunker, f"eval_{k}") for k, v in eval_dataset.items()}
    else:
        prepared.eval = preparer.prepare(eval_dataset, chunker, "eval")
    return prepared


def chunker_names(dataset: object, default: str) -> list[str]:
    """The chunker names preparing ``dataset`` uses: ``default``, or each mixture source's (``default`` if unset)."""
    if isinstance(dataset, Mixture | list | tuple):
        sources = dataset.sources if isinstance(dataset, Mixture) else dataset
        return sorted({getattr(s, "chunker", None) or default for s in sources})
    return [default]


@dataclass
class Preparer:
    """What preparing any split needs; ``prepare`` turns one split into examples."""

    tokenizer: Any
    args: ClmTrainingArguments
    plugins: Plugins
    collator: Any
    stats: dict[str, ChunkStats]
    filter_reports: dict[str, list[FilterReport]]

    def prepare(
        self,
        dataset: RawData | None,
        chunker: Chunker,
        split: str,
        source: Source | None = None,
    ) -> Dataset | IterableDataset | None:
        """Filter, tokenize and chunk one split; already chunked examples that fit pass through.

        ``source`` (a mixture's) overrides the run's filters and text column.
        """
        if dataset is None:
            return None
        if isinstance(dataset, Mixture | list | tuple):
            return self.prepare_mixture(dataset if isinstance(dataset, Mixture) else Mixture(dataset), split)
        if not isinstance(dataset, Dataset | IterableDataset):
            raise DataError(
                f"the {split} dataset is a {type(dataset).__name__}; clmkit trains on a datasets.Dataset, "
                "IterableDataset or clmkit.Mixture. Wrap the texts, e.g. Dataset.from_dict({'content': texts})."
            )
        args = self.args
        text_column = (source and source.text_column) or args.text_column
        specs = parse_filter_specs(source.filters if source and source.filters is not None else args.filters)
        chunker_name = (source and source.chunker) or args.chunker
        if getattr(chunker, "emits_document_boundaries", False):
            require_boundary_collator(self.collator, f"chunker {chunker_name!r}")
        columns = column_names(dataset)
        filters = FilterChain([])
        if "input_ids" in columns and text_column not in columns:
            if specs:
                raise ConfigError(
                    f"the {split} dataset is already tokenized (no {text_column!r} column), and filters work on raw "
                    "text. Drop filters for it, or pass the raw text."
                )
            if "position_ids" in columns:  # e.g. saved by `clmkit prepare --chunker packed`
                require_boundary_collator(self.collator, f"the {split} dataset (examples with position_ids)")
            if isinstance(dataset, IterableDataset) or _max_length(dataset) <= args.context_length:
                return dataset
            tokenized = dataset.select_columns(["input_ids"])
        else:
            if text_column not in columns:
                raise DataError(
                    f"the {split} dataset has no text column {text_column!r}; its columns are {columns}. "
                    "Set text_column to the column that holds the text."
                )
            if isinstance(dataset, Dataset) and len(dataset) == 0:
                raise DataError(
                    f"the {split} dataset holds no document. Pass documents (a corpus of at least two files, or "
                    "rows, gives both a train and a validation split), or leave that dataset out."
                )
            filters = build_filters(self.plugins, specs)
            if filters:
                self.filter_reports[split] = filters.reports
            dataset = filter_documents(dataset, filters, text_column, split)
            for report in filters.reports if not isinstance(dataset, IterableDataset) else ():
                logger.info("%s data: %s", split, report)
            tokenized = tokenize_documents(dataset, self.tokenizer, text_column, args.preprocessing_num_workers)
        chunked = chunk_dataset(tokenized, chunker, args.preprocessing_num_workers)
        if isinstance(chunked, IterableDataset):
            check_stream_not_empty(chunked, filters, split, chunker_name)
            return chunked
        stats = chunk_stats(tokenized, chunked, chunker)
        self.stats[split] = stats
        logger.info("%s data: %s, fill rate %.3f", split, stats.as_dict(), fill_rate(stats, args.context_length))
        if stats.examples == 0:
            raise DataError(
                f"the {split} corpus yields no training example with chunker {chunker_name!r}: "
                f"{stats.documents_too_short} of {stats.documents} documents are shorter than the context length "
                f"{args.context_length} ({stats.tokens} tokens in all). Use chunker 'concat' or 'packed' (they keep "
                "short documents), a smaller context_length, or more text."
            )
        return chunked

    def prepare_mixture(self, mixture: Mixture, split: str) -> Dataset | IterableDataset:
        """Each source with its own chunker and filters, then ``interleave_datasets`` by weight."""
        parts = []
        for name, source in zip(mixture.names, mixture.sources, strict=True):
            chunker_name = source.chunker or self.args.chunker
            if source.chunker_kwargs is not None:
                kwargs = source.chunker_kwargs
            else:
                kwargs = self.args.plugin_kwargs("chunker") if source.chunker is None else {}
            chunker = self.plugins.build("chunkers", chunker_name, self.tokenizer, self.args.context_length, **kwargs)
            parts.append(self.prepare(source.dataset, chunker, f"{split}/{name}", source))
        return interleave(
            parts,
            mixture.probabilities,
            self.args.seed if mixture.seed is None else mixture.seed,
            mixture.stopping_strategy,
        )


def interleave(
    parts: Sequence[Dataset | IterableDataset], probabilities: Sequence[float], seed: int, stopping_strategy: str
) -> Dataset | IterableDataset:
    """Sample examples from ``parts`` with ``probabilities``, after giving them the same columns and types.

    Sources without document boundaries get ``position_ids`` 0..n-1 when another source has them;
    every column becomes a list of int32; datasets become streams when any source is one.
    """
    columns = [set(column_names(p)) for p in parts]
    if any("position_ids" in c for c in columns):
        parts = [
            p if "position_ids" in c else p.map(_add_positions, batched=True)
            for p, c in zip(parts, columns, strict=True)
        ]
        columns = [c | {"position_ids"} for c in columns]
    if any(c != columns[0] for c in columns):
        raise DataError(
            f"the mixture's sources make examples with different columns ({[sorted(c) for c in columns]}), "
            "which cannot be sampled together. Use chunkers that emit the same columns."
        )
    features = Features({name: List(Value("int32")) for name in sorted(columns[0])})
    parts = [p.cast(features) for p in parts]
    if any(isinstance(p, IterableDataset) for p in parts):
        parts = [p if isinstance(p, IterableDataset) else p.to_iterable_dataset() for p in parts]
    return interleave_datasets(parts, probabilities=list(probabilities), seed=seed, stopping_strategy=stopping_strategy)


def _add_positions(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return {"position_ids": [list(range(len(ids))) for ids in batch["input_ids"]]}


def fill_rate(stats: ChunkStats, context_length: int) -> float:
    """Fraction of the examples' ``context_length`` slots that hold real tokens (1.0 for full rows)."""
    slots = stats.examples * context_length
    return stats.tokens_kept / slots if slots else 0.0


def compare_chunkers(
    dataset: Dataset,
    tokenizer: Any,
    names: Sequence[str],
    context_length: int,
    text_column: str = "content",
    plugins: Plugins | None = None,
) -> list[dict[str, Any]]:
    """One row per chunker over the same documents, tokenized once: what each keeps, drops and pads.

    Row keys: ``chunker``, ``documents``, ``tokens`` (with the EOS a chunker adds), ``examples``,
    ``tokens_kept``, ``tokens_dropped``, ``padding`` (empty slots when every example is padded to
    ``context_length``) and ``fill_rate`` (real tokens / slots).
    """
    plugins = plugins or Plugins()
    tokenized = tokenize_documents(dataset, tokenizer, text_column)
    rows = []
    for name in names:
        chunker = plugins.build("chunkers", name, tokenizer, context_length)
        stats = chunk_stats(tokenized, chunk_dataset(tokenized, chunker), chunker)
        rows.append(
            {
                "chunker": name,
                "documents": stats.documents,
                "tokens": stats.tokens,
                "examples": stats.examples,
                "tokens_kept": stats.tokens_kept,
                "tokens_dropped": stats.tokens_dropped,
                "padding": stats.examples * context_length - stats.tokens_kept,
                "fill_rate": round(fill_rate(stats, context_length), 4),
            }
        )
    return rows


COMPARE_COLUMNS = (
    "chunker",
    "documents",
    "tokens",
    "examples",
    "tokens_kept",
    "tokens_dropped",
    "padding",
    "fill_rate",
)


def compare_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows of ``compare_chunkers`` as a Markdown table (what ``clmkit prepare --compare`` prints)."""
    lines = ["| " + " | ".join(COMPARE_COLUMNS) + " |", "| --- |" + " ---: |" * (len(COMPARE_COLUMNS) - 1)]
    for row in rows:
        cells = [f"`{row['chunker']}`"] + [
            f"{row[k]:.4f}" if k == "fill_rate" else f"{row[k]:,}" for k in COMPARE_COLUMNS[1:]
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _max_length(dataset: Dataset) -> int:
    if len(dataset) == 0:
        return 0
    return int(pc.max(pc.list_value_length(dataset.data.column("input_ids"))).as_py())
