"""rsatoolbox 0.3.2's model evaluation (``eval_fixed``, ``eval_bootstrap``,
``eval_bootstrap_pattern``, ``eval_bootstrap_rdm``) and ``boot_noise_ceiling`` on l2bg.

Same arguments, rsatoolbox's own ``Result``, the same numbers for the same seed (1e-10 in
float64): every bootstrap sample is drawn with the numpy calls rsatoolbox makes, in its order
(``np.unique`` of the descriptor, then ``np.random.randint(0, n, size=n)``; RDMs before patterns
in ``eval_bootstrap``). A pattern sample keeps rsatoolbox's conventions: the pairs of two copies
of one condition are NaN in its RDMs and dropped, so the sample is the kept columns of the
original vectors; a sample of fewer than 3 distinct patterns scores NaN. Each RDM of a sample is
transformed once (:mod:`l2bg.rsa.rsatoolbox.ceiling`), models and data are combined in one
product (one batched Kendall pass), the leave-one-out ceilings drop every copy of a left-out RDM.

Covered: fixed models (``ModelFixed``, one or a list) with the methods of
:data:`l2bg.rsa.rsatoolbox.compare.FAST_METHODS`, finite data. Anything else (fitted models,
other methods, NaN in the data) goes to rsatoolbox unchanged.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import numpy as np
import torch

from l2bg.rsa import comparisons
from l2bg.rsa.rsatoolbox.ceiling import (
    ColumnRanks,
    Sample,
    is_dead,
    prepare_rows,
    sample_scores,
)
from l2bg.rsa.rsatoolbox.compare import FAST_METHODS
from l2bg.rsa.rsatoolbox.options import original, require, resolve

__all__ = ["boot_noise_ceiling", "eval_bootstrap", "eval_bootstrap_pattern",
           "eval_bootstrap_rdm", "eval_fixed"]


def _one_thread(fn: Any) -> Any:
    """Run the batched path with one torch CPU thread (:func:`l2bg.rsa.blas.one_torch_thread`):
    its many small products and sorts per sample lose most to OpenMP workers spinning on a
    shared machine (10-20x slower at load 4 on 2 cores with two threads)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from l2bg.rsa.blas import one_torch_thread

        with one_torch_thread(resolve(None, None)[1]):
            return fn(*args, **kwargs)

    return wrapper


def _rsa() -> Any:
    require()
    return sys.modules["rsatoolbox"]


def _tensor(v: np.ndarray) -> torch.Tensor:
    dt, dev = resolve(None, None)
    return torch.as_tensor(np.ascontiguousarray(v, dtype=np.float64)).to(device=dev, dtype=dt)


def _fixed_predictions(models: Any, data: Any, pattern_descriptor: str | None) -> list | None:
    """The predicted RDM vectors of each model, or None where the fast path does not apply
    (a model that is not a ModelFixed, another shape, NaN, other pattern descriptors)."""
    rsa = _rsa()
    if isinstance(models, rsa.model.Model):
        models = [models]
    if not isinstance(data, rsa.rdm.RDMs) or not isinstance(models, (list, tuple)):
        return None
    v = data.get_vectors()
    if v.dtype.kind not in "fiu" or not np.isfinite(v).all() or v.shape[1] < 3:
        return None
    preds = []
    for mod in models:
        if type(mod) is not rsa.model.ModelFixed:
            return None
        pred = mod.predict_rdm()
        pv = pred.get_vectors()
        if (pv.shape[1] != v.shape[1] or pv.dtype.kind not in "fiu"
                or not np.isfinite(pv).all()):
            return None
        if pattern_descriptor is not None:
            mine = pred.pattern_descriptors.get(pattern_descriptor)
            theirs = data.pattern_descriptors.get(pattern_descriptor)
            if mine is None or theirs is None or not np.array_equal(np.asarray(mine),
                                                                     np.asarray(theirs)):
                return None
        preds.append(pred)
    return preds


def _selection(desc: Any, values: np.ndarray) -> np.ndarray:
    """Positions rsatoolbox's ``subsample_pattern`` keeps for ``values`` (repeats, sorted):
    each position as often as its descriptor occurs in ``values``."""
    desc = np.asarray(desc)
    try:
        uniq, times = np.unique(np.asarray(values), return_counts=True)
        at = np.searchsorted(uniq, desc).clip(max=len(uniq) - 1)
        hits = np.where(uniq[at] == desc, times[at], 0)
    except TypeError:  # descriptors numpy cannot order: one comparison per value
        return np.sort(np.concatenate([np.asarray(desc == v).nonzero()[0] for v in values]))
    return np.repeat(np.arange(len(desc)), hits)


