"""The document filter ``plugin_template``: drop documents of fewer than ``min_lines`` lines.

A filter's ``reason(text)`` returns ``None`` to keep a document, or a short string saying why it is
dropped (clmkit counts documents per reason). A filter that remembers documents (deduplication)
clears that memory in ``reset()``, which clmkit calls before every pass over the data.
"""

from __future__ import annotations

from typing import Any

from clmkit import DocumentFilter, hookimpl
from clmkit.errors import ConfigError


class PluginTemplate(DocumentFilter):
    """Drops documents with fewer than ``min_lines`` non-blank lines."""

    def __init__(self, min_lines: int = 3) -> None:
        if min_lines < 0:
            raise ConfigError(f"filter 'plugin_template' min_lines must be >= 0, got {min_lines!r}. Fix filters.")
        self.min_lines = min_lines

    def reason(self, text: str) -> str | None:
        lines = sum(1 for line in text.splitlines() if line.strip())
        return f"fewer than {self.min_lines} lines" if lines < self.min_lines else None


@hookimpl
def clmkit_register_filters(register: Any) -> None:
    register("plugin_template", PluginTemplate)
