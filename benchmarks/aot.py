"""Ahead-of-time compilation of every kernel configuration the launchers choose, for CUDA
targets, on a machine without a GPU::

    python benchmarks/aot.py                       # sm_80 and sm_90, table on stdout
    python benchmarks/aot.py --arch 90 --json report.json --jobs 2

Triton compiles down to a cubin for a ``GPUTarget`` with no GPU present (ptxas ships in the
triton wheel), so what would otherwise fail only at the first launch on a GPU shows up here:
compile errors and shared memory beyond the target's limit. Registers, stack and spill bytes
(``ptxas -v``, else ``cuobjdump --dump-resource-usage``) are reported for tuning.

What is compiled: the launches of the RSA benchmark grid, of the whole-trial benchmark and of the
CUDA tests (``launches()``), each turned into the kernels its launcher runs with the launch
parameters ``l2bg.kernels.launch.gram_config`` picks for the target (A100 limits for sm_80, H100
for sm_90). The kernel arguments below mirror the launchers' calls (same order, same integer
values, so Triton specialises them the same way: ints equal to 1 become constants, multiples of
16 get divisibility hints); a kernel that gains or loses an argument fails here at once.

Needs a process where TRITON_INTERPRET is unset (the interpreter replaces the compiler).
Triton is imported lazily: importing this module for its grids costs nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from l2bg.kernels.launch import (
    A100,
    H100,
    gram_config,
    gram_shared_bytes,
    k_split,
    moments_config,
    strip,
)

# ------------------------------------------------------------------------------- what to compile

RDM_BENCH_GRID = [(n, d) for n in (500, 1000, 2000) for d in (16384, 131072, 524288)]
"""(n, d) of the CUDA RDM benchmark rows (benchmarks/bench_rsa.py)."""
RDM_BENCH_MODES = ("fp32-ieee", "fp32-tf32", "bf16")
"""Precision modes of the CUDA RDM benchmark rows: (dtype, precision) by ``mode_dtype``."""
CUDA_TEST_BLOCKS = (16, 32, 64)
"""Output tiles the CUDA property tests draw (tests/kernels/test_kernels_rsa.py)."""
CUDA_TEST_BLOCKS_K = (16, 32, 64)
"""d-blocks the CUDA property tests draw."""


def mode_dtype(mode: str) -> tuple[str, str]:
    """(dtype name, precision) of a benchmark mode such as 'fp32-tf32' or 'bf16'."""
    if mode.startswith("fp32-"):
        return "float32", mode.split("-", 1)[1]
    return {"bf16": "bfloat16", "fp16": "float16"}[mode], "ieee"


@dataclass(frozen=True)
class Launch:
    """One launcher call as a benchmark or a test makes it (shapes and options only)."""

    op: str  # rdm | stream | pearson | spearman
    n: int
    d: int = 0
    batch: int = 1
    dtype: str = "float32"
    precision: str = "ieee"
    triu: bool = False
    triangles: bool = False
    split_k: int | None = None
    block: int | None = None
    block_k: int | None = None
    transposed: bool = False  # the input is the transpose of a contiguous tensor (a view)
    source: str = ""


def _trial_launches() -> list[Launch]:
    """RSA of the whole-trial benchmark at full size: every bind candidate's RDM of a slot in one
    batched call (K = 1..9 candidates), then Spearman on the packed triangles (float64 ranks)."""
    out = []
    # n = 500 RSA samples (the default, min(500, |V_t|)); widths of the expandable slots:
    # split-CIFAR-100 convnet conv1..3, fc1, fc2; permuted-MNIST MLP fc1..3 and the shared head.
    for n, widths in ((500, (12544, 4608, 1024, 2048)), (500, (300, 10))):
        for d in widths:
            for k in range(1, 10):
                out.append(Launch("rdm", n, d, batch=k, triu=True, source="trial"))
        out.append(Launch("spearman", n, triangles=True, dtype="float64", source="trial"))
    return out


def _bench_launches() -> list[Launch]:
    out = []
    for n, d in RDM_BENCH_GRID:
        for mode in RDM_BENCH_MODES:
            dtype, precision = mode_dtype(mode)
            out.append(Launch("rdm", n, d, dtype=dtype, precision=precision, triu=True,
                              source="bench"))  # fmt: skip
    out.append(Launch("spearman", 1000, triangles=True, dtype="float64", source="bench"))
    return out


def _test_launches() -> list[Launch]:
    out = []
    for block in CUDA_TEST_BLOCKS:
        for block_k in CUDA_TEST_BLOCKS_K:
            for split in (1, 3):
                for triu in (False, True):
                    out.append(Launch("rdm", 300, 700, batch=3, triu=triu, split_k=split,
                                      block=block, block_k=block_k, source="test"))  # fmt: skip
        out.append(Launch("stream", 200, 300, batch=2, block=block,
                          block_k=CUDA_TEST_BLOCKS_K[0], source="test"))  # fmt: skip
    for d in (1, 2, 3, 5, 9, 17, 40, 80, 200, 700, 1000):  # every row-stats block the tests hit
        out.append(Launch("rdm", 257, d, batch=3, source="test"))
    for dtype, precision in (("float32", "tf32"), ("float16", "ieee"), ("bfloat16", "ieee")):
        out.append(Launch("rdm", 257, 1000, batch=3, dtype=dtype, precision=precision,
                          source="test"))  # fmt: skip
    for op in ("pearson", "spearman"):
        for triangles in (False, True):
            for n in (258, 400):  # rows and triangles unaligned / 16-aligned
                out.append(Launch(op, n, batch=2, triangles=triangles, source="test"))
    # transposed views (tests/kernels/test_kernels_launch.py): strided loads, no unit-stride const.
    out.append(Launch("rdm", 300, 700, batch=2, transposed=True, source="test"))
    out.append(Launch("rdm", 300, 700, batch=2, transposed=True, split_k=3, source="test"))
    out.append(Launch("pearson", 400, batch=2, transposed=True, source="test"))
    return out


def launches() -> list[Launch]:
    """Every launch the CUDA benchmarks and tests make (duplicates are compiled once)."""
    return _bench_launches() + _trial_launches() + _test_launches()


# ------------------------------------------------------------------------------- kernel specs


@dataclass(frozen=True)
class Ptr:
    """A tensor argument: a pointer to ``dtype`` elements (16-byte aligned, as allocated)."""

    dtype: str


_TRITON_DTYPE = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64",
                 "int32": "i32"}  # fmt: skip


@dataclass(frozen=True)
class KernelSpec:
    """One compilation: a kernel of ``l2bg.kernels.<module>``, its arguments (runtime values
    and constexprs, by name) and launch options."""

    module: str
    kernel: str
    args: tuple[tuple[str, object], ...]
    num_warps: int = 4
    num_stages: int = 3

    def label(self) -> str:
        consts = [f"{k}={v}" for k, v in self.args if k.isupper() and not isinstance(v, Ptr)]
        return f"{self.kernel}[{', '.join(consts)}] w{self.num_warps} s{self.num_stages}"


def _spec(module: str, kernel: str, names: Sequence[str], values: Sequence[object],
          consts: dict, **options: int) -> KernelSpec:  # fmt: skip
    if len(names) != len(values):
        raise ValueError(f"{kernel}: {len(names)} names for {len(values)} values")
    args = tuple(zip(names, values, strict=True)) + tuple(consts.items())
    return KernelSpec(module, kernel, args, **options)


def _strides(shape: Sequence[int], transposed: bool = False) -> list[int]:
    """Strides of a contiguous tensor of ``shape``, or of ``t.mT`` for a contiguous t."""
    if not transposed:
        return _contiguous_strides(shape)
    *lead, r, c = shape
    s = _contiguous_strides([*lead, c, r])
    return [*s[:-2], s[-1], s[-2]]


def _contiguous_strides(shape: Sequence[int]) -> list[int]:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(int(s), 1)
    return strides[::-1]


def _next_pow2(v: int) -> int:
    return 1 << max(0, (int(v) - 1).bit_length())


_GRAM = ("X", "MEAN", "INV", "TILES", "OUT", "WS", "CORR", "n", "d", "k_per_split",
         "corr_weight", "stride_xb", "stride_xn", "stride_xd", "stride_ob", "stride_or",
         "stride_oc")  # fmt: skip
_DIST = ("WS", "INV", "TILES", "OUT", "n", "n_split", "stride_ob", "stride_or", "stride_oc")
_STATS = ("X", "MEAN", "INV", "SS", "AMAX", "n", "d", "stride_xb", "stride_xn", "stride_xd")


def _stats_spec(x: Ptr, n: int, d: int, strides: list[int]) -> KernelSpec:
    """``row_stats``: one program per row, d in blocks of up to 1024."""
    f32 = Ptr("float32")
    values = [x, f32, f32, f32, f32, n, d, *strides]
    return _spec("rdm", "_row_stats_kernel", _STATS, values, dict(BLOCK_D=min(1024, _next_pow2(d))))


def _rdm_specs(launch: Launch, limits) -> list[KernelSpec]:
    """The kernels ``l2bg.kernels.rdm.rdm`` launches for this call (``gram_config`` choices)."""
    b, n, d = launch.batch, launch.n, max(launch.d, 1)
    dtype = getattr(torch, launch.dtype)
    cfg = gram_config(n, d, b, dtype, limits)
    block = launch.block or cfg["block"]
    block_k = launch.block_k or cfg["block_k"]
    split_k = launch.split_k or cfg["split_k"]
    opts = dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    x = Ptr(launch.dtype)
    f32 = Ptr("float32")
    xs = _strides((b, n, d), launch.transposed)
    specs = [_stats_spec(x, n, d, xs)]
    m = n * (n - 1) // 2
    so = [m, 0, 1] if launch.triu else _contiguous_strides((b, n, n))
    k_per_split, split_k = k_split(d, split_k, block_k)
    common = dict(BLOCK=block, BLOCK_K=block_k, PRECISION=launch.precision,
                  LOW=launch.dtype != "float32")  # fmt: skip
    tiles = Ptr("int32")
    values = [x, f32, f32, tiles, f32, f32, f32, n, d, k_per_split, 0.0, *xs, *so]
    if split_k == 1:
        specs.append(_spec("rdm", "_gram_tile_kernel", _GRAM, values,
                           dict(MODE=0, TRIU=launch.triu, **common), **opts))  # fmt: skip
    else:
        specs.append(_spec("rdm", "_gram_tile_kernel", _GRAM, values,
                           dict(MODE=1, TRIU=False, **common), **opts))  # fmt: skip
        dist = dict(TRIU=launch.triu, BLOCK=block, STRIP=strip(block))
        values = [f32, f32, tiles, f32, n, split_k, *so]
        specs.append(_spec("rdm", "_dist_tile_kernel", _DIST, values, dist, **opts))
    return specs


def _stream_specs(launch: Launch, limits) -> list[KernelSpec]:
    """``RDMStream.update`` (one slice of d features) and ``result`` (both layouts)."""
    b, n, d = launch.batch, launch.n, launch.d
    cfg = gram_config(n, d, b, getattr(torch, launch.dtype), limits)
    block = launch.block or cfg["block"]
    block_k = launch.block_k or cfg["block_k"]
    x, f32, tiles = Ptr(launch.dtype), Ptr("float32"), Ptr("int32")
    xs = _contiguous_strides((b, n, d))
    specs = [_stats_spec(x, n, d, xs)]
    specs.append(_spec("rdm", "_gram_tile_kernel", _GRAM,
                       [x, f32, f32, tiles, f32, f32, f32, n, d, d, 0.5, *xs, 0, 0, 0],
                       dict(MODE=2, TRIU=False, BLOCK=block, BLOCK_K=block_k,
                            PRECISION=launch.precision, LOW=launch.dtype != "float32"),
                       num_warps=cfg["num_warps"], num_stages=cfg["num_stages"]))  # fmt: skip
    for triu in (False, True):
        so = [n * (n - 1) // 2, 0, 1] if triu else _contiguous_strides((b, n, n))
        specs.append(_spec("rdm", "_dist_tile_kernel", _DIST, [f32, f32, tiles, f32, n, 1, *so],
                           dict(TRIU=triu, BLOCK=block, STRIP=strip(block)),
                           num_warps=cfg["num_warps"]))  # fmt: skip
    return specs


def _compare_specs(launch: Launch, limits) -> list[KernelSpec]:
    """``l2bg.kernels.compare.pearson``/``spearman``: the moments pass on RDMs or triangles
    (Spearman always runs it on float64 ranks of the packed triangles)."""
    cfg = moments_config(limits)
    b, n = launch.batch, launch.n
    m = n * (n - 1) // 2
    full = launch.op == "pearson" and not launch.triangles
    dtype = "float64" if launch.op == "spearman" else launch.dtype
    t, f64 = Ptr(dtype), Ptr("float64")
    if full:
        s = _strides((b, n, n), launch.transposed)
        names = ("A", "B", "SHIFT_A", "SHIFT_B", "OUT", "n", "stride_ab", "stride_ar",
                 "stride_ac", "stride_bb", "stride_br", "stride_bc")  # fmt: skip
        return [_spec("compare", "_moments_full_kernel", names, [t, t, f64, f64, f64, n, *s, *s],
                      dict(BLOCK_R=cfg["block_r"], BLOCK_C=cfg["block_c"]))]
    s = [m, 1]
    names = ("A", "B", "SHIFT_A", "SHIFT_B", "OUT", "m", "chunk", "stride_ab", "stride_am",
             "stride_bb", "stride_bm")  # fmt: skip
    return [_spec("compare", "_moments_flat_kernel", names,
                  [t, t, f64, f64, f64, m, cfg["chunk"], *s, *s], dict(BLOCK=cfg["block"]))]


def kernel_specs(launch: Launch, limits) -> list[KernelSpec]:
    """The kernels one launch compiles on a device with ``limits``."""
    if launch.op == "rdm":
        return _rdm_specs(launch, limits)
    if launch.op == "stream":
        return _stream_specs(launch, limits)
    return _compare_specs(launch, limits)


# ------------------------------------------------------------------------------- compilation


@dataclass(frozen=True)
class Target:
    name: str
    arch: int

    @property
    def limits(self):
        return A100 if self.arch < 90 else H100


TARGETS = {80: Target("sm_80", 80), 90: Target("sm_90", 90)}


@dataclass
class Result:
    """What compiling one spec for one target gave."""

    target: str
    kernel: str
    label: str
    sources: list[str] = field(default_factory=list)
    ok: bool = False
    error: str | None = None
    shared: int | None = None
    shared_limit: int | None = None
    shared_estimate: int | None = None
    registers: int | None = None
    stack: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    seconds: float = 0.0


def _signature(fn, args: dict) -> tuple[dict, dict, dict]:
    """Triton signature, constexprs and attributes of a call with these argument values,
    specialised as Triton's launcher would (ints equal to 1 become constants, pointers and
    multiples of 16 get divisibility 16)."""
    missing = set(fn.arg_names) ^ set(args)
    if missing:
        raise ValueError(f"{fn.__name__}: arguments out of step with the kernel: {sorted(missing)}")
    const_params = {p.name for p in fn.params if p.is_constexpr}
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        v = args[name]
        if name in const_params:
            signature[name], constexprs[name] = "constexpr", v
        elif isinstance(v, Ptr):
            signature[name] = "*" + _TRITON_DTYPE[v.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{fn.__name__}.{name}: unsupported value {v!r}")
        elif isinstance(v, float):
            signature[name] = "fp32"
        elif v == 1:
            signature[name], constexprs[name] = "constexpr", 1
        else:
            signature[name] = "i32" if -(2**31) <= v < 2**31 else "i64"
            if v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


def _tool(name: str) -> str | None:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(path) if path.exists() else None


def _ptxas(arch: int) -> str | None:
    """The ptxas Triton itself uses for ``arch`` (it differs between Triton versions)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
    except ImportError:
        return _tool("ptxas")
    for call in (lambda: get_ptxas(arch), lambda: get_ptxas()):
        try:
            tool = call()
        except TypeError:
            continue
        except Exception:  # noqa: BLE001 - fall back to the wheel's binary
            break
        return getattr(tool, "path", tool)
    return _tool("ptxas")


