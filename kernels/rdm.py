"""Correlation-distance RDMs of a batch of activations in Triton.

``rdm(x)`` for x (B, n, d) computes ``D[b, i, j] = 1 - pearson(x[b, i], x[b, j])`` in two launches:

1. ``_row_stats_kernel``: one program per row, corrected two-pass mean and centred sum of squares
   (fp32), so the constant-sample test and ``1/||x_i - mu_i||`` match the reference definition.
2. ``_gram_tile_kernel``: one program per (upper-triangular output tile, batch item, K split).
   It streams d in ``block_k`` blocks, centres both operand tiles in registers *before* the
   product (accurate with a large common offset, unlike ``X X^T - d mu mu^T``) and accumulates
   ``tl.dot`` in fp32. Only tiles with ``ti <= tj`` are launched (symmetry); the epilogue writes
   ``clamp(1 - r, 0, 2)`` to (i, j) and the same value to (j, i), or to the packed strict upper
   triangle. With ``split_k > 1`` the partial Grams go to a workspace and ``_dist_tile_kernel``
   sums them and applies the same epilogue.

fp32, fp16 and bf16 inputs; fp32 accumulation. ``precision='ieee'`` is exact fp32, ``'tf32'`` uses
TF32 tensor cores for fp32 inputs; 16-bit inputs are centred in fp32 and fed to the tensor cores
in their own dtype. Element offsets are 64-bit, so any strides (transposed views) are read in
place. Tile sizes and the K split, the shared-memory check, the device guard and the one host read
per call are the launch policies of ``l2bg.kernels.launch``. Reference (the spec):
``l2bg.rsa.rdm(x, backend='torch')`` (``l2bg.rsa.reference.rdm_torch``).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from l2bg.base.errors import L2BGError
from l2bg.rsa.reference import NonFiniteError, rdm_torch, rdm_triu_torch

from .launch import (
    DeviceLimits,
    check_shared_memory,
    device_limits,
    gram_config,
    host_flags,
    k_split,
    launch_guard,
    strip,
)

CONSTANT_REL_TOL2 = 1e-12
"""Squared constant-sample tolerance: a row is constant when ss <= 1e-12 * ||x||^2."""
_TOL2 = tl.constexpr(CONSTANT_REL_TOL2)


@triton.jit
def _row_stats_kernel(
    X,
    MEAN,
    INV,
    SS,
    AMAX,
    n,
    d,
    stride_xb,
    stride_xn,
    stride_xd,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // n
    i = pid % n
    base = X + b.to(tl.int64) * stride_xb + i.to(tl.int64) * stride_xn
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for k in range(0, d, BLOCK_D):
        offs = k + tl.arange(0, BLOCK_D)
        ptr = base + offs.to(tl.int64) * stride_xd
        acc += tl.load(ptr, mask=offs < d, other=0.0).to(tl.float32)
    mean = tl.sum(acc, axis=0) / d
    s1 = tl.zeros([BLOCK_D], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_D], dtype=tl.float32)
    amax = tl.zeros([BLOCK_D], dtype=tl.float32)
    for k in range(0, d, BLOCK_D):
        offs = k + tl.arange(0, BLOCK_D)
        mask = offs < d
        v = tl.load(base + offs.to(tl.int64) * stride_xd, mask=mask, other=0.0).to(tl.float32)
        c = tl.where(mask, v - mean, 0.0)
        s1 += c
        s2 += c * c
        amax = tl.maximum(amax, tl.abs(c))
    sum1 = tl.sum(s1, axis=0)
    ss = tl.maximum(tl.sum(s2, axis=0) - sum1 * sum1 / d, 0.0)
    mean = mean + sum1 / d
    ss64 = ss.to(tl.float64)
    mean64 = mean.to(tl.float64)
    # tensor on the left: triton 3.8's interpreter turns `constexpr * tensor` into a constexpr
    # wrapping a tensor, which a comparison then refuses
    constant = ss64 <= (ss64 + d * mean64 * mean64) * _TOL2
    inv = tl.where(constant, 0.0, 1.0 / tl.sqrt(tl.maximum(ss64, 1e-300)))
    tl.store(MEAN + pid, mean)
    tl.store(INV + pid, inv.to(tl.float32))
    tl.store(SS + pid, ss)
    tl.store(AMAX + pid, tl.max(amax, axis=0))


@triton.jit
def _store_dist(
    OUT,
    acc,
    rows,
    cols,
    inv_r,
    inv_c,
    b,
    n,
    stride_ob,
    stride_or,
    stride_oc,
    TRIU: tl.constexpr,
):
    """Epilogue: clamp(1 - acc * inv_i * inv_j, 0, 2) at i < j, mirrored or packed; 0 at i == j."""
    r = acc * inv_r[:, None] * inv_c[None, :]
    dist = tl.minimum(tl.maximum(1.0 - r, 0.0), 2.0)
    inb = (rows[:, None] < n) & (cols[None, :] < n)
    upper = inb & (rows[:, None] < cols[None, :])
    rows64 = rows.to(tl.int64)
    cols64 = cols.to(tl.int64)
    base = OUT + b.to(tl.int64) * stride_ob
    if TRIU:
        # packed index of (i, j), i < j: i n - i (i + 1) / 2 + j - i - 1 (row part per row)
        start = rows64 * n - rows64 * (rows64 + 1) // 2 - rows64 - 1
        tl.store(base + (start[:, None] + cols64[None, :]) * stride_oc, dist, mask=upper)
    else:
        tl.store(base + rows64[:, None] * stride_or + cols64[None, :] * stride_oc, dist, mask=upper)
        tl.store(base + cols64[None, :] * stride_or + rows64[:, None] * stride_oc, dist, mask=upper)
        diag = inb & (rows[:, None] == cols[None, :])
        tl.store(
            base + rows64[:, None] * stride_or + cols64[None, :] * stride_oc,
            tl.zeros_like(dist),
            mask=diag,
        )


@triton.jit
def _gram_tile_kernel(
    X,
    MEAN,
    INV,
    TILES,
    OUT,
    WS,
    CORR,
    n,
    d,
    k_per_split,
    corr_weight,
    stride_xb,
    stride_xn,
    stride_xd,
    stride_ob,
    stride_or,
    stride_oc,
    MODE: tl.constexpr,
    TRIU: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    LOW: tl.constexpr,
):
    """Gram tile of centred rows. MODE 0: write distances; 1: store the partial Gram of this
    K split to WS[split, b]; 2: WS[b] += Gram + corr_weight * CORR_i CORR_j (streaming merge)."""
    t = tl.program_id(0)
    b = tl.program_id(1)
    s = tl.program_id(2)
    ti = tl.load(TILES + 2 * t)
    tj = tl.load(TILES + 2 * t + 1)
    rows = ti * BLOCK + tl.arange(0, BLOCK)
    cols = tj * BLOCK + tl.arange(0, BLOCK)
    rmask = rows < n
    cmask = cols < n
    mu_r = tl.load(MEAN + b * n + rows, mask=rmask, other=0.0)
    mu_c = tl.load(MEAN + b * n + cols, mask=cmask, other=0.0)
    xb = X + b.to(tl.int64) * stride_xb
    a_ptr = xb + rows.to(tl.int64)[:, None] * stride_xn
    b_ptr = xb + cols.to(tl.int64)[None, :] * stride_xn
    k_lo = s * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, d)
    acc = tl.zeros([BLOCK, BLOCK], dtype=tl.float32)
    for k in range(k_lo, k_hi, BLOCK_K):
        offs_k = k + tl.arange(0, BLOCK_K)
        kmask = offs_k < k_hi
        am = rmask[:, None] & kmask[None, :]
        bm = kmask[:, None] & cmask[None, :]
        koff = offs_k.to(tl.int64) * stride_xd
        a = tl.load(a_ptr + koff[None, :], mask=am, other=0.0).to(tl.float32)
        bt = tl.load(b_ptr + koff[:, None], mask=bm, other=0.0).to(tl.float32)
        a = tl.where(am, a - mu_r[:, None], 0.0)
        bt = tl.where(bm, bt - mu_c[None, :], 0.0)
        if LOW:
            a = a.to(X.dtype.element_ty)
            bt = bt.to(X.dtype.element_ty)
            acc = tl.dot(a, bt, acc)
        else:
            acc = tl.dot(a, bt, acc, input_precision=PRECISION)
    if MODE == 0:
        inv_r = tl.load(INV + b * n + rows, mask=rmask, other=0.0)
        inv_c = tl.load(INV + b * n + cols, mask=cmask, other=0.0)
        _store_dist(OUT, acc, rows, cols, inv_r, inv_c, b, n, stride_ob, stride_or, stride_oc, TRIU)
    else:
        ws = WS + (s.to(tl.int64) * tl.num_programs(1) + b) * n * n
        ptr = ws + rows.to(tl.int64)[:, None] * n + cols[None, :]
        m2 = rmask[:, None] & cmask[None, :]
        if MODE == 2:
            c_r = tl.load(CORR + b * n + rows, mask=rmask, other=0.0)
            c_c = tl.load(CORR + b * n + cols, mask=cmask, other=0.0)
            acc += tl.load(ptr, mask=m2, other=0.0) + corr_weight * c_r[:, None] * c_c[None, :]
        tl.store(ptr, acc, mask=m2)


@triton.jit
def _dist_tile_kernel(
    WS,
    INV,
    TILES,
    OUT,
    n,
    n_split,
    stride_ob,
    stride_or,
    stride_oc,
    TRIU: tl.constexpr,
    BLOCK: tl.constexpr,
    STRIP: tl.constexpr,
):
    """Sum the n_split partial Gram tiles in WS (n_split, B, n, n) and write distances, STRIP
    rows of the tile at a time (a whole 128 x 128 tile of sums and 64-bit addresses spills)."""
    t = tl.program_id(0)
    b = tl.program_id(1)
    ti = tl.load(TILES + 2 * t)
    tj = tl.load(TILES + 2 * t + 1)
    cols = tj * BLOCK + tl.arange(0, BLOCK)
    cmask = cols < n
    inv_c = tl.load(INV + b * n + cols, mask=cmask, other=0.0)
    for r0 in range(0, BLOCK, STRIP):
        rows = ti * BLOCK + r0 + tl.arange(0, STRIP)
        rmask = rows < n
        m2 = rmask[:, None] & cmask[None, :]
        offs = rows.to(tl.int64)[:, None] * n + cols[None, :]
        acc = tl.zeros([STRIP, BLOCK], dtype=tl.float32)
        for s in range(0, n_split):
            ws = WS + (s * tl.num_programs(1) + b).to(tl.int64) * n * n
            acc += tl.load(ws + offs, mask=m2, other=0.0)
        inv_r = tl.load(INV + b * n + rows, mask=rmask, other=0.0)
        _store_dist(
            OUT, acc, rows, cols, inv_r, inv_c, b, n, stride_ob, stride_or, stride_oc, TRIU
        )


def _is_interpreted() -> bool:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return False
    return isinstance(_gram_tile_kernel, InterpretedFunction)


INTERPRETED: bool = _is_interpreted()
"""True when the kernels run in the Triton interpreter (TRITON_INTERPRET=1 at import)."""

_PRECISIONS = ("ieee", "tf32")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=64)
def upper_tiles(num_tiles: int, device: torch.device) -> Tensor:
    """(T (T + 1) / 2, 2) int32 tile coordinates (ti, tj), ti <= tj: the triangular schedule."""
    ti, tj = torch.triu_indices(num_tiles, num_tiles, 0)
    return torch.stack([ti, tj], dim=1).to(device=device, dtype=torch.int32).contiguous()


def check_device(x: Tensor) -> None:
    """Kernels need CUDA tensors, or the interpreter for CPU tensors."""
    if not x.is_cuda and not INTERPRETED:
        raise L2BGError(
            "l2bg.kernels need CUDA tensors, or TRITON_INTERPRET=1 set before l2bg.kernels is "
            "imported to run them on the CPU; or use l2bg.rsa with backend='torch'"
        )


def check_blocks(x: Tensor, **blocks: int) -> None:
    """Block sizes are powers of two (tl.arange), >= 16 when compiled (tl.dot tiles)."""
    least = 1 if INTERPRETED else 16
    for name, v in blocks.items():
        if v < least or v & (v - 1):
            raise L2BGError(f"rdm kernel: {name}={v} must be a power of two >= {least}")


def compiled_limits(device: torch.device) -> DeviceLimits | None:
    """The limits of ``device`` when the kernels are compiled for it (None: interpreter)."""
    return device_limits(device) if device.type == "cuda" and not INTERPRETED else None


def _limits(x: Tensor) -> DeviceLimits | None:
    return compiled_limits(x.device)


def row_stats(x: Tensor, *, block_d: int = 1024) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Row means, 1/||x_i - mu_i|| (0 for constant rows), centred sums of squares, max |x - mu|.

    x (B, n, d); outputs (B, n) float32.
    """
    b, n, d = x.shape
    out = [torch.empty((b, n), device=x.device, dtype=torch.float32) for _ in range(4)]
    if b * n == 0:
        return tuple(out)
    block_d = min(block_d, triton.next_power_of_2(max(d, 1)))
    with launch_guard(x):
        _row_stats_kernel[(b * n,)](x, *out, n, d, *x.stride(), BLOCK_D=block_d)
    return tuple(out)


