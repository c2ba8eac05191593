"""A plugin package template: ``new_plugin("my-loss")`` writes a package whose tests pass as generated.

The template lives in ``templates/plugin/`` as a working package named ``clmkit-plugin-template``
(module ``clmkit_plugin_template``, loss ``plugin_template``, class ``PluginTemplate``);
``new_plugin`` copies it with those names replaced.
"""

from __future__ import annotations

import re
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from clmkit.errors import ConfigError

TEMPLATE = "plugin"
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")


def template_names(name: str) -> dict[str, str]:
    """The placeholder -> replacement map for plugin ``name`` (longest placeholders first)."""
    ident = name.removeprefix("clmkit-").removeprefix("clmkit_").replace("-", "_")
    if not NAME_PATTERN.fullmatch(name) or not NAME_PATTERN.fullmatch(ident):
        raise ConfigError(
            f"plugin name {name!r} is not a lowercase name of letters, digits and single - or _ "
            "(starting with a letter). Pass e.g. 'focal-loss'."
        )
    return {
        "clmkit-plugin-template": "clmkit-" + ident.replace("_", "-"),
        "clmkit_plugin_template": "clmkit_" + ident,
        "plugin_template": ident,
        "PluginTemplate": "".join(part.capitalize() for part in ident.split("_")),
    }


def new_plugin(name: str, dest: str | Path = ".") -> Path:
    """Write the plugin package ``clmkit-<name>`` into the folder ``dest``; return its path.

    The package registers a loss named ``name`` (``-`` becomes ``_``) through the ``clmkit`` entry
    point, with a README and tests that pass once it is installed (``pip install -e .``).
    """
    names = template_names(name)
    target = Path(dest) / names["clmkit-plugin-template"]
    if target.exists():
        raise ConfigError(f"{str(target)!r} already exists. Pass another name or destination, or remove it.")
    _copy(files(__package__) / TEMPLATE, target, names)
    return target


def _copy(source: Traversable, target: Path, names: dict[str, str]) -> None:
    target.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.name == "__pycache__" or entry.name.endswith(".pyc"):
            continue
        destination = target / _replace(entry.name, names)
        if entry.is_dir():
            _copy(entry, destination, names)
        else:
            destination.write_text(_replace(entry.read_text(encoding="utf-8"), names), encoding="utf-8")


def _replace(text: str, names: dict[str, str]) -> str:
    for placeholder, value in names.items():
        text = text.replace(placeholder, value)
    return text
