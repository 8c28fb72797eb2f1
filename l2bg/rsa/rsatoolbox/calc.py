"""``calc_rdm`` with rsatoolbox 0.3.2's signature, computed by l2bg.

Methods ``euclidean``, ``correlation``, ``mahalanobis`` and ``crossnobis`` run in torch
(:mod:`l2bg.rsa.distances`); everything else, and any input outside what the fast path knows
(another Dataset class, non-finite measurements, malformed noise, unbalanced folds, ...), goes to
rsatoolbox's own ``calc_rdm`` unchanged, so results and errors are rsatoolbox's. The returned
``RDMs`` carry the descriptors rsatoolbox gives them: dataset descriptors as rdm descriptors,
observation descriptors that are constant within a condition as pattern descriptors, conditions
sorted by the descriptor, ``noise`` and ``cv_descriptor`` where rsatoolbox sets them.

A list of datasets is computed in batches: datasets with the same conditions and channel count
(a searchlight's spheres, for instance) share one batched GEMM per method.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from l2bg.rsa import distances
from l2bg.rsa import noise as noise_math
from l2bg.rsa.reference import is_constant
from l2bg.rsa.rsatoolbox.options import fast_input, on_blas_threads, original, require, resolve

__all__ = ["FAST_METHODS", "calc_rdm"]

FAST_METHODS = ("euclidean", "correlation", "mahalanobis", "crossnobis")
_MEASURE = {"euclidean": "squared euclidean", "correlation": "correlation",
            "mahalanobis": "squared mahalanobis", "crossnobis": "crossnobis"}


@on_blas_threads
def calc_rdm(dataset: Any, method: str = "euclidean", descriptor: str | None = None,
             noise: Any = None, cv_descriptor: str | None = None, prior_lambda: float = 1.0,
             prior_weight: float = 0.1, remove_mean: bool = False, *, dtype: object = None,
             device: str | None = None) -> Any:
    """``rsatoolbox.rdm.calc_rdm`` on l2bg: same arguments, same ``RDMs`` (within 1e-6).

    ``dtype`` ('float64' default, or 'float32') and ``device`` override the drop-in's
    configured defaults for this call (``l2bg.rsa.rsatoolbox.configure``)."""
    rsa = require()
    rest = (cv_descriptor, prior_lambda, prior_weight, remove_mean)
    if method not in FAST_METHODS:
        return original("calc_rdm")(dataset, method, descriptor, noise, *rest)
    dt, dev = resolve(dtype, device)
    if not isinstance(dataset, Iterable):
        return _calc_many([dataset], [noise], method, descriptor, rest, dt, dev)[0]
    datasets = list(dataset)
    noises = [noise[i] if isinstance(noise, Iterable) else noise for i in range(len(datasets))]
    rdms = _calc_many(datasets, noises, method, descriptor, rest, dt, dev)
    if descriptor is None:
        return rsa.rdm.concat(rdms)
    return rsa.rdm.combine.from_partials(rdms, descriptor=descriptor)


# ----------------------------------------------------------------------------- conditions


@dataclass
class _Conditions:
    """How observations map to the RDM's conditions, in rsatoolbox's final (sorted) order.

    ``values``: the descriptor's distinct values in order of first appearance (None without a
    descriptor); ``perm``: the stable sort of ``values`` (the order of the result);
    ``index``: per observation, its condition's position in the result; ``n``: conditions."""

    values: np.ndarray | None
    perm: np.ndarray
    index: np.ndarray | None
    n: int

    def key(self) -> bytes:
        return b"" if self.index is None else self.index.tobytes()


def _conditions(obs_descriptors: dict, descriptor: str | None, n_obs: int) -> _Conditions:
    from rsatoolbox.util.data_utils import get_unique_inverse

    if descriptor is None:
        return _Conditions(None, np.arange(n_obs), None, n_obs)
    values, inverse = get_unique_inverse(obs_descriptors[descriptor])
    perm = np.argsort(values, kind="stable")
    position = np.empty_like(perm)
    position[perm] = np.arange(perm.size)
    return _Conditions(values, perm, position[inverse], len(values))


def _usable(ds: Any, descriptor: str | None) -> bool:
    """Whether the fast path knows this dataset (else rsatoolbox computes it)."""
    from rsatoolbox.data import Dataset

    if type(ds) is not Dataset:
        return False
    x = ds.measurements
    if not fast_input(x) or x.ndim != 2:  # 0 channels, bool, integers, float16: rsatoolbox's
        return False
    return descriptor is None or descriptor in ds.obs_descriptors


def group_means(x: Tensor, index: np.ndarray | None, n: int) -> Tensor:
    """Mean pattern of each condition: x (B, n_obs, p) -> (B, n, p); ``index`` gives each
    observation's condition (None: the observations are the conditions)."""
    if index is None:
        return x
    idx = torch.from_numpy(index).to(x.device)
    sums = x.new_zeros((x.shape[0], n, x.shape[2])).index_add_(1, idx, x)
    counts = torch.bincount(idx, minlength=n).to(x.dtype)
    return sums / counts[:, None]


