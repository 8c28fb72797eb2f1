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


def test_py_typed_ships():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py.typed" in cfg["package-data"]["l2bg"]
    assert (ROOT / "l2bg" / "py.typed").is_file()


def test_old_module_paths_warn_and_give_the_moved_module():
    """Every 0.1 path imports the module at its new path (the same object) with one
    DeprecationWarning naming the new path; the public names of l2bg.__all__ and the README's
    submodules warn about nothing."""
    import subprocess
    import sys

    code = """
import importlib, warnings
import l2bg
with warnings.catch_warnings():
    warnings.simplefilter("error")
    from l2bg import JointNet, Learner, strategies, rules, similarity, conflict, metrics, executor
    from l2bg.conflict import nucleus, task_score
    import l2bg.rsa.rsatoolbox
    from l2bg.data import Task
assert strategies.__name__ == "l2bg.learn.strategies" and rules.GROW_RULES
assert similarity.MEASURES and conflict.nucleus is nucleus
for old, new in sorted(l2bg.MOVED.items()):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new), old
    msgs = [str(w.message) for w in caught if w.category is DeprecationWarning]
    assert len(msgs) == 1 and new in msgs[0], (old, msgs)
import l2bg.jointnet as j, l2bg.net.jointnet as n
assert j is n and j.JointNet is JointNet
print(len(l2bg.MOVED))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True,
                         text=True).stdout
    assert int(out) >= 26


def test_editable_install_prints_no_banner_of_ours(tmp_path):
    """An editable build of this project (as `make setup` runs it through pip) raises no
    "Editable installation." notice: pip shows every warning of the build backend, and that one
    is about our package-dir layout (setup.py silences it); the wheel is still built."""
    import json
    import shutil
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")
    for name in ("l2bg", "kernels"):  # no csrc/: the build skips the C++ extension
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    code = """
import json, sys, warnings
from setuptools import build_meta
with warnings.catch_warnings(record=True) as seen:  # as pip's backend runner records them
    name = build_meta.build_editable(sys.argv[1])
print(json.dumps({"wheel": name, "warnings": [str(w.message) for w in seen
                                              if issubclass(w.category, UserWarning)]}))
"""
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "wheels")], cwd=src,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["wheel"].endswith(".whl") and (tmp_path / "wheels" / got["wheel"]).is_file()
    assert not [w for w in got["warnings"] if "Editable installation" in w], got["warnings"]
