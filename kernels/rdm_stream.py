"""Streaming RDMs: all n samples' features arrive in slices (n x d_chunk), one pass.

``RDMStream`` holds only the (B, n, n) accumulator of centred cross-products, the running row
means and the feature count; each ``update`` reads one slice. Numerically stable single pass by
the Chan et al. merge of co-moments: a slice with row means nu and slice-centred Gram S updates

    C  <-  C + S + (d_seen * d_c / (d_seen + d_c)) * (mu - nu)(mu - nu)^T
    mu <-  mu + d_c / (d_seen + d_c) * (nu - mu)

so no product of uncentred values is ever formed (accurate with a large common offset). Each
slice is one launch of ``_gram_tile_kernel`` in MODE 2 (upper tiles only, merge fused into the
epilogue); ``result()`` turns C into distances with ``_dist_tile_kernel``.

Reference (the spec): ``l2bg.rsa.rdm(torch.cat(slices, dim=-1), backend='torch')``.
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor

from l2bg.base.errors import L2BGError
from l2bg.rsa.reference import RowScale, check_slice, inverse_norms

from .launch import check_shared_memory, host_flags, launch_guard, strip
from .rdm import (
    _dist_tile_kernel,
    _gram_tile_kernel,
    _limits,
    check_blocks,
    check_device,
    gram_config,
    row_stats,
    upper_tiles,
)


class RDMStream:
    """Accumulates the RDMs of B batches of n samples from feature slices, in one pass."""

    def __init__(
        self,
        n: int,
        *,
        batch: int | None = None,
        device: torch.device | str = "cuda",
        precision: str = "ieee",
        block: int | None = None,
        block_k: int | None = None,
        num_warps: int | None = None,
        num_stages: int | None = None,
    ) -> None:
        if n < 1:
            raise L2BGError(f"RDMStream: n must be >= 1, got {n}")
        if precision not in ("ieee", "tf32"):
            raise L2BGError(f"RDMStream: precision must be 'ieee' or 'tf32', got {precision!r}")
        self.n = n
        self.batched = batch is not None
        self.batch = batch or 1
        self.device = torch.device(device)
        self.precision = precision
        self._cfg = dict(block=block, block_k=block_k, num_warps=num_warps, num_stages=num_stages)
        self.d_seen = 0
        self.gram = torch.zeros((self.batch, n, n), device=self.device, dtype=torch.float32)
        self.mean = torch.zeros((self.batch, n), device=self.device, dtype=torch.float32)
        self._scale = RowScale(self.batch, n, self.device)

    def update(self, x: Tensor) -> RDMStream:
        """Add a slice of features: (n, d_c), or (B, n, d_c) for a batched stream."""
        xb = check_slice(x, batched=self.batched, batch=self.batch, n=self.n, who="RDMStream")
        if xb.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise L2BGError(f"RDMStream.update: dtype {xb.dtype}; pass float32/16 or bfloat16")
        if xb.device != self.device:
            raise L2BGError(f"RDMStream.update: slice on {xb.device}, stream on {self.device}")
        check_device(xb)
        d_c = xb.shape[-1]
        if d_c == 0:
            return self
        b, n = self.batch, self.n
        # 16-bit slices are upcast (exact) and rows divided by powers of two (exact): no fp32
        # square overflows or underflows, and every slice takes the fp32 path (bf16 1e30 too)
        xb = xb.float()
        k, shift, finite = self._scale.plan(xb)
        xb, factors = RowScale.rescaled(k, xb, shift)
        limits = _limits(xb)
        cfg = gram_config(n, self.d_seen + d_c, b, xb.dtype, limits)
        block = self._cfg["block"] or cfg["block"]
        block_k = self._cfg["block_k"] or cfg["block_k"]
        num_stages = self._cfg["num_stages"] or cfg["num_stages"]
        check_blocks(xb, block=block, block_k=block_k)
        check_shared_memory(block, block_k, xb.dtype, num_stages, limits and limits.smem_per_block)
        nu, _, ss, _ = row_stats(xb)
        if any(host_flags(~finite, ~torch.isfinite(nu).all(), ~torch.isfinite(ss).all())):
            raise L2BGError(
                "RDMStream.update: the slice has NaN/inf (or fp32-overflowing) activations; "
                "fix or rescale them"
            )
        self._scale.k = k  # the stream's state changes only once the slice is accepted
        self.mean.mul_(factors)
        self.gram.mul_(factors[:, :, None]).mul_(factors[:, None, :])
        total = self.d_seen + d_c
        delta = (self.mean - nu).contiguous()
        weight = self.d_seen * d_c / total
        tiles = upper_tiles(triton.cdiv(n, block), xb.device)
        with launch_guard(xb):
            _gram_tile_kernel[(tiles.shape[0], b, 1)](
                xb, nu, nu, tiles, self.gram, self.gram, delta, n, d_c, d_c, weight,
                *xb.stride(), 0, 0, 0,
                MODE=2, TRIU=False, BLOCK=block, BLOCK_K=block_k, PRECISION=self.precision,
                LOW=xb.dtype != torch.float32,
                num_warps=self._cfg["num_warps"] or cfg["num_warps"], num_stages=num_stages,
            )  # fmt: skip
        self.mean += (d_c / total) * (nu - self.mean)
        self.d_seen = total
        return self

    def result(self, *, triu: bool = False) -> Tensor:
        """RDMs of all features seen so far: (B,) n x n, or packed strict upper triangles."""
        b, n = self.batch, self.n
        ss = self.gram.diagonal(dim1=-2, dim2=-1)
        inv = inverse_norms(ss, self.mean, self.d_seen).float().contiguous()
        shape = (b, n * (n - 1) // 2) if triu else (b, n, n)
        out = torch.empty(shape, device=self.device, dtype=torch.float32)
        if out.numel():
            cfg = gram_config(n, max(self.d_seen, 1), b, torch.float32, _limits(self.gram))
            block = self._cfg["block"] or cfg["block"]
            tiles = upper_tiles(triton.cdiv(n, block), self.device)
            so = (out.stride(0), 0, out.stride(1)) if triu else out.stride()
            with launch_guard(self.gram):
                _dist_tile_kernel[(tiles.shape[0], b)](
                    self.gram, inv, tiles, out, n, 1, *so, TRIU=triu, BLOCK=block,
                    STRIP=strip(block), num_warps=self._cfg["num_warps"] or cfg["num_warps"],
                )  # fmt: skip
        return out if self.batched else out.squeeze(0)
