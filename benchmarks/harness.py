"""The one benchmark harness: every suite records its rows here; they land in one CSV and one
JSON under ``benchmarks/results/`` (``--bench-out DIR`` or ``$L2BG_BENCH_OUT`` elsewhere) and
print as one table at the end of the pytest session. See benchmarks/README.md.

A suite (``benchmarks/bench_*.py``) does::

    from harness import calibrate_gemm, measure, record

    t = measure(fn, rounds=7, device="cpu", benchmark=benchmark)  # pytest-benchmark fixture
    record(suite="rsa", op="rdm_triu", backend="torch", shape="n=1000 d=16384",
           dtype="float32", timing=t, flops=2 * n * n * d, device="cpu")

``record`` fills the device name, the thread count and the throughput (FLOP/s from ``flops``,
else items/s from ``items``), the share of the device's dense peak where one is known (CUDA),
and appends the row to both files at once (a killed run keeps its rows). ``calibrate_gemm``
records a plain GEMM of a given shape: the rate BLAS delivers on this machine at this moment,
printed beside the rows it calibrates.
"""

from __future__ import annotations

import csv
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent
FULL = os.environ.get("L2BG_BENCH_FULL", "") not in ("", "0")
"""Heavy rows (full grids, full-size trials on the CPU) run only with L2BG_BENCH_FULL=1 or
``--bench-full``."""
COLUMNS = (
    "suite", "op", "backend", "device", "shape", "dtype", "threads", "rounds", "median_s",
    "p20_s", "p80_s", "throughput", "unit", "pct_peak", "peak_extra_mib", "notes",
)  # fmt: skip

# Dense peaks in TFLOP/s by device name: fp32 (CUDA cores), tf32 and bf16/fp16 tensor cores.
PEAKS = {
    "H100 PCIe": (51.2, 378.0, 756.0),
    "H100 NVL": (60.0, 417.0, 835.0),
    "H100": (66.9, 494.7, 989.4),
    "H200": (66.9, 494.7, 989.4),
    "GH200": (66.9, 494.7, 989.4),
    "A100": (19.5, 156.0, 312.0),
    "L40S": (91.6, 183.0, 366.0),
}


def device_name(device: str | torch.device) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({_cpu_model()}, {os.cpu_count()} cores)"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_flops(kind: str, device: str | torch.device) -> float | None:
    """Dense peak FLOP/s of ``kind`` ('fp32', 'tf32' or 'bf16') on a known CUDA device."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    for key, peaks in PEAKS.items():  # most specific names first
        if all(part in name for part in key.split()):
            return peaks[("fp32", "tf32", "bf16").index(kind)] * 1e12
    return None


def precision_kind(dtype: torch.dtype, tf32: bool = False) -> str:
    """The peak that applies to a computation in ``dtype`` (TF32 when enabled for fp32)."""
    if dtype in (torch.bfloat16, torch.float16):
        return "bf16"
    return "tf32" if tf32 else "fp32"


# ------------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Wall times of the measured rounds, in seconds."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def quantile(self, q: float) -> float:
        if len(self.times) == 1:
            return self.times[0]
        ordered = sorted(self.times)
        pos = q * (len(ordered) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _sync(device: str | torch.device) -> Callable[[], None]:
    dev = torch.device(device)
    if dev.type == "cuda":
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


def measure(
    fn: Callable[[], Any],
    *,
    rounds: int = 5,
    warmup: int = 1,
    device: str | torch.device = "cpu",
    benchmark: Any = None,
) -> Timing:
    """Time ``rounds`` calls of ``fn`` after ``warmup`` calls, each ended by a device sync.

    With an enabled pytest-benchmark fixture the rounds run through ``benchmark.pedantic`` (so
    ``--benchmark-json`` and friends see them) and its raw times are used.
    """
    sync = _sync(device)

    def once():
        out = fn()
        sync()
        return out

    if benchmark is not None and not getattr(benchmark, "disabled", False):
        benchmark.pedantic(once, rounds=rounds, warmup_rounds=warmup, iterations=1)
        return Timing(list(benchmark.stats.stats.data))
    for _ in range(warmup):
        once()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return Timing(times)


def _rss(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    return 0


def peak_extra_memory(fn: Callable[[], Any], device: str | torch.device = "cpu") -> int | None:
    """Bytes of memory fn needs at its peak beyond what was in use before: CUDA allocator
    peak, or the process's resident-set high-water mark on Linux (None elsewhere)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        fn()
        torch.cuda.synchronize(dev)
        return torch.cuda.max_memory_allocated(dev) - base
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    before = _rss("VmRSS")
    fn()
    return max(0, _rss("VmHWM") - before)


