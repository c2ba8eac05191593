"""Every entry point of pyproject.toml is installed and loads its module: run ``pip install -e .`` after adding one."""

import importlib
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

DECLARED = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]["entry-points"]


@pytest.mark.parametrize(("name", "module"), sorted(DECLARED["clmkit"].items()))
def test_the_installed_entry_point_loads_the_plugin(name, module):
    found = {ep.name: ep for ep in entry_points(group="clmkit")}
    assert name in found, f"entry point {name!r} is not installed: run `pip install -e .` in the package's folder"
    assert found[name].load() is importlib.import_module(module)
