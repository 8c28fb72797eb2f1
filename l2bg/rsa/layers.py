"""Layer x layer RSA: the similarity of every layer of one network with every layer of another
(or of several networks), as a labelled matrix with a heatmap.

Each layer's RDM (l2bg's correlation distance, docs/design.md "RDM") is computed once: streamed
from disk in slices of features (:mod:`l2bg.rsa.stream`) or from tensors in memory. The RDMs of
all layers are then compared with one registry method (:mod:`l2bg.rsa.methods`), every RDM
prepared (ranked, for rank methods) once and all pairs combined in one batched call.

* one source: its layers against themselves (a square matrix);
* two sources: rows are the first network's layers, columns the second's;
* three or more: every (source, layer) against every other, labelled ``source:layer``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from l2bg.base.errors import L2BGError
from l2bg.rsa import methods
from l2bg.rsa.blas import one_torch_thread
from l2bg.rsa.ondisk import Source, open_source
from l2bg.rsa.stream import stream_rdm

__all__ = ["OUTPUTS", "LayerMatrix", "layer_similarity", "sample_rows"]

#: What :meth:`LayerMatrix.save` writes, in the order ``l2bg rsa`` publishes them
#: (similarity.json last: the completion marker, :mod:`l2bg.base.outdir`).
OUTPUTS = ("similarity.csv", "similarity.png", "similarity.json")

Activations = Source | str | Path | Mapping[str, Tensor]


@dataclass
class LayerMatrix:
    """``values[i, j]``: similarity (``method``) of the RDMs of layer ``rows[i]`` and layer
    ``cols[j]``, over ``n`` samples."""

    rows: list[str]
    cols: list[str]
    values: np.ndarray
    method: str
    n: int
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "n": self.n, "rows": self.rows, "cols": self.cols,
                "values": [[float(v) for v in row] for row in self.values], **self.info}

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["", *self.cols])
        for name, row in zip(self.rows, self.values, strict=True):
            w.writerow([name, *(repr(float(v)) for v in row)])
        return buf.getvalue()

    def heatmap(self, path: str | Path, *, title: str | None = None) -> Path:
        """The matrix as a PNG heatmap (matplotlib, Agg canvas; no global backend change)."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            raise L2BGError("the heatmap needs matplotlib; pip install matplotlib") from None
        from l2bg.base.fileio import atomic_write

        h, w = len(self.rows), len(self.cols)
        fig = Figure(figsize=(2.5 + 0.45 * w, 2.0 + 0.4 * h))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        lo = -1.0 if float(np.nanmin(self.values, initial=0.0)) < 0 else 0.0
        im = ax.imshow(self.values, cmap="viridis", vmin=lo, vmax=1.0, aspect="auto")
        ax.set_xticks(range(w), self.cols, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(h), self.rows, fontsize=8)
        ax.set_title(title or f"{self.method}, n = {self.n}", fontsize=9)
        sources = self.info.get("sources", [])
        if len(sources) == 2:
            ax.set_ylabel(Path(sources[0]).name, fontsize=8)
            ax.set_xlabel(Path(sources[1]).name, fontsize=8)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))

    def save(self, out: str | Path) -> dict[str, Path]:
        """``similarity.json``, ``similarity.csv`` and ``similarity.png`` in ``out`` (atomic)."""
        from l2bg.base.fileio import atomic_write, write_json

        out = Path(out)
        csv_name, png_name, json_name = OUTPUTS
        return {"json": write_json(out / json_name, self.to_dict()),
                "csv": atomic_write(out / csv_name, self.to_csv()),
                "png": self.heatmap(out / png_name)}


def sample_rows(n: int, samples: int | Sequence[int] | None, seed: int = 0) -> np.ndarray | None:
    """Increasing row indices: all (None), ``samples`` of them drawn with ``seed``, or the
    given indices."""
    if samples is None:
        return None
    if isinstance(samples, int):
        if not 3 <= samples <= n:
            raise L2BGError(f"samples must be between 3 and the {n} samples available, got "
                            f"{samples}")
        gen = torch.Generator().manual_seed(seed)
        return torch.randperm(n, generator=gen)[:samples].sort().values.numpy()
    rows = np.unique(np.asarray(samples, dtype=np.int64))
    if rows.size < 3 or rows[0] < 0 or rows[-1] >= n:
        raise L2BGError(f"sample indices must be >= 3 distinct values in [0, {n})")
    return rows