# ------------------------------------------------------------------------------- the session


def header() -> dict[str, Any]:
    """Machine and versions the rows were measured with."""

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    cuda = torch.cuda.is_available()
    return {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "machine": device_name("cpu"),
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "triton": version("triton"),
        "l2bg": version("l2bg"),
        "torch_threads": torch.get_num_threads(),
        "full": FULL,
    }


@dataclass
class Session:
    """The rows of one pytest session and the two files they are written to."""

    out: Path
    meta: dict[str, Any] = field(default_factory=header)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.out / "bench.csv"
        self.json_path = self.out / "bench.json"
        line = "; ".join(f"{k}={v}" for k, v in self.meta.items())
        write_csv(self.csv_path, f"l2bg benchmarks: {line}", [])
        self._dump_json()

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with self.csv_path.open("a", newline="") as f:
            csv.writer(f).writerow(csv_row(row))
        self._dump_json()

    def _dump_json(self) -> None:
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"header": self.meta, "rows": self.rows}, indent=1))
        tmp.replace(self.json_path)


def write_csv(path: Path, comment: str, rows: list[dict[str, Any]]) -> None:
    """A results CSV: the ``# comment`` line, the header (``COLUMNS``) and ``rows``."""
    with path.open("w", newline="") as f:
        f.write(f"# {comment}\n")
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(csv_row(r) for r in rows)


def csv_row(row: dict[str, Any]) -> list[Any]:
    """One row's cells in ``COLUMNS`` order, as the CSV writes them."""
    return [_cell(row.get(c)) for c in COLUMNS]


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, dict):
        return "; ".join(f"{k}={_cell(x)}" for k, x in v.items())
    return "" if v is None else v


_SESSION: Session | None = None


def session() -> Session:
    """The current session (created on first use, at ``$L2BG_BENCH_OUT`` or results/)."""
    global _SESSION
    if _SESSION is None:
        _SESSION = Session(Path(os.environ.get("L2BG_BENCH_OUT") or ROOT / "results"))
    return _SESSION


def start_session(out: Path | None = None) -> Session:
    """Begin a fresh session (conftest does this once per pytest run)."""
    global _SESSION
    _SESSION = Session(Path(out or os.environ.get("L2BG_BENCH_OUT") or ROOT / "results"))
    return _SESSION


def record(
    *,
    suite: str,
    op: str,
    backend: str,
    shape: str,
    dtype: str,
    timing: Timing,
    device: str | torch.device = "cpu",
    flops: float | None = None,
    items: float | None = None,
    unit: str | None = None,
    peak: float | None = None,
    peak_extra_bytes: int | None = None,
    threads: int | None = None,
    **notes: Any,
) -> dict[str, Any]:
    """Append one row to the session (and its files); returns it.

    Throughput is ``flops`` (per call) / median as FLOP/s, else ``items`` / median in
    ``unit`` (default items/s); ``peak`` (FLOP/s, e.g. ``peak_flops(...)``) adds the share of
    it. Extra keyword arguments become the row's notes.
    """
    median = timing.median
    if flops is not None:
        throughput, unit = flops / median, "FLOP/s"
    elif items is not None:
        throughput, unit = items / median, unit or "items/s"
    else:
        throughput, unit = None, None
    dev = torch.device(device)
    row = {
        "suite": suite,
        "op": op,
        "backend": backend,
        "device": device_name(dev),
        "shape": shape,
        "dtype": dtype,
        "threads": threads if threads is not None else (None if dev.type == "cuda"
                                                        else torch.get_num_threads()),
        "rounds": len(timing.times),
        "median_s": median,
        "p20_s": timing.quantile(0.2),
        "p80_s": timing.quantile(0.8),
        "throughput": throughput,
        "unit": unit,
        "pct_peak": 100 * throughput / peak if peak and throughput and unit == "FLOP/s" else None,
        "peak_extra_mib": None if peak_extra_bytes is None else peak_extra_bytes / 2**20,
        "notes": notes,
    }  # fmt: skip
    session().add(row)
    return row


