"""The pure-PyTorch math of RSA: the reference that every backend matches (see docs/design.md,
"Definitions"), and the pieces the Triton kernels reuse (ranking, triangles, the fallback RDM).

Nothing here dispatches or validates user input: :mod:`l2bg.rsa` is the front door. Every name is
public so that :mod:`l2bg.kernels` and :mod:`l2bg.rsa` import it the same way; the layers point one
way (``l2bg.rsa`` -> ``l2bg.kernels`` -> ``l2bg.rsa.reference``).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from l2bg.base.errors import L2BGError

__all__ = [
    "acc_dtype",
    "CONSTANT_REL_TOL",
    "NonFiniteError",
    "average_ranks",
    "centre",
    "check_finite",
    "check_slice",
    "compare_torch",
    "distances_",
    "inverse_norms",
    "is_constant",
    "RowScale",
    "pack_block",
    "pearson",
    "pow2_exponent",
    "rdm_torch",
    "rdm_triu_torch",
    "scale_pow2",
    "scale_rows_pow2",
    "sort_rows",
    "triangle",
    "triu_index",
]

CONSTANT_REL_TOL = 1e-6
"""A sample is constant when ||x - mean(x)|| <= CONSTANT_REL_TOL * ||x||."""


class NonFiniteError(L2BGError):
    """Non-finite activations; ``index`` is the batch item that holds them."""

    def __init__(self, index: int, message: str | None = None) -> None:
        super().__init__(
            message
            or f"activations of batch item {index} contain NaN or inf; fix or drop them first"
        )
        self.index = index


# ----------------------------------------------------------------------------- RDM

def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype RDMs accumulate in: float64 for float64 input, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _row_blocks(n: int) -> list[tuple[int, int]]:
    """Row blocks of the triangular Gram schedule (about 250 rows each, at most 4)."""
    nb = max(1, min(4, n // 250))
    edges = [round(i * n / nb) for i in range(nb + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


class _Rescale(Exception):
    """fp32/fp64 squares overflowed or underflowed: recompute with rescaled rows."""


def centre(x: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor, bool]:
    """(centred rows in the accumulation dtype, written to ``out`` if given; float64 row means
    in the same units as the rows; whether the rows were rescaled by ``centre_scaled``).

    Means and subtraction run in the accumulation dtype. Non-finite means come from NaN/inf
    input (an error) or from a sum that overflows (then ``centre_scaled``).
    """
    acc = acc_dtype(x.dtype)
    mean = x.mean(dim=-1, keepdim=True, dtype=acc)
    if bool(torch.isfinite(mean).all()):
        return torch.sub(x, mean, out=out), mean.squeeze(-1).double(), False
    bad = ~torch.isfinite(x).flatten(1).all(dim=1)
    if bool(bad.any()):
        raise NonFiniteError(int(bad.nonzero()[0]))
    return centre_scaled(x)


def pow2_exponent(amax: Tensor) -> Tensor:
    """Per entry, the k with ``amax · 2^-k`` in [0.5, 1) (0 where amax is 0): the exponent of
    the power of two that rescales a vector exactly."""
    return torch.where(amax > 0, torch.frexp(amax).exponent, 0).to(torch.int64)


def scale_pow2(x: Tensor, k: Tensor) -> Tensor:
    """``x · 2^-k`` (k broadcast over the last dim), exact: in two halves, so that neither factor
    overflows even for subnormal or near-maximal x. A float32 x stays float32 (every factor
    2^-k/2 of a float32's exponent range is a float32); anything else is computed in float64."""
    k = k.unsqueeze(-1).double()
    half = torch.div(k, 2, rounding_mode="floor")
    lo, hi = torch.exp2(-half), torch.exp2(half - k)
    if x.dtype == torch.float32:
        lo, hi = lo.float(), hi.float()
    return x * lo * hi


def scale_rows_pow2(v: Tensor) -> Tensor:
    """v with each row rescaled by a power of two (exact) so its largest |entry| lies in
    [0.5, 1) (zero rows unchanged): afterwards no square, sum or mean overflows or underflows."""
    return scale_pow2(v, pow2_exponent(v.abs().amax(dim=-1)))


def centre_scaled(x: Tensor) -> tuple[Tensor, Tensor, bool]:
    """Centre rows in float64 and rescale each by powers of two (exact) so that no square
    overflows or underflows, whatever the magnitude: first by max |x| (so the mean cannot
    overflow), then by max |x - mean|, into [0.5, 1). The means are returned in the same units
    as the rows, so the constant test compares like with like. Returns (rows, means, True)."""
    acc = acc_dtype(x.dtype)
    x64 = scale_rows_pow2(x.double())
    mean = x64.mean(dim=-1, keepdim=True)
    xc = x64 - mean
    k = pow2_exponent(xc.abs().amax(dim=-1))
    return scale_pow2(xc, k).to(acc), scale_pow2(mean, k).squeeze(-1), True


_UNSEEN = -(2**12)
"""The exponent of a streamed row with no nonzero value yet: below every float's exponent."""


class RowScale:
    """The per-row power-of-two scale of a streamed RDM (B rows of n samples): a row whose
    largest |value| so far has its exponent e outside [-SAFE, SAFE] is divided, exactly, by 2^e
    (k = e), so that no square, sum or mean of the accumulated co-moments overflows or
    underflows, whatever the magnitude (the stream's form of ``centre_scaled``); rows inside
    keep k = 0 (no work: 2^±32 squared and summed over any d stays far inside float32). When a
    slice raises a row's k, what the stream accumulated is rescaled by the factors ``scale``
    returns. Powers of two are exact, so the RDM is bit for bit the unscaled one wherever that
    one neither overflows nor underflows."""

    SAFE = 32

    def __init__(self, batch: int, n: int, device: torch.device) -> None:
        self.k = torch.full((batch, n), _UNSEEN, dtype=torch.int64, device=device)

    def plan(self, xb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Without a host read: (the rows' new k, the shift k_old - k_new of rows seen before,
        a 0-d flag that the slice is finite). Nothing changes until the caller sets ``k``."""
        amax = xb.abs().amax(dim=-1)
        e = torch.where(amax > 0, pow2_exponent(amax), _UNSEEN)
        k = torch.maximum(self.k, torch.where(e.abs() <= self.SAFE, 0, e))
        seen = self.k != _UNSEEN  # a row that was all zeros accumulated nothing to rescale
        return k, torch.where(seen, self.k - k, 0), torch.isfinite(amax).all()

    @staticmethod
    def rescaled(k: Tensor, xb: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
        """For ``k`` and ``shift`` from :meth:`plan`: (the slice divided by 2^k per row, the
        per-row factors 2^shift <= 1 for the accumulated state), for every row and with no host
        read (a scale of 2^0 is an exact multiply by 1). The caller then sets ``self.k = k``."""
        return _scale_rows(xb, k), _factors(shift, xb)

    def units(self) -> Tensor:
        """2^k per row in float64 (1 for rows not seen yet): a streamed value times its row's
        unit is the value in the caller's units (what a scale-dependent RDM needs back)."""
        return torch.exp2(torch.where(self.k == _UNSEEN, 0, self.k).double())

    def scale(self, xb: Tensor) -> tuple[Tensor, Tensor | None]:
        """(slice (B, n, d_c) divided by 2^k per row; per-row factors 2^(k_old - k_new) <= 1 for
        the accumulated state, None when no k of a row seen before changed). NaN/inf in the
        slice: L2BGError. Reads the host to skip the work of rows that need none (the CPU
        stream); the GPU stream uses :meth:`plan` and :meth:`rescaled` inside its one host read."""
        k, shift, finite = self.plan(xb)
        if not bool(finite):
            raise L2BGError("the slice has NaN/inf activations; fix or drop them")
        factors = _factors(shift, xb) if bool((shift != 0).any()) else None
        self.k = k
        if bool(((k != 0) & (k != _UNSEEN)).any()):
            xb = _scale_rows(xb, k)
        return xb, factors


def _factors(shift: Tensor, xb: Tensor) -> Tensor:
    """2^shift per row, in the stream accumulator's dtype."""
    wide = torch.promote_types(xb.dtype, torch.float32)
    ones = torch.ones((*shift.shape, 1), dtype=wide, device=xb.device)
    return scale_pow2(ones, -shift.clamp_min(2 * _UNSEEN)).squeeze(-1)


def _scale_rows(xb: Tensor, k: Tensor) -> Tensor:
    """The slice divided by 2^k per row (rows not seen yet: k = 0)."""
    return scale_pow2(xb, torch.where(k == _UNSEEN, 0, k)).to(xb.dtype)


def inverse_norms(ss: Tensor, mean: Tensor, d: int) -> Tensor:
    """Per sample, 1 / ||x_i - mu_i|| in float64, or 0 for a constant sample (the RDM's rule,
    docs/design.md "RDM"), from the Gram diagonal ``ss`` and the row means ``mean`` in the same
    (possibly power-of-two rescaled) units; d is the number of features."""
    ss, mean = ss.double(), mean.double()
    constant = ss <= (CONSTANT_REL_TOL**2) * (ss + max(d, 1) * mean.square())
    return torch.where(constant, 0.0, ss.clamp_min(1e-300).rsqrt())


def distances_(p: Tensor, inv_rows: Tensor, inv_cols: Tensor) -> Tensor:
    """A row block of centred co-moments (B, h, w) turned into correlation distances in place:
    ``clamp(1 - p_ij inv_i inv_j, 0, 2)`` with :func:`inverse_norms` of its rows and columns."""
    return p.mul_(inv_rows[..., None]).mul_(inv_cols[..., None, :]).neg_().add_(1.0).clamp_(0.0,
                                                                                           2.0)


@functools.lru_cache(maxsize=64)
def _block_triu_index(h: int, w: int, device: torch.device) -> Tensor:
    """Flat indices of the entries c > r of an h x w block, row-major."""
    iu = torch.triu_indices(h, w, 1, device=device)
    return iu[0] * w + iu[1]


def pack_block(out: Tensor, lo: int, hi: int, block: Tensor) -> None:
    """Write the strict-upper-triangle entries of rows [lo, hi) of (B, n, n) matrices, given as
    their row block (B, hi - lo, n - lo) (columns lo and up), into packed triangles out (B, m),
    row-major."""
    n = lo + block.shape[-1]
    first = lo * n - lo * (lo + 1) // 2
    last = hi * n - hi * (hi + 1) // 2
    idx = _block_triu_index(hi - lo, n - lo, block.device)
    torch.index_select(block.flatten(1), 1, idx, out=out[:, first:last])


def _rdm_core(x: Tensor, triu: bool, workspace: Tensor | None = None) -> Tensor:
    """Reference RDMs of x (B, n, d): full (B, n, n) or packed strict upper triangles (B, m).

    Rows are centred once (into ``workspace`` if given). The Gram is computed by row blocks
    ``i``, last first, as ``xc[i] @ xc[i:]^T`` (about (nb + 1) / (2 nb) of the full product);
    at that point every row >= start of block i has its squared norm (the Gram diagonal), so
    the block is normalised and turned into distances while it is still in cache.
    """
    xc, mean, scaled = centre(x, workspace)
    try:
        return _rdm_from_centred(xc, mean, scaled, triu)
    except _Rescale:
        del xc
        xc, mean, scaled = centre_scaled(x)
        return _rdm_from_centred(xc, mean, scaled, triu)


def _rdm_from_centred(xc: Tensor, mean: Tensor, scaled: bool, triu: bool) -> Tensor:
    b, n, d = xc.shape
    out = torch.empty(
        (b, n * (n - 1) // 2) if triu else (b, n, n), dtype=xc.dtype, device=xc.device
    )
    inv = torch.empty((b, n), dtype=xc.dtype, device=xc.device)
    tiny = torch.finfo(xc.dtype).tiny * 2.0**24
    for lo, hi in reversed(_row_blocks(n)):
        h = hi - lo
        if b == 1:
            p = torch.mm(xc[0, lo:hi], xc[0, lo:].T).unsqueeze(0)
        else:
            p = torch.matmul(xc[:, lo:hi], xc[:, lo:].mT)
        ss = p[:, :, :h].diagonal(dim1=-2, dim2=-1).double()
        if not scaled:
            suspect = ~torch.isfinite(ss) | (ss < tiny)
            if bool(suspect.any()):
                rows = xc[:, lo:hi][suspect]
                if bool((~torch.isfinite(ss[suspect])).any()) or bool(rows.abs().amax() > 0):
                    raise _Rescale
        # rows and means are in the same units (rescaled together when ``scaled``); a mean so
        # large that its square overflows makes the row constant, as it is relative to it
        inv[:, lo:hi] = inverse_norms(ss, mean[:, lo:hi], d)
        distances_(p, inv[:, lo:hi], inv[:, lo:])
        if triu:
            pack_block(out, lo, hi, p)
        else:
            out[:, lo:hi, lo:] = p
    if triu:
        return out
    upper = torch.triu(out, diagonal=1)
    return upper + upper.mT


def rdm_torch(x: Tensor) -> Tensor:
    """Full RDMs (B, n, n) of x (B, n, d); reference implementation."""
    return _rdm_core(x, triu=False)


def rdm_triu_torch(x: Tensor, workspace: Tensor | None = None) -> Tensor:
    """Strict upper triangles (B, m) of the RDMs of x (B, n, d); reference implementation."""
    return _rdm_core(x, triu=True, workspace=workspace)


def check_slice(x: object, *, batched: bool, batch: int, n: int, who: str) -> Tensor:
    """A streamed RDM's slice of features as (B, n, d_c): (n, d_c), or (B, n, d_c) for a
    batched stream, with every one of the stream's samples; ``who`` names the stream in the
    one-line error."""
    if not isinstance(x, Tensor) or x.ndim != (3 if batched else 2):
        raise L2BGError(
            f"{who}.update: expected a slice of shape {'(B, n, d_c)' if batched else '(n, d_c)'}"
        )
    xb = x if batched else x.unsqueeze(0)
    if xb.shape[:2] != (batch, n):
        raise L2BGError(
            f"{who}.update: slice has (B, n) = {tuple(xb.shape[:2])}, the stream expects "
            f"{(batch, n)}; pass every sample's features of this slice"
        )
    return xb


@functools.lru_cache(maxsize=16)
def triu_index(n: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Rows, columns and flat indices ``i * n + j`` of the strict upper triangle, row-major."""
    iu = torch.triu_indices(n, n, 1, device=device)
    return iu[0], iu[1], iu[0] * n + iu[1]



# ----------------------------------------------------------------------------- compare


def triangle(t: Tensor) -> Tensor:
    """Strict upper triangle (..., m) of full RDMs (..., n, n), row-major."""
    n = t.shape[-1]
    return t.flatten(-2).index_select(-1, triu_index(n, t.device)[2])


def check_finite(t: Tensor, name: str) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise L2BGError(f"compare: {name} contains NaN or inf; recompute the RDM from finite data")


def is_constant(t: Tensor) -> Tensor:
    # amin and amax separately: torch's CPU aminmax over a dim is many times slower
    return t.amin(dim=-1) == t.amax(dim=-1)


_SHORT_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


def _order_keys(v: Tensor) -> Tensor:
    """Signed integers in the order of v's values (-0 == +0, so equal keys are tied values):
    the float bits with the magnitude bits of negatives flipped; int32 for float16/bfloat16/
    float32 (compared as float32), int64 for float64 and integers (compared as float64)."""
    if v.dtype in _SHORT_FLOATS:
        bits = (v.to(torch.float32) + 0.0).view(torch.int32)
        return bits ^ ((bits >> 31) & 0x7FFFFFFF)
    bits = (v.to(torch.float64) + 0.0).view(torch.int64)
    return bits ^ ((bits >> 63) & 0x7FFFFFFFFFFFFFFF)


def sort_rows(v: Tensor) -> tuple[Tensor, Tensor]:
    """Sort every row of v (R, m) by integer keys: (sorted keys (R, m), row-local order int64).

    Keys are ``_order_keys`` (int32 for 32-bit and 16-bit floats, int64 for float64), so equal
    keys are tied values. Few or long rows: one 1-D radix sort per row (int32 keys sort in
    about half the time of int64: 4 ms against 8 for 500k on this CPU); many short rows: one
    1-D sort of every 32-bit row at once (the row index above the key, int64), or one row-wise
    sort of float64 keys. 1-D integer sorts are radix sorts on CPU and CUDA, much faster than
    comparison sorts of floats.
    """
    rows, m = v.shape
    keys = _order_keys(v)
    if rows > 64 and m < 2**15:
        if keys.dtype == torch.int64:
            return torch.sort(keys, dim=-1)
        offsets = torch.arange(rows, dtype=torch.int64, device=v.device)
        flat = torch.add(keys, offsets.mul(2**32).add_(2**31).unsqueeze(1)).reshape(-1)
        s, order = torch.sort(flat)  # ties in any order: callers rank tie groups
        return s.view(rows, m), order.view(rows, m).sub_(offsets.mul_(m).unsqueeze(1))
    if rows == 1:  # the plain sort: its out= form costs a quarter more here
        s, order = torch.sort(keys[0])
        return s.unsqueeze(0), order.unsqueeze(0)
    s = torch.empty_like(keys)
    order = torch.empty(keys.shape, dtype=torch.int64, device=keys.device)
    for r in range(rows):
        torch.sort(keys[r], out=(s[r], order[r]))
    return s, order


def average_ranks(v: Tensor) -> Tensor:
    """Average ranks (1-based; tied values share the mean of their positions) along the last dim.

    One integer sort per row set (``sort_rows``); tie groups start where the sorted keys change;
    group ids are the prefix sum of those starts and group sizes the gaps between them; int64
    positions, float64 ranks, no Python loop over elements. Equals
    ``scipy.stats.rankdata(v, 'average')``.
    """
    shape, m = v.shape, v.shape[-1]
    if v.numel() == 0:
        return torch.zeros(shape, dtype=torch.float64, device=v.device)
    rows = v.numel() // m
    s, order = sort_rows(v.reshape(rows, m))
    start = torch.empty((rows, m), dtype=torch.bool, device=v.device)
    start[:, :1] = True
    torch.ne(s[:, 1:], s[:, :-1], out=start[:, 1:])
    del s
    start = start.view(-1)
    if bool(start.all()):
        ranked = torch.arange(1, rows * m + 1, dtype=torch.float64, device=v.device)
    else:
        group = torch.cumsum(start, 0).sub_(1)
        first = start.nonzero().squeeze(1)
        size = torch.diff(first, append=first.new_full((1,), rows * m))
        mean_rank = first.to(torch.float64).add_(size.to(torch.float64).add_(1.0).mul_(0.5))
        ranked = mean_rank.index_select(0, group)
    out = torch.empty((rows, m), dtype=torch.float64, device=v.device)
    out.scatter_(1, order, ranked.view(rows, m))
    if rows > 1:
        out -= torch.arange(rows, dtype=torch.float64, device=v.device).mul_(m).unsqueeze(1)
    return out.view(shape)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Batched dot product over the last dim (broadcast), by BLAS without an elementwise temp."""
    return torch.matmul(a.unsqueeze(-2), b.unsqueeze(-1))[..., 0, 0]


def _centre_pow2(v: Tensor) -> Tensor:
    """v centred along the last dim and rescaled by powers of two so its largest entry lies in
    [0.5, 1): r is scale-free, and no square, sum or mean can then overflow or underflow."""
    v = scale_rows_pow2(v)
    return scale_rows_pow2(v - v.mean(dim=-1, keepdim=True))


def pearson(a: Tensor, b: Tensor, dead: Tensor, mean: float | None = None) -> Tensor:
    """Pearson r along the last dim in float64, broadcast over leading dims; 0 where ``dead``.

    ``mean``: the exact common mean of a and b when known (ranks: (m + 1) / 2); the inputs
    are then owned float64 tensors and are centred in place.
    """
    if mean is None:  # any float64 magnitude: rescaled by powers of two (exact), then squared
        a, b = _centre_pow2(a.to(torch.float64)), _centre_pow2(b.to(torch.float64))
    else:
        a = a.sub_(mean)
        b = b.sub_(mean)
    saa, sbb, sab = _dot(a, a), _dot(b, b), _dot(a, b)
    den = torch.sqrt(saa * sbb)
    dead = dead | (den == 0)
    r = torch.where(dead, 0.0, sab / torch.where(dead, 1.0, den))
    return r.clamp_(-1.0, 1.0)


def compare_torch(ta: Tensor, tb: Tensor, method: str) -> Tensor:
    dead = is_constant(ta) | is_constant(tb)
    if method == "pearson":
        return pearson(ta, tb, dead)
    if ta.dtype == tb.dtype:  # one sort ranks both sides (and every batch item)
        m = ta.shape[-1]
        fa, fb = ta.reshape(-1, m), tb.reshape(-1, m)
        ranks = average_ranks(torch.cat([fa, fb]))
        ra, rb = ranks[: fa.shape[0]].view(ta.shape), ranks[fa.shape[0] :].view(tb.shape)
    else:
        ra, rb = average_ranks(ta), average_ranks(tb)
    return pearson(ra, rb, dead, mean=(ta.shape[-1] + 1) / 2)