def _validate(x: Tensor, precision: str) -> tuple[Tensor, bool]:
    if not isinstance(x, Tensor) or x.ndim not in (2, 3):
        raise L2BGError("rdm kernel: expected x of shape (n, d) or (B, n, d)")
    if x.dtype not in _DTYPES:
        raise L2BGError(
            f"rdm kernel: dtype {x.dtype} is not supported; pass float32, float16 or bfloat16 "
            "(float64: use l2bg.rsa.rdm with backend='torch')"
        )
    if precision not in _PRECISIONS:
        raise L2BGError(f"rdm kernel: precision must be 'ieee' or 'tf32', got {precision!r}")
    check_device(x)
    batched = x.ndim == 3
    return (x if batched else x.unsqueeze(0)), batched


def _check_stats(x: Tensor, mean: Tensor, ss: Tensor, amax: Tensor) -> bool:
    """False when fp32 row statistics overflowed or underflowed (caller falls back); raises on
    non-finite input. One host read on the common path."""
    tiny = torch.finfo(torch.float32).tiny * 2.0**24
    overflow, underflow = host_flags(
        ~(torch.isfinite(mean) & torch.isfinite(ss)).all(), ((ss < tiny) & (amax > 0)).any()
    )
    if overflow:
        bad = ~torch.isfinite(x).flatten(1).all(dim=1)
        if bool(bad.any()):
            raise NonFiniteError(int(bad.nonzero()[0]))
        return False
    return not underflow


