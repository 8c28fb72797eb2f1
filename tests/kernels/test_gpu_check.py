"""``make gpu-check`` (benchmarks/gpu_check.py) on a machine without a GPU: it says so and exits
2; its dry run collects every CUDA test module and GPU benchmark with the optional packages
(optuna, mlxtend, rsatoolbox, scipy) made unimportable; its time limits, link-tree fallback,
test summary and goal lines work."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402

BLOCKER = """
import sys
BLOCKED = {"optuna", "mlxtend", "rsatoolbox", "scipy", "sklearn"}

class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, _Blocked())
"""


def _env(extra_path: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(extra_path), env.get("PYTHONPATH"))
                                            if p)  # fmt: skip
    return env


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_without_cuda_it_says_so_and_exits_2(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], env=_env(),
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2
    assert "no CUDA device" in r.stderr and "--dry-run" in r.stderr
    assert not (tmp_path / "report.md").exists()


def test_without_torch_it_names_the_fix(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.replace('"optuna", "mlxtend", "rsatoolbox", '
                                                           '"scipy", "sklearn"', '"torch"'))
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")],
                       env=_env(site), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and "PY=/path/to/python" in r.stderr, r.stderr


def test_dry_run_collects_everything_without_the_optional_packages(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"),
                        "--dry-run"], env=_env(site), capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "missing:" in out and "scipy" in out.splitlines()[0]  # the blocker took effect
    modules = next(line for line in out.splitlines() if "CUDA test modules" in line)
    for name in ("test_kernels_rsa.py", "test_kernels_launch.py", "test_executor.py",
                 "test_cuda_graph.py"):  # fmt: skip
        assert name in modules
    assert "GPU benchmark cases" in out


def test_a_step_past_its_limit_is_stopped(tmp_path):
    run = gpu_check.Run(out=tmp_path, deadline=time.monotonic() + 60)
    stage = gpu_check.Stage("sleep")
    start = time.monotonic()
    cmd = [sys.executable, "-c", "import time, subprocess, sys; "
           "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
           "time.sleep(60)"]  # fmt: skip
    gpu_check.RESERVE_S, reserve = 0, gpu_check.RESERVE_S
    try:
        assert gpu_check._run(run, stage, cmd, cap=6) is None
    finally:
        gpu_check.RESERVE_S = reserve
    assert stage.status == "timed out" and time.monotonic() - start < 30
    late = gpu_check.Stage("late")
    run.deadline = time.monotonic() + 3  # less than the reserve for the report
    assert gpu_check._run(run, late, cmd, cap=100) is None and late.status == "skipped"


def test_link_tree_makes_the_sources_importable(tmp_path):
    run = gpu_check.Run(out=tmp_path, deadline=time.monotonic() + 60)
    tree = gpu_check._link_tree(run)
    r = subprocess.run([sys.executable, "-c", "import l2bg, l2bg.kernels.launch as k; "
                        "print(l2bg.__file__); print(k.__file__)"], cwd=tmp_path,
                       env=_env(tree), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert all(line.startswith(str(tree)) for line in r.stdout.split())


def test_junit_summary_and_goal_lines(tmp_path):
    xml = tmp_path / "t.xml"
    xml.write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_a" name="ok"/>'
        '<testcase classname="tests.test_a" name="bad">'
        '<failure message="boom">trace</failure></testcase>'
        '<testcase classname="tests.test_a" name="skip"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    s = gpu_check.junit_summary(xml)
    assert (s["tests"], s["failures"], s["skipped"]) == (3, 1, 1)
    assert s["failed"] == ["tests.test_a::bad: boom"]
    base = dict(suite="rsa", op="rdm_triu", backend="triton", shape="n=1000", dtype="bf16")
    rows = [
        dict(base, pct_peak=65.0, median_s=0.1, notes={"goal_pct_peak": 60}),
        dict(base, pct_peak=20.0, median_s=0.1, notes={"goal_pct_peak": 60}),
        dict(base, pct_peak=None, median_s=0.004, notes={"goal_ms": 5, "ratio_to_goal": 0.8}),
        dict(base, pct_peak=None, median_s=0.1, notes={"goal": 2.0, "speedup": 1.5,
                                                        "goal_missed": True}),  # fmt: skip
    ]
    lines = gpu_check.goals(rows)
    assert [line.split(":")[0] for line in lines] == ["met", "MISSED", "met", "MISSED"]


def test_report_of_a_run(tmp_path):
    """The pipeline a GPU run takes, on CPU inputs: tests through pytest into the summary, rows
    through the harness, then report.md and report.csv with the device name."""
    import harness

    run = gpu_check.Run(out=tmp_path, deadline=time.monotonic() + 300, env=_env())
    tests = gpu_check.run_tests(run, [str(ROOT / "tests" / "learn" / "test_metrics.py")])
    assert tests["tests"] > 0 and tests["failures"] == tests["errors"] == 0
    harness.start_session(tmp_path / "bench")
    harness.record(suite="rsa", op="rdm_triu", backend="triton", shape="n=1000 d=65536",
                   dtype="bf16", timing=harness.Timing([0.010, 0.012, 0.011]), flops=1e12,
                   peak=1e15, goal_pct_peak=60)  # fmt: skip
    info = gpu_check.environment()
    info["devices"] = [dict(name="Fake GPU", capability="9.0", sms=132, memory_gib=80.0,
                            smem_per_block_optin=232448)]  # fmt: skip
    md = gpu_check.write_report(run, info, "installed", tests, ["tests/learn/test_metrics.py"], [],
                                harness.session().rows)  # fmt: skip
    text = md.read_text()
    assert text.startswith("# l2bg gpu-check: Fake GPU")
    assert "MISSED: rsa rdm_triu triton" in text and "| cuda tests | ok |" in text
    lines = (tmp_path / "report.csv").read_text().splitlines()
    assert "Fake GPU" in lines[0] and lines[1].startswith("suite,op") and len(lines) == 3
