"""Install the plugin packages of this folder before their tests are collected (CI runs them from a fresh env)."""

from __future__ import annotations

from pathlib import Path

from clmkit.testing import install_plugin_package


def pytest_configure(config) -> None:
    for folder in sorted(Path(__file__).parent.glob("*/pyproject.toml")):
        install_plugin_package(folder.parent)
