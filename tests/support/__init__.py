"""Repository plumbing for the test suite (not part of the public kit ``clmkit.testing``).

- ``install_plugin_package(folder, target=None)`` / ``install_plugin_packages()``: pip-install the
  plugin packages of ``plugins/`` (or one rendered from the template) for real.
- ``pinned_env(**extra)``: the environment for a process a test starts and compares numbers with.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_PACKAGES = {name: ROOT / "plugins" / name for name in ("clmkit-fim", "clmkit-zloss")}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def pinned_env(**extra: str) -> dict[str, str]:
    """``os.environ`` plus ``extra``, with the thread count of this process pinned for a child process.

    Floating-point sums depend on how the work is split over threads: a number computed here and
    one computed in a process this test starts are bit for bit equal only with the same thread
    count. This process runs with ``torch.get_num_threads()`` (1, set by the suite's conftest);
    without ``OMP_NUM_THREADS`` a child would use every core.
    """
    import torch

    threads = str(torch.get_num_threads())
    return {**os.environ, **dict.fromkeys(THREAD_VARIABLES, threads), **extra}


def install_plugin_packages() -> None:
    """pip-install each package of ``plugins/`` unless this very version is installed already."""
    for folder in PLUGIN_PACKAGES.values():
        install_plugin_package(folder)


def install_plugin_package(folder: str | Path, target: str | Path | None = None) -> None:
    """pip-install the plugin package in ``folder``, without dependencies, into this interpreter or ``target``.

    Into the interpreter, nothing happens when the installed distribution is the folder's as is:
    same version, same ``clmkit`` entry points, same Python files byte for byte. ``target`` is a
    folder to install into instead (``pip install --target``; put it on ``sys.path`` to use it).
    The build is offline (``--no-build-isolation``) when this interpreter's setuptools can build wheels.
    """
    folder = Path(folder).resolve()
    pyproject = tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8"))
    if target is None and _installed_as_is(folder, pyproject):
        return
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "-q"]
    if _setuptools_version() >= (70, 1):  # builds wheels without the `wheel` package
        command.append("--no-build-isolation")
    if target is not None:
        command += ["--target", str(target)]
    done = subprocess.run([*command, str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} {folder} failed:\n{done.stdout}{done.stderr}")
    importlib.invalidate_caches()


def _setuptools_version() -> tuple[int, ...]:
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return ()
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def _source_root(folder: Path) -> Path:
    return folder / "src" if (folder / "src").is_dir() else folder


def _source_version(folder: Path, pyproject: dict[str, Any]) -> str | None:
    """The version the folder builds: ``project.version``, or the ``__version__ = "..."`` that a dynamic
    version reads (``[tool.setuptools.dynamic] version = {attr = "pkg.__version__"}``); None when neither says.
    """
    project = pyproject["project"]
    if "version" in project:
        return str(project["version"])
    attr = pyproject.get("tool", {}).get("setuptools", {}).get("dynamic", {}).get("version", {}).get("attr")
    if not isinstance(attr, str) or "." not in attr:
        return None
    module, name = attr.rsplit(".", 1)
    base = _source_root(folder) / module.replace(".", "/")
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    if not path.is_file():
        return None
    found = re.search(rf"^{re.escape(name)}\s*=\s*[\"']([^\"']+)[\"']", path.read_text(encoding="utf-8"), re.M)
    return found.group(1) if found else None


def _same_version(installed: str, source: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(installed) == Version(source)
    except InvalidVersion:
        return installed == source


def _installed_as_is(folder: Path, pyproject: dict[str, Any]) -> bool:
    project = pyproject["project"]
    try:
        dist = importlib.metadata.distribution(project["name"])
    except importlib.metadata.PackageNotFoundError:
        return False
    wanted = project.get("entry-points", {}).get("clmkit", {})
    have = {ep.name: ep.value for ep in dist.entry_points if ep.group == "clmkit"}
    version = _source_version(folder, pyproject)
    # without a version to compare (an unusual dynamic source), the files below decide: __version__ is in one of them
    if (version is not None and not _same_version(dist.version, version)) or have != wanted:
        return False
    root = _source_root(folder)
    relative = [p.relative_to(root) for p in root.rglob("*.py")]  # the checkout itself may sit below a tests/
    sources = {p.as_posix() for p in relative if "tests" not in p.parts}
    installed = {f.as_posix(): f for f in dist.files or [] if f.suffix == ".py"}
    if set(installed) != sources:
        return False
    return all(Path(dist.locate_file(f)).read_bytes() == (root / name).read_bytes() for name, f in installed.items())