def _rows(desc: Any, values: np.ndarray) -> np.ndarray:
    """Rows rsatoolbox's ``RDMs.subsample`` keeps for ``values`` (repeats, in value order)."""
    desc = np.asarray(desc)
    return np.concatenate([np.asarray(desc == v).nonzero()[0] for v in values]).astype(np.int64)


def _kept_columns(n_cond: int, sel: np.ndarray) -> np.ndarray:
    """Columns of the original vectors that the pattern sample ``sel`` keeps (not NaN)."""
    i, j = np.triu_indices(len(sel), 1)
    a, b = sel[i], sel[j]
    keep = a != b
    a, b = a[keep], b[keep]
    return a * n_cond - a * (a + 1) // 2 + (b - a - 1)


class _Batch:
    """Data and model vectors of one evaluation, on the drop-in's device."""

    def __init__(self, kind: str, data: Any, preds: list) -> None:
        self.kind = kind
        self.data = _tensor(data.get_vectors())
        vecs = [p.get_vectors() for p in preds]
        self.rdm_objs = preds
        self.models = _tensor(np.concatenate(vecs)) if preds else None
        self.model_rows = [v.shape[0] for v in vecs]
        self.n_cond = data.n_cond
        self._full: tuple[Sample, Any] | None = None
        self.ranks = None  # rank methods: every row sorted once, samples rank by counting
        if kind in ("spearman", "rho-a"):
            both = self.data if self.models is None else torch.cat([self.data, self.models])
            self.ranks = ColumnRanks(both)

    def prepared(self, cols: np.ndarray | None) -> tuple[Sample, Any]:
        """Data and models prepared on the columns ``cols`` (None: all, cached)."""
        if cols is None and self._full is not None:
            return self._full
        dev = self.data.device
        idx = torch.arange(self.data.shape[1], device=dev) if cols is None else \
            torch.as_tensor(cols, device=dev)
        d = self.data if cols is None else self.data[:, idx]
        m = None if self.models is None else (self.models if cols is None else
                                              self.models[:, idx])
        k = d.shape[0]
        if self.ranks is not None:
            r = self.ranks.ranks(idx)
            out = (prepare_rows(self.kind, d, r[:k]),
                   None if m is None else comparisons._prepare_gemm(self.kind, m, r[k:]))
        else:
            out = (prepare_rows(self.kind, d),
                   None if m is None else comparisons.prepare(self.kind, m)[0])
        if cols is None:
            self._full = out
        return out


def _sample_object(data: Any, rdm_descriptor: str, rdm_idx: np.ndarray | None,
                   pattern_descriptor: str | None, pattern_idx: np.ndarray | None) -> Any:
    """The sample as rsatoolbox builds it (for the rare sample handed to rsatoolbox)."""
    if rdm_idx is not None:
        data = data.subsample(rdm_descriptor, rdm_idx)
    if pattern_idx is not None:
        data = data.subsample_pattern(pattern_descriptor, pattern_idx)
    return data


def _scores(batch: _Batch, sample: Sample, models: Any, preds: list, rows: np.ndarray,
            groups: np.ndarray, make_sample: Any, method: str, rdm_descriptor: str,
            pattern_descriptor: str | None, pattern_idx: np.ndarray | None,
            ceiling: bool = True, make_test: Any = None) -> tuple:
    """Model scores and ceiling of one sample, in batch; a sample with a degenerate RDM is
    scored by rsatoolbox's own compare and boot_noise_ceiling on rsatoolbox's sample object
    (``make_test``: the object the models are compared with where rsatoolbox reorders its RDMs:
    with a degenerate RDM its scores depend on the order)."""
    evals, nc = sample_scores(batch.kind, sample, models, batch.model_rows, rows, groups,
                              ceiling)
    if evals is None or (ceiling and nc is None):
        obj = make_sample()
    if evals is None:
        evals = np.zeros(len(preds))
        for j, pred in enumerate(preds):
            if pattern_idx is not None:
                pred = pred.subsample_pattern(pattern_descriptor, pattern_idx)
            test = obj if make_test is None else make_test()
            evals[j] = np.mean(original("compare")(pred, test, method))
    if ceiling and nc is None:
        nc = original("boot_noise_ceiling")(obj, method=method, rdm_descriptor=rdm_descriptor)
    return evals, nc


