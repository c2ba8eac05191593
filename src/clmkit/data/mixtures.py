"""Dataset mixtures: several sources, each with its own chunker, filters and sampling weight.

Pass a ``Mixture`` as ``train_dataset``; ClmTrainer prepares each source on its own (filters,
tokenizer, the source's chunker) and samples examples from them with
``datasets.interleave_datasets`` in proportion to the weights. From a config file, build the
sources with ``sources_from_config``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from datasets import Dataset, IterableDataset

from clmkit.args import canonical_filters
from clmkit.errors import ConfigError

STOPPING_STRATEGIES = ("all_exhausted", "first_exhausted")


@dataclass
class Source:
    """One raw text dataset of a mixture and how to cut it.

    ``chunker`` / ``chunker_kwargs`` / ``filters`` / ``text_column`` left as ``None`` take the run's
    (``ClmTrainingArguments``) values; ``filters=[]`` applies none. ``weight`` is the relative
    probability of drawing the next example from this source.
    """

    dataset: Dataset | IterableDataset
    chunker: str | None = None
    chunker_kwargs: dict[str, Any] | None = None
    filters: list[Any] | str | None = None
    weight: float = 1.0
    text_column: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, Dataset | IterableDataset):
            raise ConfigError(
                f"source {self.name or ''} needs a datasets.Dataset or IterableDataset, "
                f"got {type(self.dataset).__name__}. Load the data first (e.g. with datasets.load_dataset)."
            )
        check_weight(self.weight, self.name or "")
        if self.filters is not None:
            self.filters = canonical_filters(self.filters)


def check_weight(weight: Any, source: str) -> None:
    """Refuse a weight that is not a positive number."""
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
        raise ConfigError(
            f"source {source!r} has weight {weight!r}; weights are sampling proportions and must be "
            "positive numbers. Give it a weight > 0, or leave the source out."
        )


@dataclass
class Mixture:
    """Sources sampled together. ``weights``, when given, replace the sources' own weights, in order
    (e.g. to rebalance sources from a config without editing them).

    ``stopping_strategy`` is ``interleave_datasets``': ``"all_exhausted"`` (default) draws until every
    source has been seen whole (smaller ones repeat), ``"first_exhausted"`` stops with the first.
    ``seed`` (default: the run's ``seed``) fixes the draw.
    """

    sources: Sequence[Source]
    weights: Sequence[float] | None = None
    seed: int | None = None
    stopping_strategy: str = "all_exhausted"
    names: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.sources = list(self.sources)
        if not self.sources or not all(isinstance(s, Source) for s in self.sources):
            raise ConfigError("a Mixture needs a non-empty list of clmkit.data.mixtures.Source objects.")
        self.names = [s.name or f"source{i}" for i, s in enumerate(self.sources)]
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"mixture source names must differ, got {self.names}. Rename the duplicates.")
        if self.weights is None:
            self.weights = [s.weight for s in self.sources]
        elif len(self.weights) != len(self.sources):
            raise ConfigError(
                f"the mixture has {len(self.sources)} sources but {len(self.weights)} weights "
                f"({list(self.weights)}). Give one weight per source, in order, or none (each source's own)."
            )
        self.weights = list(self.weights)
        for name, weight in zip(self.names, self.weights, strict=True):
            check_weight(weight, name)
        if self.stopping_strategy not in STOPPING_STRATEGIES:
            raise ConfigError(
                f"stopping_strategy {self.stopping_strategy!r} is not one of {', '.join(STOPPING_STRATEGIES)}."
            )

    @property
    def probabilities(self) -> list[float]:
        """Each source's chance of giving the next example: the weights, normalized to sum to 1."""
        weights = list(self.weights or ())
        return [w / sum(weights) for w in weights]


SOURCE_KEYS = tuple(f.name for f in fields(Source) if f.name != "dataset")


def sources_from_config(
    entries: Sequence[Mapping[str, Any]], load: Callable[[str], Dataset | IterableDataset]
) -> list[Source]:
    """Sources from a config's ``mixture:`` list; ``load(entry["dataset"])`` loads each dataset.

    Each entry holds ``dataset`` (what ``load`` understands, e.g. a path) and any of
    ``chunker``, ``chunker_kwargs``, ``filters``, ``weight``, ``text_column``, ``name``.
    """
    if isinstance(entries, Mapping) or not isinstance(entries, Sequence) or not entries:
        raise ConfigError(
            "mixture must be a non-empty list of sources, e.g. "
            "[{dataset: scripts/, chunker: packed, weight: 1}, {dataset: lib/, chunker: concat, weight: 3}]."
        )
    sources = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or "dataset" not in entry:
            raise ConfigError(f"mixture entry {i} ({entry!r}) needs a 'dataset' key naming the data to load.")
        unknown = sorted(set(entry) - {"dataset", *SOURCE_KEYS})
        if unknown:
            raise ConfigError(
                f"mixture entry {i} has unknown keys {unknown}; a source takes dataset, {', '.join(SOURCE_KEYS)}."
            )
        options = {k: v for k, v in entry.items() if k != "dataset"}
        options.setdefault("name", str(entry["dataset"]))
        sources.append(Source(load(entry["dataset"]), **options))
    return sources
