"""CPU matrix products through numpy's BLAS: one place that decides when, and how.

torch's CPU BLAS has no syrk (the symmetric product ``a @ a^T`` at half the work of a GEMM), and
on this project's AMD CPUs its MKL GEMMs trail the OpenBLAS that numpy ships (fp32 x @ x.T at
n=1000, d=16384: 97 ms in numpy, 160 ms in torch). numpy reads CPU tensors through zero-copy
views, so the RSA paths route their large CPU products here; everything else stays in torch.

Two thread pools on few cores: torch's OpenMP workers spin for a while after each parallel
region, and a numpy GEMM started in that window shares the cores with them (+9 ms on a 14 ms
GEMM on 2 cores). :func:`one_torch_thread` runs a CPU RSA call with one torch thread, so that
numpy's BLAS has the cores; the elementwise torch work around the products is memory bound and
loses little.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

__all__ = ["SYRK_MAX_N", "matmul", "numpy_blas", "one_torch_thread", "syrk"]

SYRK_MAX_N = 8192
"""Up to this many rows, a CPU Gram is one symmetric rank-k update (larger: row blocks)."""


def numpy_blas(*ts: Tensor) -> bool:
    """Whether CPU products of these tensors go to numpy's BLAS: float32/float64 CPU tensors of
    one dtype, without autograd."""
    return (
        all(
            t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
            and not t.requires_grad
            for t in ts
        )
        and len({t.dtype for t in ts}) == 1
    )


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` (2-D, or a batch of one (1, n, k) times (k, p)): numpy's BLAS on the CPU
    (``numpy_blas``), torch elsewhere."""
    if numpy_blas(a, b) and b.ndim == 2 and (a.ndim == 2 or a.shape[0] == 1):
        out = torch.from_numpy(np.matmul(a.reshape(-1, a.shape[-1]).numpy(), b.numpy()))
        return out.view(*a.shape[:-1], b.shape[-1])
    return torch.matmul(a, b)


def syrk(a: Tensor) -> Tensor | None:
    """``a @ a^T`` of a CPU float matrix a (n, k) by BLAS syrk, or None where that does not
    apply (another device or dtype, autograd, more than ``SYRK_MAX_N`` rows). numpy calls syrk
    for a product of an array with its own transpose and mirrors the triangle: the result is
    exactly symmetric."""
    if not numpy_blas(a) or a.ndim != 2 or a.shape[0] > SYRK_MAX_N:
        return None
    x = a.numpy()
    return torch.from_numpy(np.matmul(x, x.T))


@contextlib.contextmanager
def one_torch_thread(device: torch.device | str) -> Iterator[None]:
    """Run the body with one torch CPU thread when it computes on the CPU; the thread count is
    restored after. Elsewhere a no-op. Two uses on few cores: numpy's BLAS gets the cores (see
    the module docstring), and comparisons prepare (sort) their two sides in two Python threads
    (:mod:`l2bg.rsa.comparisons`), which beats one sort after the other with two torch threads
    each (a 500k-element radix sort: 8 ms on one thread, 22 ms on two, here)."""
    if torch.device(device).type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
