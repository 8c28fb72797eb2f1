"""Packaging: every subpackage of l2bg (and kernels/) is installed, editable or not."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")
ROOT = Path(__file__).resolve().parents[2]


def test_every_subpackage_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    dirs = {cfg["package-dir"].get(p, p.replace(".", "/")) for p in listed}
    found = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "l2bg").rglob("__init__.py")}
    found |= {"kernels"}
    assert found <= dirs, f"add {sorted(found - dirs)} to [tool.setuptools] packages"
    for p in listed:
        assert (ROOT / cfg["package-dir"].get(p, p.replace(".", "/")) / "__init__.py").is_file()


def test_top_level_api_is_complete_and_lazy():
    import subprocess
    import sys

    import l2bg

    assert set(l2bg.__all__) == set(l2bg._EXPORTS) | set(l2bg._MODULES) | {"backends",
                                                                            "__version__"}
    code = ("import sys, l2bg; assert 'torch' not in sys.modules; "
            "from l2bg import JointNet, Learner, GrowStep, build_benchmark, rsa; "
            "assert JointNet.__module__ == 'l2bg.net.jointnet' and callable(rsa.rdm)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