# ----------------------------------------------------------------------------- results


def _build(rsa: Any, vector: np.ndarray, measure: str, descriptors: dict, obs: dict,
           descriptor: str | None, cond: _Conditions, **extra: Any) -> Any:
    """An RDMs object as rsatoolbox builds it, for a vector already in ``cond``'s order."""
    rdms = rsa.rdm.RDMs(dissimilarities=vector[None, :], dissimilarity_measure=measure,
                        rdm_descriptors=copy.deepcopy(descriptors))
    if descriptor is not None and cond.n != len(obs[descriptor]):  # conditions were averaged
        labels = np.asarray(obs[descriptor])
        members = [labels == v for v in cond.values]
        for name, values in obs.items():
            values = np.asarray(values)
            per_condition = np.full_like(cond.values, np.nan, dtype=values.dtype)
            for i, rows in enumerate(members):
                subset = values[rows]
                if len(set(subset)) > 1:  # not constant within a condition: left out
                    break
                per_condition[i] = subset[0]
            else:
                rdms.pattern_descriptors[name] = per_condition
    else:
        rdms.pattern_descriptors = copy.deepcopy(obs)
    for key, value in extra.items():
        if value is not None:
            rdms.descriptors[key] = value
    if descriptor is not None:  # rsatoolbox's sort_by(descriptor='alpha'), reindexed
        for name, values in rdms.pattern_descriptors.items():
            rdms.pattern_descriptors[name] = [values[i] for i in cond.perm]
        rdms.pattern_descriptors["index"] = list(range(cond.n))
    return rdms


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def as_tensor(a: np.ndarray, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A numpy array on the drop-in's device and dtype (no copy when it already is)."""
    return torch.as_tensor(np.asarray(a)).to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------- methods


def _calc_many(datasets: list, noises: list, method: str, descriptor: str | None, rest: tuple,
               dtype: torch.dtype, device: torch.device) -> list:
    """RDMs of each dataset; the fast ones in batches of equal conditions and channels."""
    rsa = require()
    out: list = [None] * len(datasets)
    batches: dict[tuple, list[int]] = {}
    conds: dict[int, _Conditions] = {}
    for i, (ds, nz) in enumerate(zip(datasets, noises, strict=True)):
        if not _usable(ds, descriptor) or not _noise_usable(method, nz, ds, descriptor):
            out[i] = original("calc_rdm")(ds, method, descriptor, nz, *rest)
            continue
        if method == "crossnobis":
            out[i] = _crossnobis(rsa, ds, descriptor, nz, rest[0], rest[3], dtype, device)
            if out[i] is None:  # a fold design rsatoolbox handles its own way
                out[i] = original("calc_rdm")(ds, method, descriptor, nz, *rest)
            continue
        conds[i] = _conditions(ds.obs_descriptors, descriptor, ds.n_obs)
        key = (ds.measurements.shape, id(nz) if method == "mahalanobis" else 0, conds[i].key())
        batches.setdefault(key, []).append(i)
    remove_mean = rest[3]
    for members in batches.values():
        cond = conds[members[0]]
        parts = [as_tensor(datasets[i].measurements, dtype, device) for i in members]
        x = parts[0].unsqueeze(0) if len(parts) == 1 else torch.stack(parts)
        x = group_means(x, cond.index, cond.n)
        nz = noises[members[0]]
        vectors, measure, extra = _single_trial(method, x, nz, remove_mean, dtype, device)
        for row, i in enumerate(members):
            ds = datasets[i]
            out[i] = _build(rsa, _numpy(vectors[row]), measure, ds.descriptors,
                            ds.obs_descriptors, descriptor, conds[i], **extra)
    return out


def _noise_usable(method: str, nz: Any, ds: Any, descriptor: str | None) -> bool:
    p = ds.measurements.shape[1]
    if method in ("euclidean", "correlation"):
        return True
    if method == "mahalanobis":
        return nz is None or _square(nz, p)
    if descriptor is None:
        return False
    if nz is None or _square(nz, p):
        return True
    values = nz.values() if isinstance(nz, dict) else nz
    return isinstance(nz, dict | list) and all(_square(v, p) for v in values)


def _square(a: Any, p: int) -> bool:
    return isinstance(a, np.ndarray) and a.shape == (p, p) and a.dtype.kind in "fiu"


def _single_trial(method: str, x: Tensor, nz: Any, remove_mean: bool, dtype: torch.dtype,
                  device: torch.device) -> tuple[Tensor, str, dict]:
    """Packed RDMs (B, m) of condition patterns x (B, n, p) for the non-cross-validated
    methods; the measure's name and the extra descriptors rsatoolbox records."""
    if method == "correlation":
        return _correlation(x), _MEASURE[method], {}
    if remove_mean:
        x = x - x.mean(dim=-1, keepdim=True)
    if method == "euclidean" or nz is None:  # rsatoolbox: mahalanobis without noise
        return distances.euclidean(x), _MEASURE["euclidean"], {}
    prec = as_tensor(nz, dtype, device)
    return distances.mahalanobis(x, prec), _MEASURE[method], {"noise": nz}


def _correlation(x: Tensor) -> Tensor:
    """Correlation distances; float32 CUDA patterns go to l2bg's Triton RDM kernel (its
    constant-sample rule aside, the same distances), with rsatoolbox's NaN restored."""
    if x.is_cuda and x.dtype == torch.float32:
        from l2bg import rsa as front

        out = front.rdm_triu(x, backend="auto")
        constant = is_constant(x)
        if bool(constant.any()):
            n = x.shape[1]
            iu = torch.triu_indices(n, n, 1, device=x.device)
            nan = constant[:, iu[0]] | constant[:, iu[1]]
            out = out.masked_fill(nan, torch.nan)
        return out
    return distances.correlation(x)


def _crossnobis(rsa: Any, ds: Any, descriptor: str, nz: Any, cv_descriptor: str | None,
                remove_mean: bool, dtype: torch.dtype, device: torch.device) -> Any:
    """Crossnobis as rsatoolbox cross-validates it (leave one fold out, or fold pairs for
    per-fold precisions), or None when the folds are not balanced enough for the fast path."""
    p = ds.measurements.shape[1]
    light = copy.copy(ds)  # rsatoolbox sorts a deep copy; only the descriptors are needed
    light.measurements = np.empty((ds.n_obs, 0))
    light.obs_descriptors = copy.deepcopy(ds.obs_descriptors)
    light.descriptors = copy.deepcopy(ds.descriptors)
    if cv_descriptor is None:
        folds_of = _default_folds(np.asarray(light.obs_descriptors[descriptor]))
        if folds_of is None:
            return None
        light.obs_descriptors["cv_desc"] = folds_of
        cv_descriptor = "cv_desc"
    order = np.argsort(light.obs_descriptors[descriptor], kind="stable")
    light.sort_by(descriptor)
    cv = np.array(light.obs_descriptors[cv_descriptor])
    folds = np.unique(cv)
    cond = _conditions(light.obs_descriptors, descriptor, ds.n_obs)
    k, n = len(folds), cond.n
    if k < 2:
        return None
    fold = np.searchsorted(folds, cv)
    cell = cond.index * k + fold
    counts = np.bincount(cell, minlength=n * k).reshape(n, k)
    if (counts == 0).any():  # a condition missing from a fold: rsatoolbox's own business
        return None
    x = as_tensor(ds.measurements[order], dtype, device)
    sums = x.new_zeros((n * k, p)).index_add_(0, torch.from_numpy(cell).to(device), x)
    sums = sums.view(n, k, p)
    cnt = torch.from_numpy(counts).to(device=device, dtype=dtype).unsqueeze(-1)
    single = nz is None or isinstance(nz, np.ndarray)
    if single:
        test = sums / cnt
        train = (sums.sum(dim=1, keepdim=True) - sums) / (cnt.sum(dim=1, keepdim=True) - cnt)
        if remove_mean:
            test = test - test.mean(dim=-1, keepdim=True)
            train = train - train.mean(dim=-1, keepdim=True)
        prec = None if nz is None else as_tensor(nz, dtype, device)
        vector = distances.crossnobis(train, test, prec)
        recorded = np.eye(p) if nz is None else nz
    else:
        means = (sums / cnt).permute(1, 0, 2)
        if remove_mean:
            means = means - means.mean(dim=-1, keepdim=True)
        variances = [noise_math.precision(as_tensor(nz[i], dtype, device)) for i in range(k)]
        iu = torch.triu_indices(k, k, 1)
        pairs = torch.stack([noise_math.precision((variances[i] + variances[j]) / 2)
                             for i, j in iu.T.tolist()])
        vector = distances.crossnobis_fold_pairs(means, pairs)
        recorded = nz
    return _build(rsa, _numpy(vector), _MEASURE["crossnobis"], light.descriptors,
                  light.obs_descriptors, descriptor, cond, noise=recorded,
                  cv_descriptor=cv_descriptor)


def _default_folds(labels: np.ndarray) -> np.ndarray | None:
    """rsatoolbox's default cv descriptor: the k-th occurrence of each condition is fold k
    (same dtype as the labels); None unless every condition occurs equally often."""
    values, counts = np.unique(labels, return_counts=True)
    if not np.all(counts == counts[0]):
        return None
    folds = np.zeros_like(labels)
    for v in values:
        folds[labels == v] = np.arange(counts[0])
    return folds
