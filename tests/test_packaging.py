"""Packaging: every subpackage of l2bg (and kernels/) is installed, editable or not."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")
ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    dirs = {cfg["package-dir"].get(p, p.replace(".", "/")) for p in listed}
    found = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "l2bg").rglob("__init__.py")}
    found |= {"kernels"}
    assert found <= dirs, f"add {sorted(found - dirs)} to [tool.setuptools] packages"
    for p in listed:
        assert (ROOT / cfg["package-dir"].get(p, p.replace(".", "/")) / "__init__.py").is_file()
