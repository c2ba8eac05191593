"""Install the plugin packages of this folder before their tests are collected (CI runs them from a fresh env)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the repository's test plumbing

from support import install_plugin_package  # noqa: E402


def pytest_configure(config) -> None:
    for folder in sorted(Path(__file__).parent.glob("*/pyproject.toml")):
        install_plugin_package(folder.parent)
