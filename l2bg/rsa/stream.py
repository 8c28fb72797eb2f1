"""Streamed RDMs: all n samples' features arrive in slices (n x d_c), one pass, bounded memory.

``TorchRDMStream`` is the CPU (any device) accumulator beside the Triton ``RDMStream``
(:mod:`l2bg.kernels.rdm_stream`), with the same math: it holds only the (B, n, n) co-moments of
the features seen so far (upper row blocks), the running row means and the feature count. A slice
with row means nu and slice-centred rows xc merges by Chan et al.:

    C  <-  C + xc xc^T + (d_seen d_c / (d_seen + d_c)) (mu - nu)(mu - nu)^T
    mu <-  mu + d_c / (d_seen + d_c) (nu - mu)

and both terms are one GEMM per row block: the rank-one term is one more column of the slice,
``sqrt(w) (mu - nu)``, so no product of uncentred values is ever formed. ``result()`` applies the
RDM definition of docs/design.md ("RDM": constant-sample rule, clamp, zero diagonal), or, with
``rdm='euclidean'``, rsatoolbox's euclidean RDM from the same co-moments: the squared distance
over the number of features, ``||x_i - x_j||^2 / d = (C_ii + C_jj - 2 C_ij) / d + (mu_i - mu_j)^2``
(the centred form: a large common offset costs no precision).

``stream_rdm(read, n, d)`` drives either accumulator over a reader of feature slices with a
progress bar. References (the spec): ``l2bg.rsa.rdm(torch.cat(slices, dim=-1), backend='torch')``
(correlation) and ``l2bg.rsa.distances.euclidean`` (euclidean, rsatoolbox's ``calc_rdm``).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import torch
from torch import Tensor

from l2bg.base.errors import L2BGError, ParamError
from l2bg.rsa.distances import pack_blocks, row_blocks
from l2bg.rsa.reference import (
    _UNSEEN,
    RowScale,
    acc_dtype,
    check_slice,
    distances_,
    inverse_norms,
    scale_pow2,
)

__all__ = ["RDMS", "TorchRDMStream", "check_rdm", "progress_bar", "stream_rdm"]

RDMS = ("correlation", "euclidean")
"""The RDMs a stream gives: l2bg's correlation distance (docs/design.md, "RDM") and rsatoolbox's
euclidean (squared distance over the number of features)."""


class TorchRDMStream:
    """Accumulates the RDMs of B batches of n samples from feature slices, in one pass.

    ``dtype``: the accumulation dtype (float32, as the Triton stream, or float64); slices of
    16-bit floats are upcast, float64 slices need a float64 stream."""

    def __init__(self, n: int, *, batch: int | None = None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        if n < 1:
            raise L2BGError(f"TorchRDMStream: n must be >= 1, got {n}")
        if dtype not in (torch.float32, torch.float64):
            raise L2BGError(f"TorchRDMStream: dtype must be float32 or float64, got {dtype}")
        self.n = n
        self.batched = batch is not None
        self.batch = batch or 1
        self.device = torch.device(device)
        self.dtype = dtype
        self.d_seen = 0
        self.mean = torch.zeros((self.batch, n), device=self.device, dtype=dtype)
        self._blocks = row_blocks(n)
        self.gram = [torch.zeros((self.batch, hi - lo, n - lo), device=self.device, dtype=dtype)
                     for lo, hi in self._blocks]
        self._work: Tensor | None = None  # the slice, centred, plus the merge column
        self._scale = RowScale(self.batch, n, self.device)

    def update(self, x: Tensor) -> TorchRDMStream:
        """Add a slice of features: (n, d_c), or (B, n, d_c) for a batched stream."""
        xb = check_slice(x, batched=self.batched, batch=self.batch, n=self.n,
                         who="TorchRDMStream")
        if xb.dtype == torch.float64 and self.dtype != torch.float64:
            raise L2BGError("TorchRDMStream.update: float64 slice in a float32 stream; create "
                            "the stream with dtype=torch.float64")
        d_c = xb.shape[-1]
        if d_c == 0:
            return self
        xb = xb.to(device=self.device, dtype=self.dtype)
        try:
            xb, factors = self._scale.scale(xb)
        except L2BGError as exc:
            raise L2BGError(f"TorchRDMStream.update: {exc}") from None
        if factors is not None:  # a row's scale grew: what it accumulated, in the new units
            self.mean.mul_(factors)
            for (lo, hi), acc in zip(self._blocks, self.gram, strict=True):
                acc.mul_(factors[:, lo:hi, None]).mul_(factors[:, None, lo:])
        nu = xb.mean(dim=-1)
        total = self.d_seen + d_c
        weight = math.sqrt(self.d_seen * d_c / total)
        if self._work is None or self._work.shape[-1] < d_c + 1:  # reused from slice to slice
            self._work = torch.empty((self.batch, self.n, d_c + 1), device=self.device,
                                     dtype=self.dtype)
        aug = self._work[..., : d_c + 1]
        torch.sub(xb, nu.unsqueeze(-1), out=aug[..., :d_c])
        torch.mul(self.mean - nu, weight, out=aug[..., d_c])
        for (lo, hi), acc in zip(self._blocks, self.gram, strict=True):
            acc.baddbmm_(aug[:, lo:hi], aug[:, lo:].mT)
        self.mean += (d_c / total) * (nu - self.mean)
        self.d_seen = total
        return self

    # Merging streams of the same rows over disjoint features (l2bg.rsa.distributed): bring
    # every part to common row scales (rescale_rows), re-centre each about the union's row
    # means (centre_about), sum their co-moments, then set d_seen to the union's count.

    def row_exponents(self) -> Tensor:
        """The per-row exponents k (B, n): the state is held in units of 2^k per row (a row
        with no nonzero value yet has a k below every float's)."""
        return self._scale.k

    def rescale_rows(self, k: Tensor) -> None:
        """Hold the state in units of 2^k per row, k >= :meth:`row_exponents` (exact: powers
        of two)."""
        own = self._scale.k
        shift = torch.where(own == _UNSEEN, 0, k - own)  # a row never seen holds zeros
        if bool((shift != 0).any()):
            ones = torch.ones((*shift.shape, 1), dtype=self.dtype, device=self.device)
            f = scale_pow2(ones, shift).squeeze(-1)
            self.mean.mul_(f)
            for (lo, hi), g in zip(self._blocks, self.gram, strict=True):
                g.mul_(f[:, lo:hi, None]).mul_(f[:, None, lo:])
        self._scale.k = k.clone()

    def centre_about(self, mean: Tensor) -> None:
        """Hold the co-moments about the row means ``mean`` (B, n) instead of this stream's
        own (Chan et al.: C + d_seen (mu - mean)(mu - mean)^T)."""
        delta = self.mean - mean.to(self.dtype)
        for (lo, hi), g in zip(self._blocks, self.gram, strict=True):
            g.add_(self.d_seen * delta[:, lo:hi, None] * delta[:, None, lo:])
        self.mean = mean.to(self.dtype).clone()

    def result(self, *, triu: bool = False, rdm: str = "correlation") -> Tensor:
        """RDMs of all features seen so far: (B,) n x n, or packed strict upper triangles;
        ``rdm`` one of :data:`RDMS`."""
        b, n = self.batch, self.n
        ss = torch.cat([g[:, :, : hi - lo].diagonal(dim1=-2, dim2=-1)
                        for (lo, hi), g in zip(self._blocks, self.gram, strict=True)], -1)
        euclid = check_rdm(rdm, "torch") == "euclidean"
        finish = self._euclidean(ss) if euclid else self._correlation(ss)

        def blocks():
            for (lo, hi), g in zip(self._blocks, self.gram, strict=True):
                yield lo, hi, finish(lo, hi, g)

        if triu:
            out = pack_blocks(n, b, blocks(), self.dtype, self.device)
        else:
            out = torch.zeros((b, n, n), device=self.device, dtype=self.dtype)
            for lo, hi, d in blocks():
                out[:, lo:hi, lo:] = torch.triu(d, diagonal=1)
            out = out + out.mT
        return out if self.batched else out.squeeze(0)

    def _correlation(self, ss: Tensor) -> Callable[[int, int, Tensor], Tensor]:
        """Row block -> correlation distances (a copy), with the constant-sample rule."""
        inv = inverse_norms(ss, self.mean, self.d_seen).to(self.dtype)
        return lambda lo, hi, g: distances_(g.clone(), inv[:, lo:hi], inv[:, lo:])

    def _euclidean(self, ss: Tensor) -> Callable[[int, int, Tensor], Tensor]:
        """Row block -> rsatoolbox's euclidean distances (module docstring), in float64 with
        every row back in its own units (the stream's power-of-two scale undone, exactly),
        clamped at 0 (rounding) and returned in the stream's dtype; one line if they overflow
        it."""
        if self.d_seen == 0:
            raise L2BGError("a euclidean RDM needs at least one feature; the layer has none")
        unit = self._scale.units()
        mean = self.mean.double() * unit
        norm = ss.double() * unit.square()
        d, dtype = self.d_seen, self.dtype

        def finish(lo: int, hi: int, g: Tensor) -> Tensor:
            out = g.double().mul_(unit[:, lo:hi, None]).mul_(unit[:, None, lo:]).mul_(-2.0)
            out.add_(norm[:, lo:hi, None]).add_(norm[:, None, lo:]).div_(d)
            out.add_((mean[:, lo:hi, None] - mean[:, None, lo:]).square_()).clamp_min_(0.0)
            out = out.to(dtype)
            if not bool(torch.isfinite(out).all()):
                raise L2BGError(f"euclidean distances overflow {dtype} (activations too large); "
                                "store the activations as float64 or rescale them")
            return out

        return finish


def check_rdm(rdm: str, backend: str) -> str:
    """``rdm`` is one of :data:`RDMS` and ``backend`` computes it (Triton: correlation only);
    checked once, before any slice is read."""
    if rdm not in RDMS:
        raise L2BGError(f"unknown RDM {rdm!r}; choose one of: {', '.join(RDMS)}")
    if rdm != "correlation" and backend == "triton":
        raise ParamError(f"the Triton backend computes correlation RDMs only, not {rdm}; use "
                         "{backend} 'torch' or 'auto'", "backend")
    return rdm


def check_accumulator(n: int, dtype: torch.dtype) -> None:
    """The n x n accumulator of a streamed RDM must fit in this machine's memory: n is read
    from a file, so it is bounded before anything is allocated (one line naming the fix)."""
    from l2bg.base.bounds import check_size, memory_bytes

    total = memory_bytes()
    if total is not None:
        check_size(f"the RDM accumulator of {n:,} samples (n x n {dtype})",
                   n * n * dtype.itemsize, total, unit="bytes",
                   fix="the limit is this machine's memory; use fewer {samples}",
                   params=("samples",))


def progress_bar(total: int | None, desc: str, enabled: bool | None = None, *,
                 unit: str = "feat"):
    """A tqdm bar on stderr; ``enabled=None`` shows it only when stderr is a terminal."""
    from tqdm import tqdm

    show = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "feat", disable=not show,
                leave=False, file=sys.stderr)


