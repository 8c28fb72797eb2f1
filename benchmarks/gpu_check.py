"""``make gpu-check``: the CUDA tests and every GPU benchmark on this machine, one report.

    make gpu-check                              # python3 from PATH; PY=/path/to/python overrides
    python3 benchmarks/gpu_check.py [--out DIR] [--budget SECONDS] [--dry-run]

Made for a CUDA machine without network: it uses the Python, torch and triton already installed,
creates no virtual environment and installs nothing from a registry. When this checkout's
``l2bg`` is not importable it runs ``pip install --no-deps --no-build-isolation -e .`` once (to
build the C++ extension against the installed torch); if that fails it runs the sources through a
package tree of links under the output directory instead (pure-PyTorch executor). Optional
packages (optuna, mlxtend, rsatoolbox, scipy) and MNIST files are not needed: the benchmarks
use synthetic data and skip the rows that need what is missing.

Steps, each under a time limit so the whole run stays inside ``--budget`` (default 450 s):
1. the CUDA tests: every test module that has a test marked ``cuda`` (its other tests run on
   CUDA too where they can);
2. the GPU benchmarks (``-m cuda``): RSA kernels, whole trials, forward_all, the rsatoolbox
   drop-in, minibatch CKA on CUDA and ``torchrun`` at world size 1 on NCCL, one pytest process
   each.
It writes ``report.md`` (device, versions, test results, the benchmark table, goals met or
missed) and ``report.csv`` (every benchmark row, with the device name) to
``benchmarks/results/gpu-check/`` and exits 0 when everything passed, 1 when a test failed or a
step ran out of time, 2 when torch sees no CUDA device. ``--dry-run`` runs nowhere near a GPU:
it prints the plan and collects the tests and benchmarks (which checks they import with only
the packages present).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("optuna", "mlxtend", "rsatoolbox", "scipy")
NEEDED = ("torch", "triton", "numpy", "tqdm", "safetensors", "pytest", "pytest_benchmark",
          "hypothesis")  # fmt: skip
# (name, module, seconds at most): the RSA kernels first (this goals), then the whole
# trial (split-CIFAR-100 before pmnist), then forward_all, then the rsatoolbox drop-in's CUDA
# rows (its bootstraps included), then minibatch CKA on CUDA and torchrun at world size 1 on
# NCCL; later steps get what is left.
BENCH_STAGES = (("rsa", "bench_rsa.py", 100), ("trial", "bench_trial.py", 150),
                ("executor", "bench_executor.py", 60),
                ("rsatoolbox", "bench_rsatoolbox.py", 90),
                ("cka", "bench_cka.py", 60))  # fmt: skip
TEST_CAP_S = 160
RESERVE_S = 15  # kept back for the report


@dataclass
class Stage:
    name: str
    seconds: float = 0.0
    status: str = "not run"
    detail: str = ""
    log: Path | None = None


@dataclass
class Run:
    out: Path
    deadline: float
    env: dict = field(default_factory=lambda: dict(os.environ))
    stages: list[Stage] = field(default_factory=list)

    def left(self) -> float:
        return self.deadline - time.monotonic()


def _run(run: Run, stage: Stage, cmd: list[str], cap: float) -> subprocess.CompletedProcess | None:
    """Run cmd from the output directory (so this checkout's l2bg/ cannot shadow the installed
    package) under min(cap, time left); kill its process group on timeout."""
    limit = min(cap, run.left() - RESERVE_S)
    run.stages.append(stage)
    if limit < 5:
        stage.status, stage.detail = "skipped", "no time left in the budget"
        return None
    stage.log = run.out / f"{stage.name}.log"
    start = time.monotonic()
    with stage.log.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=run.out, env=run.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            stage.seconds = time.monotonic() - start
            stage.status, stage.detail = "timed out", f"stopped after {limit:.0f} s"
            return None
    stage.seconds = time.monotonic() - start
    stage.status = "ok" if rc == 0 else f"exit {rc}"
    return subprocess.CompletedProcess(cmd, rc)


# ------------------------------------------------------------------------------- environment


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def environment() -> dict:
    """Versions, the CUDA devices and which packages are present (no import of the optional)."""
    import torch

    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": f"{platform.python_version()} ({sys.executable})",
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "missing": [m for m in (*NEEDED, *OPTIONAL) if not _present(m)],
        "devices": [],
    }
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        info["triton"] = importlib.metadata.version("triton")
    if info["cuda_available"]:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["devices"].append({
                "name": p.name, "capability": f"{p.major}.{p.minor}",
                "sms": p.multi_processor_count, "memory_gib": round(p.total_memory / 2**30, 1),
                "smem_per_block_optin": getattr(p, "shared_memory_per_block_optin", None),
            })  # fmt: skip
    return info


_PROBE = ("import json, l2bg, l2bg.kernels.launch, l2bg.base.native as e; "
          "print(json.dumps([l2bg.__file__, e.native_status()]))")  # fmt: skip


def _probe(run: Run) -> tuple[bool, str]:
    r = subprocess.run([sys.executable, "-c", _PROBE], cwd=run.out, env=run.env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    if r.returncode != 0:
        return False, (r.stderr.strip().splitlines() or ["import failed"])[-1]
    path, native = json.loads(r.stdout.strip().splitlines()[-1])
    if not Path(path).resolve().is_relative_to(ROOT):
        return False, f"l2bg imports from {path}, not from this checkout"
    return True, f"l2bg from {Path(path).parent}; native executor: {native[1]}"


def _link_tree(run: Run) -> Path:
    """A package tree of links (l2bg/* and l2bg/kernels -> kernels/) for an uninstalled run."""
    pkg = run.out / "_pkg" / "l2bg"
    pkg.mkdir(parents=True, exist_ok=True)
    for src in (ROOT / "l2bg").iterdir():
        dst = pkg / src.name
        if not dst.exists():
            dst.symlink_to(src)
    if not (pkg / "kernels").exists():
        (pkg / "kernels").symlink_to(ROOT / "kernels")
    return pkg.parent


def ensure_l2bg(run: Run, dry: bool) -> str:
    """Make this checkout's l2bg importable by the steps; returns how."""
    ok, how = _probe(run)
    if ok:
        return f"installed: {how}"
    if dry:
        return f"would run pip install --no-deps --no-build-isolation -e . ({how})"
    stage = Stage("install")
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
           "--no-index", "-e", str(ROOT)]  # fmt: skip
    _run(run, stage, cmd, cap=240)
    ok, how = _probe(run)
    if ok:
        return f"pip install -e . built it: {how}"
    run.env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_link_tree(run)), run.env.get("PYTHONPATH")) if p
    )
    ok, how2 = _probe(run)
    stage.detail = f"pip install failed ({how}); using links under {run.out / '_pkg'}"
    return f"not installed; {'sources via links: ' + how2 if ok else 'l2bg unusable: ' + how2}"


# ------------------------------------------------------------------------------- steps


def cuda_test_files(run: Run) -> tuple[list[str], list[str]]:
    """Test modules with a test marked ``cuda``, and the modules that failed to import."""
    r = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "tests"), "--collect-only",
                        "-q", "-m", "cuda", "-p", "no:cacheprovider",
                        "--continue-on-collection-errors"], cwd=run.out, env=run.env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    files = sorted({line.split("::")[0] for line in r.stdout.splitlines() if "::" in line})
    errors = [os.path.relpath(os.path.normpath(run.out / line.split()[1]), ROOT)
              for line in r.stdout.splitlines() if line.startswith("ERROR ")]  # fmt: skip
    return [str(ROOT / f) if not Path(f).is_absolute() else f for f in files], errors


def junit_summary(path: Path) -> dict:
    if not path.exists():
        return {}
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in suite.iter("testcase"):
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                message = (node.get("message") or "").splitlines()[:1]
                failed.append(f"{case.get('classname')}::{case.get('name')}: {' '.join(message)}")
    return {**counts, "failed": failed}


def run_tests(run: Run, files: list[str]) -> dict:
    stage = Stage("cuda tests")
    xml = run.out / "tests.xml"
    cmd = [sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider",
           "--junitxml", str(xml), "-o", "addopts=-ra"]  # fmt: skip
    _run(run, stage, cmd, cap=TEST_CAP_S)
    return junit_summary(xml)


def run_benchmarks(run: Run) -> list[dict]:
    rows = []
    for name, module, cap in BENCH_STAGES:
        stage = Stage(f"bench {name}")
        out = run.out / f"bench-{name}"
        cmd = [sys.executable, "-m", "pytest", str(ROOT / "benchmarks" / module), "-m", "cuda",
               "-q", "-p", "no:cacheprovider", "--bench-out", str(out), "--benchmark-quiet",
               "-o", "addopts=-ra"]  # fmt: skip
        _run(run, stage, cmd, cap=cap)
        with contextlib.suppress(OSError, ValueError):
            rows += json.loads((out / "bench.json").read_text())["rows"]
    return rows


# ------------------------------------------------------------------------------- report


def goals(rows: list[dict]) -> list[str]:
    """One line per row that carries a goal: measured against it."""
    lines = []
    for r in rows:
        n = r.get("notes") or {}
        what = f"{r['suite']} {r['op']} {r['backend']} {r['shape']} {r['dtype']}"
        if "goal_pct_peak" in n and r.get("pct_peak") is not None:
            met = r["pct_peak"] >= n["goal_pct_peak"]
            lines.append(f"{'met' if met else 'MISSED'}: {what}: {r['pct_peak']:.1f} % of peak "
                         f"(goal >= {n['goal_pct_peak']} %)")  # fmt: skip
        elif "ratio_to_goal" in n and ("goal_ms" in n or "goal_s" in n):
            goal = f"{n['goal_ms']} ms" if "goal_ms" in n else f"{n['goal_s']} s"
            met = n["ratio_to_goal"] <= 1
            lines.append(f"{'met' if met else 'MISSED'}: {what}: {r['median_s']:.4g} s "
                         f"(goal <= {goal})")  # fmt: skip
        elif "goal" in n:
            lines.append(f"{'MISSED' if n.get('goal_missed') else 'met'}: {what}: speedup "
                         f"{n.get('speedup')} (goal {n['goal']})")  # fmt: skip
    return lines


def write_report(run: Run, info: dict, install: str, tests: dict, test_files: list[str],
                 collect_errors: list[str], rows: list[dict]) -> Path:  # fmt: skip
    import harness

    dev = info["devices"][0]["name"] if info["devices"] else "no CUDA device"
    lines = [f"# l2bg gpu-check: {dev}", ""]
    for k in ("date", "host", "python", "torch", "torch_cuda", "triton"):
        lines.append(f"- {k}: {info.get(k)}")
    for d in info["devices"]:
        lines.append(f"- device: {d['name']} (sm {d['capability']}, {d['sms']} SMs, "
                     f"{d['memory_gib']} GiB, {d['smem_per_block_optin']} B shared/block)")
    lines.append(f"- l2bg: {install}")
    lines.append(f"- missing packages: {', '.join(info['missing']) or 'none'}")
    lines += ["", "## Steps", "", "| step | status | seconds | detail |", "|---|---|---|---|"]
    for s in run.stages:
        lines.append(f"| {s.name} | {s.status} | {s.seconds:.0f} | {s.detail} |")
    lines += ["", "## CUDA tests", ""]
    lines.append(f"Modules: {', '.join(Path(f).name for f in test_files) or 'none found'}")
    if tests:
        passed = tests["tests"] - tests["failures"] - tests["errors"] - tests["skipped"]
        lines.append(f"{passed} passed, {tests['failures']} failed, {tests['errors']} errors, "
                     f"{tests['skipped']} skipped")  # fmt: skip
        lines += [f"- FAILED {f}" for f in tests["failed"]]
    lines += [f"- not collected: {e}" for e in collect_errors]
    lines += ["", "## Goals", ""] + [f"- {g}" for g in goals(rows)]
    lines += ["", "## Benchmarks", "", "```", harness.format_table(rows) if rows else "no rows",
              "```", ""]  # fmt: skip
    md = run.out / "report.md"
    md.write_text("\n".join(lines))
    harness.write_csv(run.out / "report.csv", f"l2bg gpu-check on {dev}; torch {info['torch']}; "
                      f"triton {info.get('triton')}; {info['date']}", rows)
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu-check")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for the whole run")
    p.add_argument("--dry-run", action="store_true", help="plan and collect only; no GPU needed")
    args = p.parse_args(argv)
    run = Run(out=args.out.resolve(), deadline=time.monotonic() + args.budget)
    run.out.mkdir(parents=True, exist_ok=True)
    run.env.pop("TRITON_INTERPRET", None)
    if not _present("torch"):
        print(f"gpu-check: torch is not importable by {sys.executable}; run it with the Python "
              "that has torch: make gpu-check PY=/path/to/python", file=sys.stderr)  # fmt: skip
        return 2
    info = environment()
    print(f"gpu-check: python {info['python']}, torch {info['torch']}, triton "
          f"{info.get('triton')}, missing: {', '.join(info['missing']) or 'none'}")  # fmt: skip
    if not info["cuda_available"] and not args.dry_run:
        print("gpu-check: no CUDA device is visible to torch (torch.cuda.is_available() is "
              f"False; torch built with CUDA {info['torch_cuda']}); run it on a CUDA machine, "
              "or pass --dry-run to check the plan here", file=sys.stderr)  # fmt: skip
        return 2
    install = ensure_l2bg(run, args.dry_run)
    print(f"gpu-check: {install}")
    files, errors = cuda_test_files(run)
    print(f"gpu-check: CUDA test modules: {', '.join(Path(f).name for f in files) or 'none'}")
    for e in errors:
        print(f"gpu-check: not collected: {e}")
    if args.dry_run:
        r = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "benchmarks"), "-m",
                            "cuda", "--collect-only", "-q", "-p", "no:cacheprovider"],
                           cwd=run.out, env=run.env, capture_output=True, text=True,
                           timeout=300)  # fmt: skip
        rows = [line for line in r.stdout.splitlines() if "::" in line]
        print(f"gpu-check: {len(rows)} GPU benchmark cases in "
              f"{', '.join(m for _, m, _ in BENCH_STAGES)}; budget {args.budget:.0f} s")
        if r.returncode != 0:
            print(r.stdout[-3000:], r.stderr[-2000:], file=sys.stderr)
        return 0 if r.returncode == 0 and files else 1
    tests = run_tests(run, files) if files else {}
    rows = run_benchmarks(run)
    md = write_report(run, info, install, tests, files, errors, rows)
    print(md.read_text())
    print(f"gpu-check: report {md} and {run.out / 'report.csv'}")
    bad = (not tests or tests["failures"] or tests["errors"]
           or any(s.status not in ("ok",) for s in run.stages if s.name != "install"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
