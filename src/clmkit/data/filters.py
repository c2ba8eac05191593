"""Document filters: drop raw documents before tokenization, and report how many each one removed and why.

Filters are named in the ``filters`` registry (hook ``clmkit_register_filters``) and chosen with
``ClmTrainingArguments.filters``: a list whose items are a name or a ``{name: kwargs}`` mapping,
applied in order. A document removed by one filter is not seen by the next.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from datasets import Dataset, IterableDataset

from clmkit.args import FilterSpec
from clmkit.errors import DataError

if TYPE_CHECKING:
    from clmkit.plugins import Plugins

BATCH_SIZE = 1000


class DocumentFilter:
    """Base of document filters: ``reason(text)`` says why a document is dropped, or ``None`` to keep it.

    A filter with state (deduplication) overrides ``reset``, which clmkit calls before every pass
    over the data, so a second epoch of a stream is filtered like the first.
    """

    def reason(self, text: str) -> str | None:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget what earlier documents taught the filter (nothing, for a stateless filter)."""


@dataclass
class FilterReport:
    """What one filter did to one split: documents it saw, and how many it removed for each reason."""

    name: str
    documents_in: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def removed(self) -> int:
        return sum(self.reasons.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "filter": self.name,
            "documents_in": self.documents_in,
            "removed": self.removed,
            "reasons": dict(self.reasons),
        }

    def __str__(self) -> str:
        why = ", ".join(f"{reason}: {n}" for reason, n in self.reasons.most_common())
        return f"filter {self.name!r} removed {self.removed} of {self.documents_in} documents" + (
            f" ({why})" if why else ""
        )


class FilterChain:
    """Filters applied in order, each with its report."""

    def __init__(self, filters: Sequence[tuple[str, DocumentFilter]]) -> None:
        self.filters = list(filters)
        self.reports = [FilterReport(name) for name, _ in self.filters]

    def __bool__(self) -> bool:
        return bool(self.filters)

    def reset(self) -> None:
        """Start a new pass: filter state and counts back to zero."""
        for (_, document_filter), report in zip(self.filters, self.reports, strict=True):
            document_filter.reset()
            report.documents_in = 0
            report.reasons.clear()

    def keep(self, texts: Iterable[Any]) -> list[bool]:
        """Whether each document survives every filter; counts what each filter removed."""
        kept = []
        for text in texts:
            text = text if isinstance(text, str) else ""
            survives = True
            for (_, document_filter), report in zip(self.filters, self.reports, strict=True):
                report.documents_in += 1
                reason = document_filter.reason(text)
                if reason is not None:
                    report.reasons[reason] += 1
                    survives = False
                    break
            kept.append(survives)
        return kept

    def keep_batch(self, batch: Mapping[str, list[Any]], indices: list[int], text_column: str) -> list[bool]:
        """``keep`` as a batched ``datasets`` filter; index 0 starts a new pass (a new epoch of a stream)."""
        if indices and indices[0] == 0:
            self.reset()
        return self.keep(batch[text_column])

    def emptied_by(self) -> FilterReport | None:
        """The first filter that removed every document reaching it, if any."""
        return next((r for r in self.reports if r.documents_in and r.removed == r.documents_in), None)

    def check_not_empty(self, split: str) -> None:
        """A ``DataError`` naming the filter that removed every document of ``split``."""
        report = self.emptied_by()
        if report is not None:
            raise DataError(
                f"{report} of the {split} split: it removed every document. "
                f"Loosen its arguments, or remove {report.name!r} from filters."
            )


def build_filters(plugins: Plugins, specs: Sequence[FilterSpec]) -> FilterChain:
    """Build the filters named in ``specs`` from the ``filters`` registry."""
    return FilterChain([(name, plugins.build("filters", name, **kwargs)) for name, kwargs in specs])


def filter_documents(
    dataset: Dataset | IterableDataset, chain: FilterChain, text_column: str, split: str
) -> Dataset | IterableDataset:
    """Drop the documents ``chain`` rejects: at once for a ``Dataset``, lazily (pass by pass) for a stream.

    A ``Dataset`` emptied by a filter is a ``DataError`` naming it; for a stream, the counts are
    those of the current pass and the check happens when the stream turns out to be empty.
    """
    if not chain:
        return dataset
    if isinstance(dataset, IterableDataset):
        return dataset.filter(
            chain.keep_batch,
            batched=True,
            batch_size=BATCH_SIZE,
            with_indices=True,
            fn_kwargs={"text_column": text_column},
        )
    chain.reset()
    keep: list[bool] = []
    for batch in dataset.select_columns([text_column]).iter(batch_size=BATCH_SIZE):
        keep.extend(chain.keep(batch[text_column]))
    chain.check_not_empty(split)
    return dataset if all(keep) else dataset.select([i for i, k in enumerate(keep) if k])
