"""Plugin package templates: ``new_plugin("focal-loss", kind="loss")`` writes a package whose tests pass as generated.

The templates live in ``templates/plugin/``: ``package/`` is the skeleton of a distribution
``clmkit-plugin-template`` (module ``clmkit_plugin_template``; ``pyproject.toml``, README, the shared test
fixture and a test that every entry point is installed), and ``kinds/<kind>.py`` with ``kinds/test_<kind>.py``
is one working plugin of each kind (name ``plugin_template``, class ``PluginTemplate``) and its tests, which
use the contract checks of ``clmkit.testing``. ``new_plugin`` copies them with those names replaced; called
again with the same ``package``, it adds a plugin module to the package.
"""

from __future__ import annotations

import re
import tomllib
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from clmkit.errors import ConfigError

TEMPLATE = "plugin"
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
ENTRY_POINTS = "[project.entry-points.clmkit]\n"
# each kind of plugin -> the `clmkit train` flag that picks it by name (callbacks join every run)
KIND_FLAGS: dict[str, str | None] = {
    "loss": "--loss",
    "chunker": "--chunker",
    "collator": "--collator",
    "filter": "--filters",
    "param_grouper": "--param_grouper",
    "optimizer": "--optimizer",
    "model": "--architecture",
    "callback": None,
}
RESERVED = frozenset({"installed", "conftest"})  # names of the package's own files


def _checked_name(name: str, what: str, example: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"{what} {name!r} is not a lowercase name of letters, digits and single - or _ "
            f"(starting with a letter). Pass e.g. {example!r}."
        )
    return name


def template_names(name: str, package: str | None = None) -> dict[str, str]:
    """The placeholder -> replacement map for plugin ``name`` in distribution ``package`` (longest placeholders
    first); the distribution defaults to ``clmkit-<name>``."""
    ident = _checked_name(name, "plugin name", "focal-loss").removeprefix("clmkit-").removeprefix("clmkit_")
    ident = _checked_name(ident, "plugin name", "focal-loss").replace("-", "_")
    if ident in RESERVED:
        raise ConfigError(f"plugin name {name!r} is taken by a file of the package. Pass another name.")
    dist = _checked_name(package or "clmkit-" + ident.replace("_", "-"), "package name", "clmkit-my-plugins")
    return {
        "clmkit-plugin-template": dist.replace("_", "-"),
        "clmkit_plugin_template": dist.replace("-", "_"),
        "PluginTemplate": "".join(part.capitalize() for part in ident.split("_")),
        "plugin_template": ident,
    }


def clmkit_requirement() -> str:
    """The installed clmkit's major.minor series, as a requirement: ``clmkit>=0.2,<0.3``."""
    from clmkit import __version__

    major, minor = (int(part) for part in __version__.split(".")[:2])
    return f"clmkit>={major}.{minor},<{major}.{minor + 1}"


def new_plugin(
    name: str, dest: str | Path = ".", kind: str = "loss", package: str | None = None, version: str = "0.1.0"
) -> Path:
    """Write a plugin ``name`` of ``kind`` into the package ``package`` (default ``clmkit-<name>``) in the folder
    ``dest``, creating the package at ``version`` unless it exists; return the package's folder.

    The plugin is the module ``<package module>/<name>.py`` (``-`` becomes ``_``), registered under ``name``
    through a ``clmkit`` entry point of the same name, with ``tests/test_<name>.py``; its tests pass once the
    package is installed (``pip install -e .``).
    """
    if kind not in KIND_FLAGS:
        raise ConfigError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KIND_FLAGS)}. Pass one of these.")
    names = template_names(name, package)
    dist, module, ident = names["clmkit-plugin-template"], names["clmkit_plugin_template"], names["plugin_template"]
    target = Path(dest) / dist
    templates = files(__package__) / TEMPLATE
    if target.exists():
        _check_package(target, dist, ident)
    else:
        _check_version(version)
        extra = {
            '__version__ = "0.1.0"': f'__version__ = "{version}"',
            'dependencies = ["clmkit"]': f'dependencies = ["{clmkit_requirement()}"]',
        }
        _copy(templates / "package", target, {**extra, **names})
    source = target / "src" / module
    (source / f"{ident}.py").write_text(_render(templates / "kinds" / f"{kind}.py", names), encoding="utf-8")
    (target / "tests" / f"test_{ident}.py").write_text(
        _render(templates / "kinds" / f"test_{kind}.py", names), encoding="utf-8"
    )
    _add_entry_point(target / "pyproject.toml", f'{ident} = "{module}.{ident}"\n')
    flag = KIND_FLAGS[kind]
    use = f"`clmkit train {flag} {ident}`" if flag else "added to every run while the package is installed"
    with (target / "README.md").open("a", encoding="utf-8") as readme:
        readme.write(f"- `{ident}` ({kind}, `src/{module}/{ident}.py`): {use}\n")
    return target


def _check_package(target: Path, dist: str, ident: str) -> None:
    """An existing folder takes a new plugin only when it is package ``dist`` from this template without ``ident``."""
    pyproject = target / "pyproject.toml"
    try:
        meta = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        meta = {}
    project = meta.get("project", {})
    if project.get("name") != dist or ENTRY_POINTS not in pyproject.read_text(encoding="utf-8"):
        raise ConfigError(
            f"{str(target)!r} already exists and is not the plugin package {dist!r} (no pyproject.toml with that "
            "name and a [project.entry-points.clmkit] table). Pass another name, --package or destination."
        )
    if ident in project.get("entry-points", {}).get("clmkit", {}) or (target / "tests" / f"test_{ident}.py").exists():
        raise ConfigError(f"package {dist!r} already has a plugin {ident!r}. Pass another name.")


def _add_entry_point(pyproject: Path, line: str) -> None:
    """Append ``line`` to the ``clmkit`` entry-point table, wherever the table is in the file."""
    text = pyproject.read_text(encoding="utf-8")
    start = text.index(ENTRY_POINTS) + len(ENTRY_POINTS)
    following = text.find("\n[", start)
    end = following + 1 if following != -1 else len(text)
    body = text[start:end].rstrip("\n")
    pyproject.write_text(text[:start] + (body + "\n" if body else "") + line + text[end:], encoding="utf-8")


def _check_version(version: str) -> None:
    from packaging.version import InvalidVersion, Version

    try:
        Version(version)
    except InvalidVersion:
        raise ConfigError(f"version {version!r} is no Python package version. Pass e.g. 0.1.0.") from None


def _copy(source: Traversable, target: Path, names: dict[str, str]) -> None:
    target.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.name == "__pycache__" or entry.name.endswith(".pyc"):
            continue
        destination = target / _replace(entry.name, names)
        if entry.is_dir():
            _copy(entry, destination, names)
        else:
            destination.write_text(_render(entry, names), encoding="utf-8")


def _render(template: Traversable, names: dict[str, str]) -> str:
    return _replace(template.read_text(encoding="utf-8"), names)


def _replace(text: str, names: dict[str, str]) -> str:
    for placeholder, value in names.items():
        text = text.replace(placeholder, value)
    return text