def rdm(
    x: Tensor,
    *,
    triu: bool = False,
    precision: str = "ieee",
    block: int | None = None,
    block_k: int | None = None,
    split_k: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> Tensor:
    """Correlation-distance RDMs of x (n, d) or (B, n, d): (B,) n x n, or packed strict upper
    triangles (B,) m with ``triu=True``; float32.

    ``block`` is the square output tile, ``block_k`` the d-block streamed per step, ``split_k``
    the number of K splits (partial Grams reduced by a second kernel). All are launcher
    parameters so that tests can make small shapes span several tiles, d-blocks and splits;
    sizes whose shared memory cannot fit the device are refused with an L2BGError. Any strides
    (transposed views too) are read in place with 64-bit offsets. Rows whose fp32 statistics
    overflow or underflow fall back to the torch reference. One host sync per call.
    """
    xb, batched = _validate(x, precision)
    b, n, d = xb.shape
    limits = _limits(xb)
    cfg = gram_config(n, d, b, xb.dtype, limits)
    block = block or cfg["block"]
    block_k = block_k or cfg["block_k"]
    split_k = split_k or cfg["split_k"]
    check_blocks(xb, block=block, block_k=block_k)
    launch = dict(
        num_warps=num_warps or cfg["num_warps"], num_stages=num_stages or cfg["num_stages"]
    )
    check_shared_memory(
        block, block_k, xb.dtype, launch["num_stages"], limits and limits.smem_per_block
    )
    if d == 0:
        xb = xb.new_zeros((b, n, 1))
        d = 1
    m = n * (n - 1) // 2
    shape = (b, m) if triu else (b, n, n)
    out = torch.empty(shape, device=xb.device, dtype=torch.float32)
    if b * n == 0:
        return out if batched else out.squeeze(0)
    mean, inv, ss, amax = row_stats(xb)
    if not _check_stats(xb, mean, ss, amax):
        ref = (rdm_triu_torch if triu else rdm_torch)(xb.float())
        return ref if batched else ref.squeeze(0)
    if triu and m == 0:
        return out if batched else out.squeeze(0)
    tiles = upper_tiles(triton.cdiv(n, block), xb.device)
    k_per_split, split_k = k_split(d, split_k, block_k)
    so = (out.stride(0), 0, out.stride(1)) if triu else out.stride()
    common = dict(BLOCK=block, BLOCK_K=block_k, PRECISION=precision, LOW=xb.dtype != torch.float32)
    with launch_guard(xb):
        if split_k == 1:
            _gram_tile_kernel[(tiles.shape[0], b, 1)](
                xb, mean, inv, tiles, out, out, mean, n, d, k_per_split, 0.0,
                *xb.stride(), *so, MODE=0, TRIU=triu, **common, **launch,
            )  # fmt: skip
        else:  # TRIU only shapes MODE 0's epilogue: one compiled variant for MODE 1
            ws = torch.empty((split_k, b, n, n), device=xb.device, dtype=torch.float32)
            _gram_tile_kernel[(tiles.shape[0], b, split_k)](
                xb, mean, inv, tiles, out, ws, mean, n, d, k_per_split, 0.0,
                *xb.stride(), *so, MODE=1, TRIU=False, **common, **launch,
            )  # fmt: skip
            _dist_tile_kernel[(tiles.shape[0], b)](
                ws, inv, tiles, out, n, split_k, *so, TRIU=triu, BLOCK=block,
                STRIP=strip(block), **launch,
            )  # fmt: skip
    return out if batched else out.squeeze(0)