def _layer_rdms(act: Activations, names: list[str] | None, rows: np.ndarray | None, *,
                slice_width: int, device: torch.device, backend: str,
                progress: bool | None, shard: str = "split",
                ) -> tuple[list[str], list[Tensor], set[str]]:
    """(layer names, packed RDM per layer, backends that ran) of one network; on-disk layers
    under torch.distributed: sharded by features (:func:`l2bg.rsa.distributed.sharded_rdm`)."""
    from l2bg import rsa

    ran: set[str] = set()
    if isinstance(act, Mapping):
        names = list(act) if names is None else names
        missing = [k for k in names if k not in act]
        if missing:
            raise L2BGError(f"layer {missing[0]!r} is not among the activations (it has: "
                            f"{', '.join(act)})")
        out = []
        for k in names:
            x = act[k] if rows is None else act[k][torch.from_numpy(rows)]
            x = x.reshape(x.shape[0], -1)
            t, r = rsa.rdm_triu(x.to(device), backend=backend, return_backend=True)
            out.append(t)
            ran.add(r)
        return names, out, ran
    source = act if isinstance(act, Source) else open_source(act)
    layers = source.select(names)
    out = []
    from l2bg.rsa import distributed

    if distributed.active():  # torchrun: every layer's features sharded across the ranks
        distributed.same_on_all_ranks([len(layers)], f"the number of layers of {source.path}")
        for layer in layers:
            n = layer.n if rows is None else len(rows)
            unit = layer.d // layer.shape[0] if layer.shape and layer.shape[0] else 1
            out.append(distributed.sharded_rdm(
                lambda a, b, layer=layer: layer.read(rows, a, b), n, layer.d, unit=unit,
                slice_width=slice_width, device=device, own=shard == "own", name=layer.name))
        return [layer.name for layer in layers], out, {"torch-distributed"}
    for layer in layers:
        n = layer.n if rows is None else len(rows)
        t, r = stream_rdm(lambda a, b, layer=layer: layer.read(rows, a, b), n, layer.d,
                          slice_width=slice_width, device=device, backend=backend,
                          progress=progress, desc=f"rdm {layer.name}")
        out.append(t)
        ran.add(r)
    return [layer.name for layer in layers], out, ran


def _count(act: Activations) -> tuple[str, int]:
    if isinstance(act, Mapping):
        counts = {int(t.shape[0]) for t in act.values()}
        if len(counts) != 1:
            raise L2BGError("in-memory activations: every layer needs the same number of samples")
        return "activations", counts.pop()
    source = act if isinstance(act, Source) else open_source(act)
    return str(source.path), source.n


def layer_similarity(sources: Sequence[Activations], *,
                     layers: Sequence[Sequence[str] | None] | None = None,
                     names: Sequence[str] | None = None, method: str = "spearman",
                     samples: int | Sequence[int] | None = None, seed: int = 0,
                     device: str | torch.device = "cpu", backend: str = "auto",
                     slice_width: int = 4096, progress: bool | None = None,
                     shard: str = "split") -> LayerMatrix:
    """Layer x layer similarity of one or more networks fed the same inputs.

    ``sources``: on-disk sources (paths or ``Source``) or mappings layer -> tensor (n, ...);
    ``layers``: per source, the layer names to use (None: all); ``names``: labels of the
    sources (three or more); ``samples``: a number of samples drawn with ``seed``, or indices.
    Under torch.distributed (torchrun) every on-disk layer's RDM is sharded by features: with
    ``shard='split'`` each rank reads its slice of the columns of the same sources, with
    ``'own'`` its sources hold its own features; every rank returns the same matrix."""
    from l2bg.rsa.distributed import SHARDS

    if shard not in SHARDS:
        raise L2BGError(f"shard {shard!r} is unknown; use one of {', '.join(SHARDS)}")
    if isinstance(sources, str | Path | Source | Mapping) or not sources:
        raise L2BGError("layer_similarity: pass a list of one or more sources")
    spec = methods.get(method)
    opened = [s if isinstance(s, Mapping | Source) else open_source(s) for s in sources]
    counts = [_count(s) for s in opened]
    if len({c for _, c in counts}) > 1:
        detail = ", ".join(f"{p} has n={c}" for p, c in counts)
        raise L2BGError(f"the sources have different numbers of samples ({detail}); capture "
                        "every network on the same inputs")
    n = counts[0][1]
    rows = sample_rows(n, samples, seed)
    if rows is None and n < 3:
        raise L2BGError(f"RSA needs at least 3 samples, the sources have {n}")
    per_source = list(layers) if layers is not None else [None] * len(opened)
    if len(per_source) != len(opened):
        raise L2BGError(f"layers: {len(per_source)} lists for {len(opened)} sources")
    device = torch.device(device)
    labels, rdms, ran = [], [], set()
    for act, names_k in zip(opened, per_source, strict=True):
        got_names, got, r = _layer_rdms(act, None if names_k is None else list(names_k), rows,
                                        slice_width=slice_width, device=device, backend=backend,
                                        progress=progress, shard=shard)
        labels.append(got_names)
        rdms.append(got)
        ran |= r
    with one_torch_thread(device):  # both sides ranked side by side (comparisons._both)
        if len(opened) == 2:
            ta, tb = _stack(rdms[0]), _stack(rdms[1])
            values, row_names, col_names = spec.all_pairs(ta, tb), labels[0], labels[1]
        else:
            tags = names or [f"net{k}" for k in range(len(opened))]
            flat = [f"{tags[k]}:{x}" if len(opened) > 1 else x
                    for k, group in enumerate(labels) for x in group]
            values = spec.all_pairs(_stack([t for group in rdms for t in group]))
            row_names = col_names = flat
    used = len(rows) if rows is not None else n
    info = {"sources": [p for p, _ in counts], "rdm": "correlation distance",
            "rdm_backend": "+".join(sorted(ran))}
    return LayerMatrix(row_names, col_names, values.to("cpu", torch.float64).numpy(),
                       spec.name, used, info)


def _stack(rdms: list[Tensor]) -> Tensor:
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in rdms) else torch.float32
    if len(rdms) == 1:  # no copy of a lone (possibly n = 10,000: 200 MB) triangle
        return rdms[0].to(dtype).unsqueeze(0)
    return torch.stack([t.to(dtype) for t in rdms])