def _resources(ptx: str, cubin: bytes, arch: int) -> dict:
    """Registers, stack and spill bytes: ``ptxas -v`` on the PTX (the ptxas Triton uses, same
    options that matter), else ``cuobjdump --dump-resource-usage`` on the cubin (no spills)."""
    out: dict = {}
    ptxas = _ptxas(arch)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        if ptxas:
            gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
            cmd = [ptxas, "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={gpu}",
                   str(src), "-o", str(Path(tmp) / "k.o")]  # fmt: skip
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:  # older ptxas without --regAllocOptLevel
                cmd.remove("--regAllocOptLevel=2")
                r = subprocess.run(cmd, capture_output=True, text=True)
            log = r.stdout + r.stderr
            if m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes "
                              r"spill loads", log):  # fmt: skip
                out.update(stack=int(m[1]), spill_stores=int(m[2]), spill_loads=int(m[3]))
            if m := re.search(r"Used (\d+) registers", log):
                out["registers"] = int(m[1])
        cuobjdump = _tool("cuobjdump")
        if "registers" not in out and cuobjdump:
            binary = Path(tmp) / "k.cubin"
            binary.write_bytes(cubin)
            r = subprocess.run([cuobjdump, "--dump-resource-usage", str(binary)],
                               capture_output=True, text=True)  # fmt: skip
            if m := re.search(r"REG:(\d+) STACK:(\d+)", r.stdout):
                out.update(registers=int(m[1]), stack=int(m[2]))
    return out


