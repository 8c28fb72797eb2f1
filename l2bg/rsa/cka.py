"""Linear CKA (centred kernel alignment) between activations, batched over candidates.

For activations X (n, d) and Y (n, d') of the same n inputs, features centred over the samples
(Xc = X − mean_i X[i]):

    CKA(X, Y) = ‖Ycᵀ Xc‖_F² / (‖Xcᵀ Xc‖_F · ‖Ycᵀ Yc‖_F)        in [0, 1]

It is invariant to orthogonal transforms and isotropic scaling of either side and to adding a
constant to a feature. Accumulation is float64. Each side is first divided by its largest
absolute value and centred, then normalised to unit Frobenius norm, so no square over- or
underflows whatever the scale. A side whose centred features vanish (``‖Xc‖_F <=
CONSTANT_REL_TOL · ‖X‖_F``, the tolerance of the RDM's constant samples) is *constant*: CKA is
0/0 there and l2bg defines it as 0, as RSA's dead layer. Every product is computed in the smaller
of the sample and feature spaces (``‖Ycᵀ Xc‖_F² = ⟨Xc Xcᵀ, Yc Ycᵀ⟩_F``). This is the torch
reference and the only backend (any device).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from l2bg.base.errors import L2BGError
from l2bg.rsa.reference import CONSTANT_REL_TOL

__all__ = ["linear_cka"]


def _unit_centred(z: Tensor) -> tuple[Tensor, Tensor]:
    """z (..., n, d) → (centred features scaled to unit Frobenius norm, constant mask (...))."""
    z = z.to(torch.float64)
    peak = z.abs().amax(dim=(-2, -1), keepdim=True)
    z = z / torch.where(peak > 0, peak, torch.ones_like(peak))
    zc = z - z.mean(dim=-2, keepdim=True)
    norm_c = torch.linalg.matrix_norm(zc)
    norm = torch.linalg.matrix_norm(z)
    constant = (norm_c <= CONSTANT_REL_TOL * norm) | (norm_c == 0)
    safe = torch.where(constant, torch.ones_like(norm_c), norm_c)
    return zc / safe[..., None, None], constant


def _self_norm(z: Tensor) -> Tensor:
    """‖zᵀ z‖_F (= ‖z zᵀ‖_F), in the smaller of the two spaces."""
    g = z.mT @ z if z.shape[-1] <= z.shape[-2] else z @ z.mT
    return torch.linalg.matrix_norm(g)


def _cross(x: Tensor, y: Tensor) -> Tensor:
    """‖yᵀ x‖_F² for x (n, d) and y (K, n, d'), in the cheaper of the two spaces."""
    n, d = x.shape
    dy = y.shape[-1]
    if d * dy <= n * (d + dy):
        return (y.mT @ x).square().sum(dim=(-2, -1))
    return ((x @ x.mT) * (y @ y.mT)).sum(dim=(-2, -1))


def _flat(t: Tensor, n: int, what: str) -> Tensor:
    if not isinstance(t, Tensor) or t.ndim == 0 or t.shape[0] != n:
        raise L2BGError(f"linear_cka: {what} must be a tensor of n={n} samples (n, ...)")
    if t.is_complex():
        raise L2BGError(f"linear_cka: {what} is complex; pass real activations")
    t = t.detach().reshape(n, -1)
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise L2BGError(f"linear_cka: {what} has NaN or inf activations; fix the network or "
                        "its inputs")
    return t if t.shape[1] else t.new_zeros((n, 1))


def linear_cka(x: Tensor, ys: Tensor | Sequence[Tensor]) -> Tensor:
    """CKA of x (n, ...) with each y in ``ys`` (a (K, n, ...) tensor or a list of (n, ...)):
    float64 (K,) in [0, 1], computed in one batched call per distinct feature width."""
    if not isinstance(x, Tensor) or x.ndim == 0:
        raise L2BGError("linear_cka: x must be a tensor of shape (n, ...)")
    n = x.shape[0]
    xf = _flat(x, n, "x")
    ys = list(ys.unbind(0)) if isinstance(ys, Tensor) else list(ys)
    flat = [_flat(y, n, f"y[{k}]") for k, y in enumerate(ys)]
    for k, y in enumerate(flat):
        if y.device != xf.device:
            raise L2BGError(f"linear_cka: x is on {xf.device} and y[{k}] on {y.device}; move "
                            "both to one device")
    xn, x_const = _unit_centred(xf)
    x_norm = _self_norm(xn)
    out = torch.zeros(len(flat), dtype=torch.float64, device=xf.device)
    groups: dict[int, list[int]] = {}
    for k, y in enumerate(flat):
        groups.setdefault(y.shape[1], []).append(k)
    for ks in groups.values():
        yn, y_const = _unit_centred(torch.stack([flat[k] for k in ks]))
        cka = _cross(xn, yn) / (x_norm * _self_norm(yn))
        cka = torch.where(y_const | x_const, torch.zeros_like(cka), cka.clamp(0.0, 1.0))
        out[torch.tensor(ks, device=out.device)] = cka
    return out
