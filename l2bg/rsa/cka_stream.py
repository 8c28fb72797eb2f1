"""Streaming CKA: the unbiased HSIC, debiased CKA and minibatch CKA of every layer pair.

For Grams K, L (n, n) with zero diagonals K~, L~ (Song et al. 2012), the unbiased HSIC is

    HSIC1(K, L) = [tr(K~ L~) + 1ᵀK~1 · 1ᵀL~1 / ((n-1)(n-2)) - 2/(n-2) · 1ᵀK~L~1] / (n(n-3))

(defined for n >= 4). Debiased CKA (Kornblith et al. 2019) is HSIC1(K, L) / sqrt(HSIC1(K, K) ·
HSIC1(L, L)) on one set of n inputs. Minibatch CKA (Nguyen, Raghu & Kornblith, ICLR 2021) sums
HSIC1 over minibatches k: CKA_ij = Σ_k HSIC1(K_i, L_j) / sqrt(Σ_k HSIC1(K_i, K_i) · Σ_k
HSIC1(L_j, L_j)); each batch's term carries its own 1/(n(n-3)), so an uneven last batch is right.
Per batch each layer's Gram is computed once and all pairs' terms come from one product of the
flattened zero-diagonal Grams plus row-sum and total corrections. Accumulators are float64.

Kernels: ``linear`` (X Xᵀ) and ``rbf`` (exp(-‖x-x'‖² / (2 s²)), s = sigma · the median pairwise
distance of the batch, s = sigma when that median is 0). A pair whose self-HSIC sum is at most
CONSTANT_HSIC_TOL of its scale (a constant layer) gets 0, as :func:`l2bg.rsa.cka.linear_cka`
defines it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from l2bg.base.errors import L2BGError, ParamError

__all__ = ["CKAAccumulator", "debiased_cka", "gram", "minibatch_cka", "sources_cka",
           "unbiased_hsic"]

KERNELS = ("linear", "rbf")


def gram(x: Tensor, kernel: str = "linear", sigma: float = 1.0) -> Tensor:
    """The float64 Gram (n, n) of x (n, ...) under ``kernel``."""
    if kernel not in KERNELS:
        raise L2BGError(f"kernel {kernel!r} is unknown; use one of {', '.join(KERNELS)}")
    x = x.detach().reshape(x.shape[0], -1).to(torch.float64)
    g = x @ x.mT
    if kernel == "linear":
        return g
    if not sigma > 0:
        raise ParamError(f"{{sigma}} must be > 0, got {sigma}", "sigma")
    sq = g.diagonal()
    d2 = (sq[:, None] + sq[None, :] - 2 * g).clamp_min(0.0)
    med = _median_distance(d2)
    s = sigma * torch.where(med > 0, med, torch.ones_like(med))
    return torch.exp(-d2 / (2 * s * s))


def _median_distance(d2: Tensor) -> Tensor:
    """The median (mean of the two middle values when even, as numpy's) of the pairwise
    distances i < j, from squared distances (n, n)."""
    n = d2.shape[0]
    iu = torch.triu_indices(n, n, 1, device=d2.device)
    v = d2[iu[0], iu[1]]
    m = v.numel()
    if m == 0:
        return d2.new_tensor(0.0)
    lo = v.kthvalue((m + 1) // 2).values
    hi = v.kthvalue(m // 2 + 1).values
    return (lo.sqrt() + hi.sqrt()) / 2


def _parts(grams: Tensor, inplace: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(flattened zero-diagonal Grams (p, n²), their row sums (p, n), totals (p,));
    ``inplace``: the diagonals of ``grams`` itself are zeroed (no copy)."""
    k = grams if inplace else grams.clone()
    k.diagonal(dim1=-2, dim2=-1).zero_()
    rows = k.sum(-1)
    return k.flatten(-2), rows, rows.sum(-1)


def _check_n(n: int) -> None:
    if n < 4:
        raise L2BGError(f"the unbiased HSIC needs at least 4 samples per batch (it divides by "
                        f"n(n-3)), got {n}; raise the batch size or drop the short last batch")


def _hsic_pairs(a: tuple[Tensor, Tensor, Tensor], b: tuple[Tensor, Tensor, Tensor],
                n: int) -> Tensor:
    """HSIC1 of every pair (p, q) from :func:`_parts` of both sides, in three products."""
    (fa, ra, ta), (fb, rb, tb) = a, b
    t = fa @ fb.mT + ta[:, None] * tb[None, :] / ((n - 1) * (n - 2)) - 2 / (n - 2) * (ra @ rb.mT)
    return t / (n * (n - 3))


def _sq_norms(f: Tensor) -> Tensor:
    """‖row‖² of each row of f (p, m), as batched dot products (no (p, m) temporary)."""
    return (f.unsqueeze(-2) @ f.unsqueeze(-1)).reshape(f.shape[:-1])


def _hsic_self(a: tuple[Tensor, Tensor, Tensor], n: int, ff: Tensor | None = None) -> Tensor:
    """HSIC1(K_i, K_i) for each i (p,); ``ff``: :func:`_sq_norms` of the flattened Grams."""
    f, r, t = a
    ff = _sq_norms(f) if ff is None else ff
    out = ff + t.square() / ((n - 1) * (n - 2)) - 2 / (n - 2) * r.square().sum(-1)
    return out / (n * (n - 3))


def _checked_gram(t: Tensor, kernel: str, sigma: float) -> Tensor:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise L2BGError("a layer has NaN or inf activations; fix the network or its inputs")
    return gram(t, kernel, sigma)


def _grams(feats: Sequence[Tensor], kernel: str, sigma: float) -> Tensor:
    """The Grams (p, n, n) of p layers' activations, formed one at a time into one tensor."""
    n = int(feats[0].shape[0])
    out = torch.empty((len(feats), n, n), dtype=torch.float64, device=feats[0].device)
    for i, t in enumerate(feats):
        out[i] = _checked_gram(t, kernel, sigma)
    return out


def unbiased_hsic(k: Tensor, l: Tensor) -> Tensor:  # noqa: E741
    """HSIC1 of two Grams (n, n), float64 (Song et al. 2012)."""
    n = k.shape[-1]
    _check_n(n)
    return _hsic_pairs(_parts(k.to(torch.float64)[None]), _parts(l.to(torch.float64)[None]),
                       n)[0, 0]


#: A self-HSIC sum at most this fraction of Σ_k ‖K̃_k‖_F² / (n_k(n_k−3)) is a constant layer
#: (the U-statistic of a constant Gram is 0 up to rounding).
CONSTANT_HSIC_TOL = 1e-10


def _ratio(xy: Tensor, xx: Tensor, yy: Tensor, sx: Tensor, sy: Tensor) -> Tensor:
    den = xx[:, None] * yy[None, :]
    ok = (xx > CONSTANT_HSIC_TOL * sx)[:, None] & (yy > CONSTANT_HSIC_TOL * sy)[None, :]
    return torch.where(ok, xy / torch.where(ok, den, torch.ones_like(den)).sqrt(),
                       torch.zeros_like(xy))


def debiased_cka(x: Tensor, y: Tensor, *, kernel: str = "linear", sigma: float = 1.0) -> Tensor:
    """Debiased CKA of x (n, ...) and y (n, ...) on one set of n >= 4 inputs (float64 scalar)."""
    if x.shape[0] != y.shape[0]:
        raise L2BGError(f"debiased_cka: x has {x.shape[0]} samples and y {y.shape[0]}; pass "
                        "activations of the same inputs")
    acc = CKAAccumulator(kernel=kernel, sigma=sigma)
    acc.update([x], [y])
    return acc.cka()[0, 0]


class CKAAccumulator:
    """Σ_k HSIC1 of every (A layer, B layer) pair and of each layer with itself, over batches."""

    def __init__(self, *, kernel: str = "linear", sigma: float = 1.0) -> None:
        if kernel not in KERNELS:
            raise L2BGError(f"kernel {kernel!r} is unknown; use one of {', '.join(KERNELS)}")
        self.kernel, self.sigma = kernel, sigma
        self.xy: Tensor | None = None
        self.xx: Tensor | None = None
        self.yy: Tensor | None = None
        self.sx: Tensor | float = 0.0
        self.sy: Tensor | float = 0.0
        self.n = 0
        self.batches = 0

    def update(self, feats_a: Sequence[Tensor], feats_b: Sequence[Tensor]) -> None:
        """Add one batch: each layer's activations (n, ...) of the same n inputs."""
        ns = {int(t.shape[0]) for t in [*feats_a, *feats_b]}
        if len(ns) != 1:
            raise L2BGError(f"one batch has layers with different sample counts {sorted(ns)}; "
                            "every layer must see the same inputs")
        _check_n(ns.pop())
        self.add_grams(_grams(feats_a, self.kernel, self.sigma),
                       _grams(feats_b, self.kernel, self.sigma))

    def add_grams(self, grams_a: Tensor, grams_b: Tensor) -> None:
        """Add one batch as float64 Grams (p, n, n) of A's layers and (q, n, n) of B's under
        this accumulator's kernel; they are consumed (their diagonals zeroed in place)."""
        n = int(grams_a.shape[-1])
        if grams_a.shape[1:] != (n, n) or grams_b.shape[1:] != (n, n):
            raise L2BGError(f"one batch has Grams of shapes {tuple(grams_a.shape)} and "
                            f"{tuple(grams_b.shape)}; every layer must see the same n inputs")
        _check_n(n)
        pa, pb = _parts(grams_a, inplace=True), _parts(grams_b, inplace=True)
        fa, fb = _sq_norms(pa[0]), _sq_norms(pb[0])
        xy, xx, yy = _hsic_pairs(pa, pb, n), _hsic_self(pa, n, fa), _hsic_self(pb, n, fb)
        if self.xy is None:
            self.xy, self.xx, self.yy = xy, xx, yy
        else:
            self.xy, self.xx, self.yy = self.xy + xy, self.xx + xx, self.yy + yy
        self.sx = self.sx + fa / (n * (n - 3))
        self.sy = self.sy + fb / (n * (n - 3))
        self.n += n
        self.batches += 1

    def state(self, p: int, q: int) -> Tensor:
        """Every sum as one float64 vector (for ``p`` x ``q`` layers; zeros before the first
        batch), which :mod:`l2bg.rsa.distributed` all-reduces."""
        dev = self.xy.device if self.xy is not None else torch.device("cpu")
        z = torch.zeros
        parts = [self.xy if self.xy is not None else z((p, q), dtype=torch.float64, device=dev),
                 self.xx if self.xx is not None else z(p, dtype=torch.float64, device=dev),
                 self.yy if self.yy is not None else z(q, dtype=torch.float64, device=dev),
                 torch.as_tensor(self.sx, dtype=torch.float64, device=dev).expand(p),
                 torch.as_tensor(self.sy, dtype=torch.float64, device=dev).expand(q),
                 torch.tensor([self.n, self.batches], dtype=torch.float64, device=dev)]
        return torch.cat([t.reshape(-1) for t in parts])

    def set_state(self, state: Tensor, p: int, q: int) -> None:
        """The sums from a vector of :meth:`state`'s layout."""
        xy, xx, yy, sx, sy, counts = state.split([p * q, p, q, p, q, 2])
        self.xy, self.xx, self.yy, self.sx, self.sy = xy.reshape(p, q), xx, yy, sx, sy
        self.n, self.batches = int(counts[0]), int(counts[1])

    def cka(self) -> Tensor:
        """Minibatch CKA (p, q), float64."""
        if self.xy is None or self.xx is None or self.yy is None:
            raise L2BGError("minibatch CKA saw no batch; pass a non-empty loader or source")
        return _ratio(self.xy, self.xx, self.yy, torch.as_tensor(self.sx),
                      torch.as_tensor(self.sy))


def _result(acc: CKAAccumulator, rows: list[str], cols: list[str], info: dict[str, Any]) -> Any:
    from l2bg.rsa.layers import LayerMatrix

    info = {"kernel": acc.kernel, "sigma": acc.sigma, "batches": acc.batches, **info}
    return LayerMatrix(list(rows), list(cols), acc.cka().cpu().numpy(), "cka-minibatch", acc.n,
                       info)


def _modules(model: nn.Module, names: Sequence[str], which: str) -> list[nn.Module]:
    mods = dict(model.named_modules())
    missing = [k for k in names if k not in mods]
    if missing:
        raise L2BGError(f"{which}: {missing[0]!r} is not a module of the model; names are those "
                        "of model.named_modules()")
    if not names:
        raise L2BGError(f"{which}: name at least one layer")
    return [mods[k] for k in names]


def _shard(shard: str) -> tuple[int, int]:
    """(rank, world) of the batches this process takes: under torch.distributed with ``split``
    every world-th batch of the same batches, else (0, 1): all of them."""
    from l2bg.rsa import distributed

    if shard not in distributed.SHARDS:
        raise L2BGError(f"shard {shard!r} is unknown; use split (each rank takes every W-th "
                        "batch) or own (each rank's loader or source holds its own samples)")
    return distributed.rank_world() if shard == "split" else (0, 1)


def minibatch_cka(model_a: nn.Module, model_b: nn.Module, loader: Iterable[Any],
                  layers_a: Sequence[str], layers_b: Sequence[str], *, kernel: str = "linear",
                  sigma: float = 1.0, device: str | torch.device | None = None,
                  shard: str = "split") -> Any:
    """Minibatch CKA of every (``layers_a`` of model_a, ``layers_b`` of model_b) pair over the
    batches of ``loader`` (a tensor, or a tuple/list whose first item is the input), through
    forward hooks; no activation outlives its batch. Returns a
    :class:`l2bg.rsa.layers.LayerMatrix`.

    Under torch.distributed (:mod:`l2bg.rsa.distributed`) the sums are all-reduced, so every
    rank returns the one-process result: with ``shard='split'`` every rank iterates the same
    loader and runs batch k when k % world == rank; with ``shard='own'`` each rank's loader
    yields its own samples (e.g. a DistributedSampler without padding) and all are used."""
    from l2bg.rsa import distributed

    rank, world = _shard(shard)
    mods_a = _modules(model_a, layers_a, "layers_a")
    mods_b = _modules(model_b, layers_b, "layers_b")
    sizes = (len(mods_a), len(mods_b))
    bufs: list[Tensor | None] = [None, None]  # this batch's Grams of each side, reused
    seen: set[tuple[int, int]] = set()

    def hook(key: tuple[int, int]):
        def fn(_m: nn.Module, _inp: Any, out: Any) -> None:
            if not isinstance(out, Tensor):
                raise L2BGError(f"layer {key} returns {type(out).__name__}, not a tensor; hook "
                                "a module whose output is a tensor")
            g = _checked_gram(out.detach(), kernel, sigma)  # the activations are not kept
            side, i = key
            buf = bufs[side]
            if buf is None or buf.shape[-1] != g.shape[-1] or buf.device != g.device:
                buf = bufs[side] = torch.empty((sizes[side], *g.shape), dtype=g.dtype,
                                               device=g.device)
            buf[i] = g
            seen.add(key)
        return fn

    handles = [m.register_forward_hook(hook((0, i))) for i, m in enumerate(mods_a)]
    handles += [m.register_forward_hook(hook((1, j))) for j, m in enumerate(mods_b)]
    acc = CKAAccumulator(kernel=kernel, sigma=sigma)
    dev = None if device is None else torch.device(device)
    try:
        with torch.no_grad():
            for k, batch in enumerate(loader):
                if k % world != rank:
                    continue
                x = batch[0] if isinstance(batch, tuple | list) else batch
                if dev is not None:
                    x = x.to(dev)
                seen.clear()
                model_a(x)
                if model_b is not model_a:
                    model_b(x)
                names = [(0, i, k) for i, k in enumerate(layers_a)]
                names += [(1, j, k) for j, k in enumerate(layers_b)]
                silent = [k for side, i, k in names if (side, i) not in seen]
                if silent:
                    raise L2BGError(f"layer {silent[0]!r} did not run in the forward pass; "
                                    "name a module the model calls")
                acc.add_grams(bufs[0], bufs[1])
                seen.clear()
    finally:
        for h in handles:
            h.remove()
    distributed.reduce_cka(acc, len(mods_a), len(mods_b))
    return _result(acc, list(layers_a), list(layers_b), {"kernel": kernel})


def sources_cka(sources: Sequence[Any], layers: Sequence[Sequence[str] | None], *,
                measure: str = "cka-minibatch", batch_size: int = 256, kernel: str = "linear",
                sigma: float = 1.0, device: str | torch.device = "cpu",
                shard: str = "split") -> Any:
    """CKA of the layers of one or two on-disk sources (:mod:`l2bg.rsa.ondisk`): ``linear-cka``
    (biased, all samples in memory, :func:`l2bg.rsa.cka.linear_cka`) or ``cka-minibatch`` (samples
    read in batches of ``batch_size``). One source is compared with itself. Under
    torch.distributed, ``cka-minibatch`` runs sharded as :func:`minibatch_cka` (``own``: each
    rank's sources hold its own samples)."""
    from l2bg.rsa import distributed
    from l2bg.rsa.ondisk import Source, open_source

    if not 1 <= len(sources) <= 2:
        raise L2BGError(f"{measure} compares one source with itself or two sources; got "
                        f"{len(sources)}")
    opened = [s if isinstance(s, Source) else open_source(s) for s in sources]
    if len(opened) == 1:
        opened, layers = [opened[0], opened[0]], [layers[0], layers[0]]
    la, lb = opened[0].select(_names(layers[0])), opened[1].select(_names(layers[1]))
    n = opened[0].n
    if opened[1].n != n:
        raise L2BGError(f"the sources have different numbers of samples ({opened[0].path} has "
                        f"n={n}, {opened[1].path} has n={opened[1].n}); capture every network on "
                        "the same inputs")
    dev = torch.device(device)
    info = {"sources": [str(s.path) for s in opened]}
    rows, cols = [x.name for x in la], [x.name for x in lb]
    if measure == "linear-cka":
        from l2bg.rsa.cka import linear_cka
        from l2bg.rsa.layers import LayerMatrix

        ys = [y.read(None, 0, y.d).to(dev) for y in lb]
        values = torch.stack([linear_cka(x.read(None, 0, x.d).to(dev), ys) for x in la])
        return LayerMatrix(rows, cols, values.cpu().numpy(), "linear-cka", n, info)
    if measure != "cka-minibatch":
        raise L2BGError(f"measure {measure!r} is not a CKA; use linear-cka or cka-minibatch")
    if batch_size < 4:
        raise ParamError(f"{{batch_size}} must be at least 4 (the unbiased HSIC), got "
                         f"{batch_size}", "batch_size")
    rank, world = _shard(shard)
    distributed.same_on_all_ranks([len(la), len(lb)] + ([n] if shard == "split" else []),
                                  "the layers or samples of the sources")
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] < 4:  # a short tail cannot be estimated: say so
        info["dropped_tail"] = int(n - starts.pop())
    acc = CKAAccumulator(kernel=kernel, sigma=sigma)
    for k, start in enumerate(starts):
        if k % world != rank:
            continue
        idx = np.arange(start, min(n, start + batch_size))
        acc.update([x.read(idx, 0, x.d).to(dev) for x in la],
                   [y.read(idx, 0, y.d).to(dev) for y in lb])
    distributed.reduce_cka(acc, len(la), len(lb))
    info["batch_size"] = batch_size
    return _result(acc, rows, cols, info)


def _names(names: Sequence[str] | None) -> list[str] | None:
    return None if names is None else list(names)