def compile_spec(spec: KernelSpec, arch: int) -> Result:
    """Compile one spec for sm_<arch> and read its resources."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = TARGETS[arch]
    res = Result(target=target.name, kernel=spec.kernel, label=spec.label(),
                 shared_limit=target.limits.smem_per_block)  # fmt: skip
    module = importlib.import_module(f"l2bg.kernels.{spec.module}")
    fn = getattr(module, spec.kernel)
    args = dict(spec.args)
    if spec.kernel == "_gram_tile_kernel":
        x = args["X"].dtype
        res.shared_estimate = gram_shared_bytes(
            args["BLOCK"], args["BLOCK_K"], getattr(torch, x), spec.num_stages
        )
    start = time.perf_counter()
    try:
        signature, constexprs, attrs = _signature(fn, args)
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        kernel = triton.compile(
            src,
            target=GPUTarget("cuda", arch, 32),
            options=dict(num_warps=spec.num_warps, num_stages=spec.num_stages),
        )
        res.shared = int(kernel.metadata.shared)
        for k, v in _resources(kernel.asm["ptx"], kernel.asm["cubin"], arch).items():
            setattr(res, k, v)
        res.ok = res.shared <= res.shared_limit
        if not res.ok:
            res.error = f"needs {res.shared} B of shared memory, {target.name} allows "
            res.error += f"{res.shared_limit} B"
    except Exception as exc:  # noqa: BLE001 - every failure is a row of the report
        res.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
    res.seconds = time.perf_counter() - start
    return res


def plan(archs: Iterable[int] = (80, 90)) -> list[tuple[int, KernelSpec, list[str]]]:
    """Unique (arch, spec) pairs over every launch, each with the launches that need it."""
    import importlib

    seen: dict[tuple, tuple[int, KernelSpec, list[str]]] = {}
    for arch in archs:
        limits = TARGETS[arch].limits
        for launch in launches():
            for spec in kernel_specs(launch, limits):
                fn = getattr(importlib.import_module(f"l2bg.kernels.{spec.module}"), spec.kernel)
                sig, consts, attrs = _signature(fn, dict(spec.args))
                key = (arch, spec.kernel, repr(sig), repr(consts), repr(attrs), spec.num_warps,
                       spec.num_stages)  # fmt: skip
                who = f"{launch.source}:{launch.op} n={launch.n} d={launch.d} b={launch.batch}"
                seen.setdefault(key, (arch, spec, []))[2].append(who)
    return list(seen.values())


def _compile_job(job: tuple[int, KernelSpec, list[str]]) -> Result:
    arch, spec, who = job
    res = compile_spec(spec, arch)
    res.sources = sorted(set(who))[:3] + ([f"+{len(set(who)) - 3} more"] if len(set(who)) > 3
                                          else [])  # fmt: skip
    return res


def run(archs: Iterable[int] = (80, 90), jobs: int = 2) -> list[Result]:
    """Compile every planned spec (in ``jobs`` processes); one Result per (target, spec)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("TRITON_INTERPRET=1 replaces the compiler; unset it for this process")
    work = plan(archs)
    work.sort(key=lambda j: (j[1].kernel != "_moments_full_kernel", j[1].kernel))  # slow first
    if jobs <= 1:
        return [_compile_job(j) for j in work]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(_compile_job, work))