@_one_thread
def _bootstrap(models: Any, data: Any, theta: Any, method: str, N: int,
               pattern_descriptor: str | None, rdm_descriptor: str | None,
               boot_noise_ceil: bool, name: str) -> Any:
    """The shared loop of the three bootstraps: draws as rsatoolbox does, scores in batch."""
    kind = FAST_METHODS.get(method)
    preds = None if kind is None else _fixed_predictions(models, data, pattern_descriptor)
    if preds is None:
        kwargs = {"rdm_descriptor": rdm_descriptor, "boot_noise_ceil": boot_noise_ceil}
        if pattern_descriptor is not None:
            kwargs["pattern_descriptor"] = pattern_descriptor
        return original(name)(models, data, theta=theta, method=method, N=N, **kwargs)
    rsa = _rsa()
    models, evaluations, theta, _ = rsa.util.inference_util.input_check_model(
        models, theta, None, N)
    batch = _Batch(kind, data, preds)
    rdm_desc = np.asarray(data.rdm_descriptors[rdm_descriptor])
    noise_min, noise_max = [], []
    for i in range(N):
        rows = np.arange(data.n_rdm)
        rdm_idx = pattern_idx = None
        if name != "eval_bootstrap_pattern":  # RDM groups first (bootstrap_sample's order)
            rdm_select = np.unique(rdm_desc)
            rdm_idx = rdm_select[np.random.randint(0, len(rdm_select), size=len(rdm_select))]
            rows = _rows(rdm_desc, rdm_idx)
        cols = None
        if name != "eval_bootstrap_rdm":
            pattern_select = np.unique(data.pattern_descriptors[pattern_descriptor])
            pattern_idx = pattern_select[np.random.randint(0, len(pattern_select),
                                                           size=len(pattern_select))]
            if len(np.unique(pattern_idx)) < 3:
                evaluations[i, :] = np.nan
                noise_min.append(np.nan)
                noise_max.append(np.nan)
                continue
            sel = _selection(data.pattern_descriptors[pattern_descriptor], pattern_idx)
            cols = _kept_columns(batch.n_cond, sel)

        make_sample = functools.partial(_sample_object, data, rdm_descriptor, rdm_idx,
                                        pattern_descriptor, pattern_idx)
        sample, prep_models = batch.prepared(cols)
        evals, nc = _scores(batch, sample, prep_models, batch.rdm_objs, rows, rdm_desc[rows],
                            make_sample, method, rdm_descriptor, pattern_descriptor,
                            pattern_idx, boot_noise_ceil)
        evaluations[i, :] = evals
        if boot_noise_ceil:
            noise_min.append(nc[0])
            noise_max.append(nc[1])
    return _result(rsa, name, models, evaluations, noise_min, noise_max, data, method,
                   rdm_descriptor, boot_noise_ceil)


def _result(rsa: Any, name: str, models: list, evaluations: np.ndarray, noise_min: list,
            noise_max: list, data: Any, method: str, rdm_descriptor: str,
            boot_noise_ceil: bool) -> Any:
    """rsatoolbox's Result with its variances, degrees of freedom and counts for ``name``."""
    ok = np.isfinite(evaluations[:, 0])
    if boot_noise_ceil:
        noise_ceil = np.array([noise_min, noise_max])
        variances = np.cov(np.concatenate([evaluations[ok, :].T, noise_ceil[:, ok]]))
    else:
        noise_ceil = np.array(boot_noise_ceiling(data, method=method,
                                                 rdm_descriptor=rdm_descriptor))
        variances = np.cov(evaluations[ok, :].T)
    n_rdm, n_pattern = data.n_rdm, data.n_cond
    if name == "eval_bootstrap":
        cv_method, dof = "bootstrap", min(data.n_rdm, data.n_cond) - 1
    elif name == "eval_bootstrap_pattern":
        cv_method, dof, n_rdm = "bootstrap_pattern", data.n_cond - 1, None
    else:  # rsatoolbox 0.3.2 recomputes the variances over every sample
        cv_method, dof, n_pattern = "bootstrap_rdm", data.n_rdm - 1, None
        variances = np.cov(evaluations.T)
    result = rsa.inference.result.Result(
        models, evaluations, method=method, cv_method=cv_method, noise_ceiling=noise_ceil,
        variances=variances, dof=dof, n_rdm=n_rdm, n_pattern=n_pattern)
    result.n_rdm, result.n_pattern = data.n_rdm, data.n_cond  # as rsatoolbox sets them after
    return result


