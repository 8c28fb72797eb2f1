"""The registry of RDM comparison methods: one name, one torch reference, optional fast paths.

A method compares RDM triangles (..., m) (leading dims broadcast) and returns float64 r with the
broadcast leading shape; degenerate input (a constant triangle; an all-zero one for cosine) gives
r = 0 (docs/design.md, "Compare"). ``compare(..., method=NAME)``, the conflict model, layer x
layer RSA and the rsatoolbox drop-in all look methods up here, so a method registered once
(``register``) is available everywhere. Built-ins (math in :mod:`l2bg.rsa.comparisons`):
``spearman`` (average ranks for ties), ``pearson`` (alias ``corr``, rsatoolbox's name),
``cosine``, ``rho-a`` (rsatoolbox's Spearman without tie correction), ``tau-a`` and ``kendall``
(alias ``tau-b``, Kendall's tau-b as ``scipy.stats.kendalltau``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from l2bg.base.registry import Registry
from l2bg.rsa import comparisons
from l2bg.rsa.reference import compare_torch

__all__ = ["METHODS", "CompareMethod", "get", "names", "register", "unregister"]


@dataclass(frozen=True)
class CompareMethod:
    """A comparison of RDM triangles: ``torch(ta, tb)`` is the reference (any device,
    broadcast leading dims); ``triton`` names the method of :func:`l2bg.kernels.compare.compare`
    that implements it on the Triton backend (None: the torch reference runs there too);
    ``matrix(ta (Ka, m), tb (Kb, m) | None) -> (Ka, Kb)`` compares every pair, each RDM
    prepared once (tb None: ta against itself; None: built from ``torch`` by broadcasting)."""

    name: str
    torch: Callable[[Tensor, Tensor], Tensor]
    help: str = ""
    triton: str | None = None
    aliases: tuple[str, ...] = ()
    matrix: Callable[..., Tensor] | None = None

    def all_pairs(self, ta: Tensor, tb: Tensor | None = None) -> Tensor:
        """(Ka, Kb) similarities of every row of ta (Ka, m) with every row of tb (Kb, m);
        without tb, ta against itself (Ka, Ka), each RDM still prepared once."""
        if self.matrix is not None:
            return self.matrix(ta, tb)
        return self.torch(ta.unsqueeze(1), (ta if tb is None else tb).unsqueeze(0))


METHODS: Registry[CompareMethod] = Registry("comparison method", "method")


def register(method: CompareMethod, *, replace: bool = False) -> CompareMethod:
    """Add ``method`` (and its aliases) to the registry."""
    return METHODS.register(method, replace=replace)


def get(name: str) -> CompareMethod:
    """The method registered as ``name`` (or an alias of it)."""
    return METHODS.get(name)


def names() -> list[str]:
    """Registered method names (aliases not repeated)."""
    return METHODS.names()


def unregister(name: str) -> CompareMethod:
    """Remove and return the method registered as ``name`` (its aliases too)."""
    return METHODS.unregister(name)


def _matrix(kind: str) -> Callable[..., Tensor]:
    def all_pairs(ta: Tensor, tb: Tensor | None = None) -> Tensor:
        pa, pb = comparisons.prepare(kind, ta, tb)
        return comparisons.cross(kind, pa, pa if pb is None else pb)

    return all_pairs


register(CompareMethod("spearman", lambda a, b: compare_torch(a, b, "spearman"),
                       "Spearman rank correlation, average ranks for ties", triton="spearman",
                       matrix=_matrix("spearman")))
register(CompareMethod("pearson", lambda a, b: compare_torch(a, b, "pearson"),
                       "Pearson correlation", triton="pearson", aliases=("corr",),
                       matrix=_matrix("pearson")))
register(CompareMethod("cosine", comparisons.broadcast("cosine"),
                       "cosine similarity (not centred)", matrix=_matrix("cosine")))
register(CompareMethod("rho-a", comparisons.broadcast("rho-a"),
                       "Spearman's rho without tie correction, 12 Σ r_a r_b / (m^3 - m) on "
                       "centred average ranks (rsatoolbox's rho-a)", matrix=_matrix("rho-a")))
register(CompareMethod("tau-a", comparisons.broadcast("tau-a"),
                       "Kendall's tau-a, (concordant - discordant) / all pairs",
                       matrix=_matrix("tau-a")))
register(CompareMethod("kendall", comparisons.broadcast("tau-b"),
                       "Kendall's tau-b (ties corrected, as scipy.stats.kendalltau)",
                       aliases=("tau-b",), matrix=_matrix("tau-b")))
