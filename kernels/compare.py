"""Compare RDMs over their strict upper triangles: Pearson in one fused pass, Spearman via ranks.

``pearson(a, b)``: a and b are full RDMs (..., n, n) or packed triangles (..., m) (as
``l2bg.rsa.compare``), batched with broadcasting. One pass over both inputs: each program reads
a row block of the strict upper triangle (``_moments_full_kernel``) or a chunk of the packed
vector (``_moments_flat_kernel``) and writes nine float64 partials: sums of x, y, x^2, y^2, xy
of the values shifted by the first triangle entry (so the moments do not cancel), and min/max of
both (a triangle is constant, r = 0, iff min == max). The host sums the few partials.

``spearman(a, b)``: average ranks with one torch sort per triangle, tie groups from segment
boundaries and prefix scans in int64/float64 (``l2bg.rsa.reference.average_ranks``), then the
same Pearson pass on the ranks shifted by their exact mean (m + 1) / 2.

Reference (the spec): ``l2bg.rsa.compare(a, b, backend='torch')``
(``l2bg.rsa.reference.compare_torch``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from l2bg.base.errors import L2BGError
from l2bg.rsa.reference import average_ranks, check_finite, compare_torch, triangle

from .launch import host_flags, launch_guard, moments_config
from .rdm import check_device, compiled_limits

_NSTAT = 9


@triton.jit
def _accumulate(x, y, mask, sx, sy, sxx, syy, sxy, mnx, mxx, mny, mxy):
    x = tl.where(mask, x, 0.0)
    y = tl.where(mask, y, 0.0)
    sx += x
    sy += y
    sxx += x * x
    syy += y * y
    sxy += x * y
    mnx = tl.minimum(mnx, tl.where(mask, x, float("inf")))
    mxx = tl.maximum(mxx, tl.where(mask, x, -float("inf")))
    mny = tl.minimum(mny, tl.where(mask, y, float("inf")))
    mxy = tl.maximum(mxy, tl.where(mask, y, -float("inf")))
    return sx, sy, sxx, syy, sxy, mnx, mxx, mny, mxy


@triton.jit
def _store_stats(OUT, sx, sy, sxx, syy, sxy, mnx, mxx, mny, mxy):
    tl.store(OUT + 0, tl.sum(sx, axis=0))
    tl.store(OUT + 1, tl.sum(sy, axis=0))
    tl.store(OUT + 2, tl.sum(sxx, axis=0))
    tl.store(OUT + 3, tl.sum(syy, axis=0))
    tl.store(OUT + 4, tl.sum(sxy, axis=0))
    tl.store(OUT + 5, tl.min(mnx, axis=0))
    tl.store(OUT + 6, tl.max(mxx, axis=0))
    tl.store(OUT + 7, tl.min(mny, axis=0))
    tl.store(OUT + 8, tl.max(mxy, axis=0))


@triton.jit
def _moments_full_kernel(
    A,
    B,
    SHIFT_A,
    SHIFT_B,
    OUT,
    n,
    stride_ab,
    stride_ar,
    stride_ac,
    stride_bb,
    stride_br,
    stride_bc,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Partial moments of the strict upper triangle, rows [pid * BLOCK_R, (pid + 1) * BLOCK_R)."""
    pid = tl.program_id(0)
    bi = tl.program_id(1)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    rows64 = rows.to(tl.int64)
    sa = tl.load(SHIFT_A + bi).to(tl.float64)
    sb = tl.load(SHIFT_B + bi).to(tl.float64)
    a_row = A + bi.to(tl.int64) * stride_ab + rows64[:, None] * stride_ar
    b_row = B + bi.to(tl.int64) * stride_bb + rows64[:, None] * stride_br
    sx = tl.zeros([BLOCK_R], dtype=tl.float64)
    sy = tl.zeros([BLOCK_R], dtype=tl.float64)
    sxx = tl.zeros([BLOCK_R], dtype=tl.float64)
    syy = tl.zeros([BLOCK_R], dtype=tl.float64)
    sxy = tl.zeros([BLOCK_R], dtype=tl.float64)
    mnx = tl.full([BLOCK_R], float("inf"), dtype=tl.float64)
    mny = tl.full([BLOCK_R], float("inf"), dtype=tl.float64)
    mxx = tl.full([BLOCK_R], -float("inf"), dtype=tl.float64)
    mxy = tl.full([BLOCK_R], -float("inf"), dtype=tl.float64)
    for c0 in range(pid * BLOCK_R, n, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cols64 = cols.to(tl.int64)
        mask = (rows[:, None] < cols[None, :]) & (cols[None, :] < n)
        x = tl.load(a_row + cols64[None, :] * stride_ac, mask=mask, other=0.0).to(tl.float64) - sa
        y = tl.load(b_row + cols64[None, :] * stride_bc, mask=mask, other=0.0).to(tl.float64) - sb
        x = tl.where(mask, x, 0.0)
        y = tl.where(mask, y, 0.0)
        sx += tl.sum(x, axis=1)
        sy += tl.sum(y, axis=1)
        sxx += tl.sum(x * x, axis=1)
        syy += tl.sum(y * y, axis=1)
        sxy += tl.sum(x * y, axis=1)
        mnx = tl.minimum(mnx, tl.min(tl.where(mask, x, float("inf")), axis=1))
        mxx = tl.maximum(mxx, tl.max(tl.where(mask, x, -float("inf")), axis=1))
        mny = tl.minimum(mny, tl.min(tl.where(mask, y, float("inf")), axis=1))
        mxy = tl.maximum(mxy, tl.max(tl.where(mask, y, -float("inf")), axis=1))
    out = OUT + (bi * tl.num_programs(0) + pid) * 9
    _store_stats(out, sx, sy, sxx, syy, sxy, mnx, mxx, mny, mxy)


@triton.jit
def _moments_flat_kernel(
    A,
    B,
    SHIFT_A,
    SHIFT_B,
    OUT,
    m,
    chunk,
    stride_ab,
    stride_am,
    stride_bb,
    stride_bm,
    BLOCK: tl.constexpr,
):
    """Partial moments of packed triangles, elements [pid * chunk, (pid + 1) * chunk)."""
    pid = tl.program_id(0)
    bi = tl.program_id(1)
    sa = tl.load(SHIFT_A + bi).to(tl.float64)
    sb = tl.load(SHIFT_B + bi).to(tl.float64)
    a_base = A + bi.to(tl.int64) * stride_ab
    b_base = B + bi.to(tl.int64) * stride_bb
    sx = tl.zeros([BLOCK], dtype=tl.float64)
    sy = tl.zeros([BLOCK], dtype=tl.float64)
    sxx = tl.zeros([BLOCK], dtype=tl.float64)
    syy = tl.zeros([BLOCK], dtype=tl.float64)
    sxy = tl.zeros([BLOCK], dtype=tl.float64)
    mnx = tl.full([BLOCK], float("inf"), dtype=tl.float64)
    mny = tl.full([BLOCK], float("inf"), dtype=tl.float64)
    mxx = tl.full([BLOCK], -float("inf"), dtype=tl.float64)
    mxy = tl.full([BLOCK], -float("inf"), dtype=tl.float64)
    lo = pid.to(tl.int64) * chunk
    hi = tl.minimum(lo + chunk, m)
    for k in range(lo, hi, BLOCK):
        offs = k + tl.arange(0, BLOCK)
        mask = offs < hi
        x = tl.load(a_base + offs * stride_am, mask=mask, other=0.0).to(tl.float64) - sa
        y = tl.load(b_base + offs * stride_bm, mask=mask, other=0.0).to(tl.float64) - sb
        sx, sy, sxx, syy, sxy, mnx, mxx, mny, mxy = _accumulate(
            x, y, mask, sx, sy, sxx, syy, sxy, mnx, mxx, mny, mxy
        )
    out = OUT + (bi * tl.num_programs(0) + pid) * 9
    _store_stats(out, sx, sy, sxx, syy, sxy, mnx, mxx, mny, mxy)


def _batch_views(a: Tensor, b: Tensor, tail: int) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """Broadcast the leading dims of a and b and flatten them to one batch dim."""
    lead = torch.broadcast_shapes(a.shape[: a.ndim - tail], b.shape[: b.ndim - tail])
    a = a.expand(*lead, *a.shape[a.ndim - tail :]).reshape(-1, *a.shape[a.ndim - tail :])
    b = b.expand(*lead, *b.shape[b.ndim - tail :]).reshape(-1, *b.shape[b.ndim - tail :])
    return a, b, tuple(lead)


def _first_entry(t: Tensor) -> Tensor:
    return (t[:, 0, 1] if t.ndim == 3 else t[:, 0]).to(torch.float64).contiguous()


def _launch_moments(
    a: Tensor,
    b: Tensor,
    shift_a: Tensor,
    shift_b: Tensor,
    *,
    block_r: int,
    block_c: int,
    block: int,
    chunk: int,
) -> Tensor:
    """(batch, programs, 9) float64 partial moments of a and b (batch-flattened)."""
    nb = a.shape[0]
    if a.ndim == 3 and b.ndim == 3:
        n = a.shape[-1]
        grid = (triton.cdiv(n - 1, block_r), nb)
        out = torch.empty((nb, grid[0], _NSTAT), device=a.device, dtype=torch.float64)
        with launch_guard(a):
            _moments_full_kernel[grid](
                a, b, shift_a, shift_b, out, n, *a.stride(), *b.stride(),
                BLOCK_R=block_r, BLOCK_C=block_c,
            )  # fmt: skip
        return out
    m = a.shape[-1]
    grid = (triton.cdiv(m, chunk), nb)
    out = torch.empty((nb, grid[0], _NSTAT), device=a.device, dtype=torch.float64)
    with launch_guard(a):
        _moments_flat_kernel[grid](
            a, b, shift_a, shift_b, out, m, chunk, *a.stride(), *b.stride(), BLOCK=block
        )
    return out


def _finish(part: Tensor, m: int) -> Tensor:
    """Pearson r from summed partial moments; 0 where either side is constant."""
    s = part[..., :5].sum(dim=-2)
    mnx = part[..., 5].amin(dim=-1)
    mxx = part[..., 6].amax(dim=-1)
    mny = part[..., 7].amin(dim=-1)
    mxy = part[..., 8].amax(dim=-1)
    sx, sy, sxx, syy, sxy = s.unbind(-1)
    cov = sxy - sx * sy / m
    va = (sxx - sx * sx / m).clamp_min(0.0)
    vb = (syy - sy * sy / m).clamp_min(0.0)
    den = torch.sqrt(va * vb)
    dead = (mnx == mxx) | (mny == mxy) | (den == 0)
    r = torch.where(dead, 0.0, cov / torch.where(dead, 1.0, den))
    return r.clamp_(-1.0, 1.0)


def _config(device: torch.device, blocks: dict[str, int]) -> dict[str, int]:
    """Launch parameters: defaults per device, overridden by ``blocks`` (powers of two)."""
    cfg = moments_config(compiled_limits(device))
    for name, v in blocks.items():
        if name not in cfg or v < 1 or (name != "chunk" and v & (v - 1)):
            raise L2BGError(
                f"compare kernel: bad launch parameter {name}={v}; use block_r, block_c, block "
                "(powers of two) or chunk (>= 1)"
            )
    return cfg | blocks


def _check(a: Tensor, b: Tensor, triangles: bool) -> int:
    """Validate the inputs; return the number of pairs m."""
    tail = 1 if triangles else 2
    for name, t in (("a", a), ("b", b)):
        if (
            not isinstance(t, Tensor)
            or t.ndim < tail
            or (not triangles and t.shape[-1] != t.shape[-2])
        ):
            raise L2BGError(
                f"compare kernel: {name} must be "
                f"{'triangles (..., m)' if triangles else 'RDMs (..., n, n)'}"
            )
        check_device(t)
    if a.device != b.device:
        raise L2BGError(f"compare kernel: a on {a.device} and b on {b.device}; use one device")
    ma, mb = (
        (a.shape[-1], b.shape[-1])
        if triangles
        else (a.shape[-1] * (a.shape[-1] - 1) // 2, b.shape[-1] * (b.shape[-1] - 1) // 2)
    )
    if ma != mb:
        raise L2BGError(f"compare kernel: a has {ma} pairs and b has {mb}")
    return ma


def _part_flags(part: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Device flags of the partial moments: (out of range, a non-finite, b non-finite).

    Out of range: some side's spread (max - min) lies outside [2^-400, 2^400] (and is not 0):
    its float64 moments, products of shifted values, could overflow or underflow. The kernel
    does not rescale; such rare inputs (|values| beyond about 1e120 or spreads below 1e-120,
    only reachable with float64 vectors, never with RDMs) go to the reference, which rescales.
    Non-finite input shows in the partial sums. All three are read back in one host read."""
    spread = torch.stack([part[..., 6].amax(-1) - part[..., 5].amin(-1),
                          part[..., 8].amax(-1) - part[..., 7].amin(-1)])  # fmt: skip
    out_of_range = ((spread > 2.0**400) | ((spread > 0) & (spread < 2.0**-400))).any()
    sums = part[..., :4].sum(dim=-2)
    bad_a = (~torch.isfinite(sums[..., 0] + sums[..., 2])).any()
    bad_b = (~torch.isfinite(sums[..., 1] + sums[..., 3])).any()
    return out_of_range, bad_a, bad_b


def pearson(a: Tensor, b: Tensor, *, triangles: bool = False, **blocks: int) -> Tensor:
    """Pearson r of the strict upper triangles of RDMs a, b (..., n, n), or of packed triangles
    (..., m) with ``triangles=True``; float64, broadcast leading shape. Float64 inputs whose
    squares would overflow or underflow are computed by the reference (``_part_flags``).

    ``blocks`` overrides the launch parameters ``block_r``, ``block_c`` (full RDMs: rows per
    program, columns per step) and ``block``, ``chunk`` (packed: elements per step, per program).
    """
    m = _check(a, b, triangles)
    cfg = _config(a.device, blocks)
    a, b, lead = _batch_views(a, b, 1 if triangles else 2)
    if a.shape[0] == 0:
        return torch.zeros(lead, dtype=torch.float64, device=a.device)
    part = _launch_moments(a, b, _first_entry(a), _first_entry(b), **cfg)
    out_of_range, bad_a, bad_b = host_flags(*_part_flags(part))
    if out_of_range:  # float64 moments would overflow or underflow: the reference
        ta, tb = (a, b) if triangles else (triangle(a), triangle(b))
        check_finite(ta, "a")
        check_finite(tb, "b")
        return compare_torch(ta, tb, "pearson").reshape(lead)
    if bad_a or bad_b:
        name = "a" if bad_a else "b"
        raise L2BGError(f"compare: {name} contains NaN or inf; recompute the RDM from finite data")
    return _finish(part, m).reshape(lead)


def spearman(a: Tensor, b: Tensor, *, triangles: bool = False, **blocks: int) -> Tensor:
    """Spearman r (average ranks for ties) of the strict upper triangles; as ``pearson``."""
    m = _check(a, b, triangles)
    ta, tb = (a, b) if triangles else (triangle(a), triangle(b))
    if any(host_flags(*(~torch.isfinite(t).all() for t in (ta, tb)))):  # one read, then name it
        check_finite(ta, "a")
        check_finite(tb, "b")
    if ta.shape == tb.shape and ta.dtype == tb.dtype:
        ranks = average_ranks(torch.stack([ta, tb]))
        ra, rb = ranks[0], ranks[1]
    else:
        ra, rb = average_ranks(ta), average_ranks(tb)
    cfg = _config(ra.device, blocks)
    ra, rb, lead = _batch_views(ra, rb, 1)
    if ra.shape[0] == 0:
        return torch.zeros(lead, dtype=torch.float64, device=ra.device)
    centre = torch.full((ra.shape[0],), (m + 1) / 2, dtype=torch.float64, device=ra.device)
    part = _launch_moments(ra, rb, centre, centre, **cfg)
    return _finish(part, m).reshape(lead)


def compare(
    a: Tensor, b: Tensor, *, method: str = "spearman", triangles: bool = False, **blocks: int
) -> Tensor:
    """``spearman(a, b)`` or ``pearson(a, b)``."""
    if method == "spearman":
        return spearman(a, b, triangles=triangles, **blocks)
    if method == "pearson":
        return pearson(a, b, triangles=triangles, **blocks)
    raise L2BGError(f"compare kernel: unknown method {method!r}; use 'spearman' or 'pearson'")
