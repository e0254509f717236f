"""The package list in pyproject.toml names every Python package of the mapped folders.

Why: CI installs in editable mode, which finds every folder; a wheel (``pip install .``, the GPU
kit of ../shared/gpu/pack.sh) holds only the listed packages. ``samurai_onnx.runtime.engine``
was once missing, and every engine import failed outside editable installs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")
REPO = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for name, folder in config["package-dir"].items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root).parts
            found.add(".".join((name, *rel)))
    assert found - listed == set(), f"missing from pyproject.toml packages: {sorted(found - listed)}"
    assert listed - found == set(), f"listed but not a package: {sorted(listed - found)}"