def eval_bootstrap(models: Any, data: Any, theta: Any = None, method: str = "cosine",
                   N: int = 1000, pattern_descriptor: str = "index",
                   rdm_descriptor: str = "index", boot_noise_ceil: bool = True) -> Any:
    """``rsatoolbox.inference.eval_bootstrap`` (RDMs and patterns resampled) on l2bg."""
    return _bootstrap(models, data, theta, method, N, pattern_descriptor, rdm_descriptor,
                      boot_noise_ceil, "eval_bootstrap")


def eval_bootstrap_pattern(models: Any, data: Any, theta: Any = None, method: str = "cosine",
                           N: int = 1000, pattern_descriptor: str = "index",
                           rdm_descriptor: str = "index", boot_noise_ceil: bool = True) -> Any:
    """``rsatoolbox.inference.eval_bootstrap_pattern`` (patterns resampled) on l2bg."""
    return _bootstrap(models, data, theta, method, N, pattern_descriptor, rdm_descriptor,
                      boot_noise_ceil, "eval_bootstrap_pattern")


def eval_bootstrap_rdm(models: Any, data: Any, theta: Any = None, method: str = "cosine",
                       N: int = 1000, rdm_descriptor: str = "index",
                       boot_noise_ceil: bool = True) -> Any:
    """``rsatoolbox.inference.eval_bootstrap_rdm`` (RDMs resampled) on l2bg."""
    return _bootstrap(models, data, theta, method, N, None, rdm_descriptor, boot_noise_ceil,
                      "eval_bootstrap_rdm")


@_one_thread
def eval_fixed(models: Any, data: Any, theta: Any = None, method: str = "cosine") -> Any:
    """``rsatoolbox.inference.eval_fixed`` on l2bg: every model against every data RDM."""
    kind = FAST_METHODS.get(method)
    preds = None if kind is None else _fixed_predictions(models, data, None)
    if preds is None:
        return original("eval_fixed")(models, data, theta=theta, method=method)
    rsa = _rsa()
    models, evaluations, theta, _ = rsa.util.inference_util.input_check_model(
        models, theta, None, 1)
    batch = _Batch(kind, data, preds)
    sample, prep = batch.prepared(None)
    if sample.dead or is_dead(kind, prep):  # rsatoolbox's own arithmetic (see is_dead)
        s = np.concatenate([original("compare")(p, data, method) for p in preds])
    else:
        s = comparisons.cross(kind, prep, sample.prep, degenerate=float("nan")).cpu().numpy()
    evaluations = np.repeat(np.expand_dims(evaluations, -1), data.n_rdm, -1)
    lo = 0
    for k, n in enumerate(batch.model_rows):  # rsatoolbox assigns (n, K) into a (K,) row
        evaluations[k] = s[lo:lo + n]
        lo += n
    evaluations = evaluations.reshape((1, len(models), data.n_rdm))
    noise_ceil = boot_noise_ceiling(data, method=method, rdm_descriptor="index")
    variances, dof = None, 0
    if data.n_rdm > 1:
        variances = np.cov(evaluations[0], ddof=0) / evaluations.shape[-1]
        dof = evaluations.shape[-1] - 1
    result = rsa.inference.result.Result(
        models, evaluations, method=method, cv_method="fixed", noise_ceiling=noise_ceil,
        variances=variances, dof=dof, n_rdm=data.n_rdm, n_pattern=None)
    result.n_pattern = data.n_cond
    return result


@_one_thread
def boot_noise_ceiling(rdms: Any, method: str = "cosine",
                       rdm_descriptor: str = "index") -> tuple[float, float]:
    """``rsatoolbox.inference.boot_noise_ceiling`` on l2bg: (lower, upper) noise ceiling from
    leave-one-group-out pools (every copy of the left-out RDM dropped) and the full pool."""
    kind = FAST_METHODS.get(method)
    rsa = _rsa()
    fall = kind is None or not isinstance(rdms, rsa.rdm.RDMs)
    v = None if fall else rdms.get_vectors()
    if v is not None and v.dtype.kind in "fiu":
        nan = np.isnan(v)
        cols = ~nan[0]
        if (nan != nan[0]).any() or not np.isfinite(v[:, cols]).all() or cols.sum() < 3:
            fall = True
    else:
        fall = True
    if fall:
        return original("boot_noise_ceiling")(rdms, method=method, rdm_descriptor=rdm_descriptor)
    sample = prepare_rows(kind, _tensor(v[:, cols]))
    rows = np.arange(rdms.n_rdm)
    groups = np.asarray(rdms.rdm_descriptors[rdm_descriptor])
    _, nc = sample_scores(kind, sample, None, [], rows, groups)
    if nc is None:
        return original("boot_noise_ceiling")(rdms, method=method, rdm_descriptor=rdm_descriptor)
    return nc
