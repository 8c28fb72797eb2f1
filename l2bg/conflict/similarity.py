"""Similarity measures between the activations of two networks fed the same inputs, one registry.

A measure compares, slot by slot, the activations of one net (the new task's independent net)
with those of K others (the bind candidates' task-nets) and returns float64 similarities (K, L);
the conflict model uses C = 1 − similarity (docs/design.md, "Similarity measures in use").
Built-ins:

* ``rsa-spearman`` (the paper, the default) and ``rsa-pearson``: RSA, the RDM comparison of
  :func:`l2bg.rsa.dissimilarities` with a method of the comparison registry
  :mod:`l2bg.rsa.methods` (similarity in [−1, 1], conflict in [0, 2]). ``rsa_measure(method)``
  makes the measure of any registered comparison method;
* ``linear-cka``: linear CKA of centred features (:mod:`l2bg.rsa.cka`; similarity in [0, 1],
  conflict in [0, 1]).

Every measure computes the reference net's part once per slot and all K candidates of a slot in
one batched call. :data:`MEASURES` is the registry (``MEASURES.register`` adds one);
``--similarity NAME`` chooses one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from l2bg.base.errors import L2BGError
from l2bg.base.registry import Registry

__all__ = ["DEFAULT_SIMILARITY", "MEASURES", "SimilarityMeasure", "rsa_measure"]

DEFAULT_SIMILARITY = "rsa-spearman"

Compute = Callable[[list[Tensor], list[list[Tensor]], str], "tuple[Tensor, str | None]"]


@dataclass(frozen=True)
class SimilarityMeasure:
    """``compute(acts_ref, acts_others, backend)`` returns the similarities (K, L) float64 of the
    reference net's slot activations ``acts_ref[l]`` (n, ...) against each other net's, and the
    backend that ran (or None). ``conflict_compute``, where given, returns the conflicts
    1 − s directly, for measures computed as a dissimilarity (RSA): 1 − (1 − d) is not d in
    float64."""

    name: str
    help: str
    compute: Compute
    conflict_compute: Compute | None = None

    def similarities(self, acts_ref: Sequence[Tensor], acts_others: Sequence[Sequence[Tensor]],
                     *, backend: str = "auto") -> tuple[Tensor, str | None]:
        return self._run(self.compute, acts_ref, acts_others, backend)

    def conflicts(self, acts_ref: Sequence[Tensor], acts_others: Sequence[Sequence[Tensor]],
                  *, backend: str = "auto") -> tuple[Tensor, str | None]:
        """1 − similarity (K, L) float64, and the backend that ran."""
        if self.conflict_compute is not None:
            return self._run(self.conflict_compute, acts_ref, acts_others, backend)
        sim, ran = self.similarities(acts_ref, acts_others, backend=backend)
        return 1.0 - sim, ran

    def _run(self, fn: Compute, acts_ref: Sequence[Tensor],
             acts_others: Sequence[Sequence[Tensor]], backend: str) -> tuple[Tensor, str | None]:
        ref, others = _check(self.name, acts_ref, acts_others)
        out, ran = fn(ref, others, backend)
        return out.to(torch.float64).cpu().reshape(len(others), len(ref)), ran


def _check(name: str, acts_ref: Sequence[Tensor], acts_others: Sequence[Sequence[Tensor]]
           ) -> tuple[list[Tensor], list[list[Tensor]]]:
    """Lists of per-slot activations, the same number of slots in every net."""
    def is_list(v: object) -> bool:
        return isinstance(v, Sequence) and not isinstance(v, (Tensor, str))

    if not is_list(acts_ref) or not is_list(acts_others) or not all(map(is_list, acts_others)):
        raise L2BGError(f"similarity {name}: pass a list of per-slot activations for the "
                        "reference net and one such list per other net")
    ref = list(acts_ref)
    others = [list(o) for o in acts_others]
    for k, o in enumerate(others):
        if len(o) != len(ref):
            raise L2BGError(f"similarity {name}: the reference net has {len(ref)} slots and net "
                            f"{k} has {len(o)}; pass activations of the mapped slots of both")
    return ref, others


def rsa_measure(method: str) -> SimilarityMeasure:
    """RSA with the comparison ``method`` of :mod:`l2bg.rsa.methods`: the correlation of the
    two nets' RDMs per slot (similarity = 1 − :func:`l2bg.rsa.dissimilarities`)."""
    from l2bg.rsa import methods

    spec = methods.get(method)

    def dissimilar(ref: list[Tensor], others: list[list[Tensor]], backend: str
                   ) -> tuple[Tensor, str | None]:
        from l2bg import rsa

        return rsa.dissimilarities(ref, others, method=spec.name, backend=backend,
                                   return_backend=True)

    def compute(ref: list[Tensor], others: list[list[Tensor]], backend: str
                ) -> tuple[Tensor, str | None]:
        d, ran = dissimilar(ref, others, backend)
        return 1.0 - d, ran

    return SimilarityMeasure(f"rsa-{spec.name}", f"RSA, {spec.name} correlation of the RDMs "
                             "(conflict in [0, 2])", compute, conflict_compute=dissimilar)


def _cka(ref: list[Tensor], others: list[list[Tensor]], backend: str
         ) -> tuple[Tensor, str | None]:
    from l2bg.rsa.cka import linear_cka

    if backend not in ("auto", "torch"):
        raise L2BGError(f"similarity linear-cka runs on torch only (any device), not backend "
                        f"{backend!r}; use backend 'auto' or 'torch'")
    out = torch.zeros(len(others), len(ref), dtype=torch.float64)
    for layer, x in enumerate(ref):
        if others:
            out[:, layer] = linear_cka(x, [o[layer] for o in others]).cpu()
    return out, "torch" if others and ref else None


MEASURES: Registry[SimilarityMeasure] = Registry("similarity measure", "similarity")
MEASURES.register(rsa_measure("spearman"))
MEASURES.register(rsa_measure("pearson"))
MEASURES.register(SimilarityMeasure(
    "linear-cka", "linear CKA of centred features (conflict in [0, 1])", _cka))