def stream_rdm(read: Callable[[int, int], Tensor], n: int, d: int, *, slice_width: int = 2048,
               device: torch.device | str = "cpu", backend: str = "auto", triu: bool = True,
               progress: bool | None = None, desc: str = "rdm",
               rdm: str = "correlation") -> tuple[Tensor, str]:
    """The RDM of n samples whose d features are read in slices ``read(start, stop) -> (n,
    stop - start)``; (packed triangle or full RDM, backend that ran). ``rdm``: one of
    :data:`RDMS`. ``backend``: 'torch' (this module's accumulator), 'triton'
    (``l2bg.kernels.rdm_stream``; correlation, float32 on CUDA or the interpreter) or 'auto'
    (triton for correlation on CUDA devices when usable). Memory: the accumulator plus one
    slice."""
    from l2bg.rsa import resolve_backend

    if slice_width < 1:
        raise L2BGError(f"slice width must be >= 1, got {slice_width}")
    check_rdm(rdm, backend)
    device = torch.device(device)
    first = read(0, min(d, slice_width)) if d else torch.zeros((n, 0))
    dtype = acc_dtype(first.dtype)
    check_accumulator(n, dtype)
    ran = resolve_backend(backend, first.to(device) if device.type == "cuda" else first)
    if dtype == torch.float64 or rdm != "correlation":
        ran = "torch"
    if ran == "triton":
        from l2bg.kernels.rdm_stream import RDMStream

        acc = RDMStream(n, device=device)
    else:
        acc = TorchRDMStream(n, device=device, dtype=dtype)
    with progress_bar(d, desc, progress) as bar:
        start, chunk = 0, first
        while start < d:
            stop = start + chunk.shape[1]
            acc.update(chunk.to(device=device, dtype=dtype))
            bar.update(stop - start)
            start = stop
            if start < d:
                chunk = read(start, min(d, start + slice_width))
    return (acc.result(triu=triu) if ran == "triton" else acc.result(triu=triu, rdm=rdm)), ran