def table(results: Sequence[Result]) -> str:
    """The report as a markdown table, worst spills first within each target."""
    cols = ("target", "kernel configuration", "first launch", "ok", "shared B (est.)", "limit",
            "regs", "stack", "spill st/ld B", "s")  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in sorted(results, key=lambda r: (r.target, -(r.spill_stores or 0), r.label)):
        est = f" ({r.shared_estimate})" if r.shared_estimate is not None else ""
        spill = "-" if r.spill_stores is None else f"{r.spill_stores}/{r.spill_loads}"
        cells = (r.target, r.label, (r.sources or ["-"])[0], "yes" if r.ok else f"NO: {r.error}",
                 f"{r.shared}{est}", r.shared_limit, r.registers, r.stack, spill,
                 f"{r.seconds:.1f}")  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=sorted(TARGETS))
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--quiet", action="store_true", help="no table on stdout")
    args = p.parse_args(argv)
    start = time.perf_counter()
    results = run(args.arch, args.jobs)
    wall = time.perf_counter() - start
    if args.json:
        import triton

        args.json.write_text(
            json.dumps(
                {
                    "triton": triton.__version__,
                    "wall_s": wall,
                    "results": [asdict(r) for r in results],
                },
                indent=1,
            )
        )
    if not args.quiet:
        print(table(results))
        print(f"\n{len(results)} compilations in {wall:.1f} s; "
              f"{sum(not r.ok for r in results)} failed")  # fmt: skip
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
