"""GPU readiness on a CPU-only machine: every kernel configuration the launchers choose for the
CUDA benchmarks and tests (``launches`` of benchmarks/aot.py) compiles for sm_80 and sm_90, down to
cubin, and fits the target's shared memory. Register, stack and spill figures are printed for
tuning (under ``pytest -s`` only, so the suite's output stays dots; ``python benchmarks/aot.py``
prints the whole table), never asserted.

One subprocess (Triton's compiler needs TRITON_INTERPRET unset, which conftest sets for this
process) compiles every unique configuration once; the tests below read its report.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
pytest.importorskip("triton.backends.nvidia")

TARGETS = ("sm_80", "sm_90")
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # aot.py


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("aot") / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences a Triton 3.9 notice; the default
    cmd = [sys.executable, str(BENCHMARKS / "aot.py"), "--json", str(out), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if not out.exists():
        pytest.fail(f"benchmarks/aot.py wrote no report (rc {proc.returncode}):\n{proc.stderr}")
    return json.loads(out.read_text())


@pytest.fixture(scope="module", autouse=True)
def print_spills(report, request):
    """After the module, under ``pytest -s``: the compile time and every configuration that
    spills or uses a stack."""
    yield
    if request.config.getoption("capture") != "no":
        return
    from aot import Result, table

    results = [Result(**r) for r in report["results"]]
    spilling = [r for r in results if (r.spill_stores or 0) or (r.stack or 0)]
    print(f"\n\nAhead-of-time compile (triton {report['triton']}): {len(results)} "
          f"configurations in {report['wall_s']:.0f} s; {len(spilling)} with stack/spills")
    if spilling:
        print(table(spilling))


@pytest.mark.parametrize("target", TARGETS)
def test_every_configuration_compiles_and_fits_shared_memory(report, target):
    rows = [r for r in report["results"] if r["target"] == target]
    assert rows, f"nothing was compiled for {target}"
    bad = [f"{r['label']}: {r['error']} (for {r['sources']})" for r in rows if not r["ok"]]
    assert not bad, "\n".join(bad)
    assert all(r["shared"] <= r["shared_limit"] for r in rows)


@pytest.mark.parametrize("target", TARGETS)
def test_shared_memory_estimate_bounds_the_compiler(report, target):
    """``gram_shared_bytes`` (behind the block-size check) never under-estimates Triton."""
    rows = [r for r in report["results"] if r["target"] == target and r["shared_estimate"]]
    assert rows
    under = [r["label"] for r in rows if r["shared"] > r["shared_estimate"]]
    assert not under, under


def test_every_kernel_is_compiled(report):
    """A new @triton.jit kernel in l2bg.kernels must be reachable from aot.launches()."""
    found = set()
    for name in ("rdm", "compare", "rdm_stream"):
        module = importlib.import_module(f"l2bg.kernels.{name}")
        for attr, value in vars(module).items():
            fn = getattr(value, "fn", None)
            if attr.endswith("_kernel") and callable(fn):
                found.add(attr)
    compiled = {r["kernel"] for r in report["results"]}
    assert found and found <= compiled, found - compiled
