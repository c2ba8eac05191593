"""clmkit-plugin-template: clmkit plugins, one module each, registered through the entry points of pyproject.toml."""

__version__ = "0.1.0"