def calibrate_gemm(
    suite: str,
    m: int,
    k: int,
    n: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    rounds: int = 5,
    benchmark: Any = None,
    label: str = "",
) -> float:
    """Record a plain (m x k) @ (k x n) GEMM of the given shape and return the FLOP/s of its
    fastest round: the rate this machine's BLAS reaches (the row shows the median; on a shared
    machine preempted rounds slow the median, not the best), the yardstick for other rows."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(m, k, device=device, dtype=dtype, generator=gen)
    b = torch.randn(k, n, device=device, dtype=dtype, generator=gen)
    t = measure(lambda: torch.mm(a, b), rounds=rounds, warmup=1, device=device,
                benchmark=benchmark)  # fmt: skip
    tf32 = torch.device(device).type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    record(suite=suite, op="gemm (calibration)", backend="torch", device=device,
                 shape=f"{m}x{k} @ {k}x{n}" + (f" ({label})" if label else ""),
                 dtype=str(dtype).removeprefix("torch."), timing=t, flops=2.0 * m * k * n,
                 peak=peak_flops(precision_kind(dtype, tf32), device),
                 best_rate=f"{2.0 * m * k * n / min(t.times) / 1e9:.1f} GFLOP/s")  # fmt: skip
    return 2.0 * m * k * n / min(t.times)


# ------------------------------------------------------------------------------- the table


def _si(v: float | None, unit: str | None) -> str:
    if v is None:
        return "-"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.2f} {prefix}{unit or ''}"
    return f"{v:.3g} {unit or ''}"


def _seconds(v: float) -> str:
    return f"{v * 1e3:.3f} ms" if v < 1 else f"{v:.3f} s"


def format_table(rows: list[dict[str, Any]], meta: dict[str, Any] | None = None) -> str:
    """The rows as a fixed-width text table, grouped by suite, with the session header."""
    lines = []
    if meta:
        lines.append("l2bg benchmarks: " + "; ".join(f"{k}={v}" for k, v in meta.items()))
    cols = ("suite", "op", "backend", "dev", "shape", "dtype", "thr", "median", "p20", "p80",
            "throughput", "%peak", "MiB", "notes")  # fmt: skip
    body = []
    for r in rows:
        notes = _cell(r["notes"]) if r["notes"] else ""
        body.append((
            r["suite"], r["op"], r["backend"], r["device"].split(" (")[0], r["shape"], r["dtype"],
            "-" if r["threads"] is None else str(r["threads"]),
            _seconds(r["median_s"]), _seconds(r["p20_s"]), _seconds(r["p80_s"]),
            _si(r["throughput"], r["unit"]),
            "-" if r["pct_peak"] is None else f"{r['pct_peak']:.1f}",
            "-" if r["peak_extra_mib"] is None else f"{r['peak_extra_mib']:.0f}",
            notes,
        ))  # fmt: skip
    widths = [max([len(c)] + [len(b[i]) for b in body]) for i, c in enumerate(cols[:-1])]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    devices = sorted({r["device"] for r in rows})
    lines.append("devices: " + "; ".join(devices))
    lines.append(fmt.format(*cols))
    lines.extend(fmt.format(*b) for b in body)
    return "\n".join(lines)
