"""Layer x layer RSA: the similarity of every layer of one network with every layer of another
(or of several networks), as a labelled matrix with a heatmap.

Each layer's RDM (l2bg's correlation distance, docs/design.md "RDM", or rsatoolbox's euclidean:
the squared distance over the number of features) is computed once: streamed from disk in slices
of features (:mod:`l2bg.rsa.stream`) or from tensors in memory. The RDMs of
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

from l2bg.base.errors import L2BGError, ParamError
from l2bg.rsa import methods
from l2bg.rsa.blas import one_torch_thread
from l2bg.rsa.ondisk import Source, open_source
from l2bg.rsa.stream import check_rdm, stream_rdm

__all__ = ["OUTPUTS", "LayerMatrix", "layer_similarity", "sample_rows", "source_names"]

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
        w.writerow([self.corner(), *self.cols])
        for name, row in zip(self.rows, self.values, strict=True):
            w.writerow([name, *(repr(float(v)) for v in row)])
        return buf.getvalue()

    def source_names(self) -> list[str]:
        """The sources' short names (their directory or file names), as labels use them."""
        return list(self.info.get("names") or source_names(self.info.get("sources", [])))

    def axis_titles(self) -> tuple[str, str]:
        """What the rows and the columns are: the layers of which source."""
        names = self.source_names()
        if len(names) > 2:
            return "source:layer", "source:layer"
        if not names:
            return "layers", "layers"
        return f"layers of {names[0]}", f"layers of {names[-1]}"

    def corner(self) -> str:
        """Which source is rows and which is columns, in one cell (the CSV's first)."""
        rows, cols = self.axis_titles()
        return f"rows: {rows} / columns: {cols}"

    def heatmap(self, path: str | Path, *, title: str | None = None) -> Path:
        """The matrix as a PNG heatmap (:func:`l2bg.base.figures.annotated_heatmap`: a
        diverging colour map centred at 0 when a value is negative; values in the cells of a
        small matrix; rows and columns named by their source)."""
        from l2bg.base.figures import save

        return save(self.heatmap_figure(title=title), path)

    def heatmap_figure(self, *, title: str | None = None) -> Any:
        """The figure :meth:`heatmap` writes."""
        from l2bg.base.figures import CELL_VALUES_MAX, annotated_heatmap, figure

        h, w = len(self.rows), len(self.cols)
        cells = max(h, w) <= CELL_VALUES_MAX
        fig = figure(2.8 + (0.55 if cells else 0.3) * w, 2.2 + (0.42 if cells else 0.28) * h,
                     dpi=120, constrained=True)
        ax = fig.add_subplot()
        im = annotated_heatmap(ax, self.values, self.rows, self.cols, vmin=0.0, vmax=1.0)
        ax.set_title(title or f"{self.method}, n = {self.n}", fontsize=9)
        rows, cols = self.axis_titles()
        if rows == "source:layer":  # thin lines between the sources' blocks
            heads = [r.split(":", 1)[0] for r in self.rows]
            for k in range(1, h):
                if heads[k] != heads[k - 1]:
                    ax.axhline(k - 0.5, c="k", lw=0.8)
                    ax.axvline(k - 0.5, c="k", lw=0.8)
        ax.set_ylabel(f"{rows} (rows)", fontsize=8)
        ax.set_xlabel(f"{cols} (columns)", fontsize=8)
        fig.colorbar(im, ax=ax, label=self.method)
        return fig

    def save(self, out: str | Path) -> dict[str, Path]:
        """``similarity.json``, ``similarity.csv`` and ``similarity.png`` in ``out`` (atomic)."""
        from l2bg.base.fileio import atomic_write, write_json

        out = Path(out)
        csv_name, png_name, json_name = OUTPUTS
        return {"json": write_json(out / json_name, self.to_dict()),
                "csv": atomic_write(out / csv_name, self.to_csv()),
                "png": self.heatmap(out / png_name)}


def source_names(sources: Sequence[Any]) -> list[str]:
    """Short names of sources: a directory's or file's name (``runs/a/acts`` -> ``acts``); two
    different paths with one name get as many parent directories as tell them apart; in-memory
    activations (no path) are ``net0``, ``net1``, ..."""
    paths = [Path(p) if isinstance(p, str | Path) else None for p in sources]
    depth = [1] * len(paths)

    def name(k: int) -> str:
        p = paths[k]
        return f"net{k}" if p is None else "/".join(p.parts[-depth[k]:]) or str(p)

    while True:
        names = [name(k) for k in range(len(paths))]
        clash = [k for k, p in enumerate(paths) if p is not None and depth[k] < len(p.parts)
                 and any(names[j] == names[k] and paths[j] != p for j in range(len(paths)))]
        if not clash:
            return names
        for k in clash:
            depth[k] += 1


def sample_rows(n: int, samples: int | Sequence[int] | None, seed: int = 0) -> np.ndarray | None:
    """Increasing row indices: all (None), ``samples`` of them drawn with ``seed``, or the
    given indices."""
    if samples is None:
        return None
    if isinstance(samples, int):
        if not 3 <= samples <= n:
            raise ParamError(f"{{samples}} must be between 3 and the {n} samples available, "
                             f"got {samples}", "samples")
        gen = torch.Generator().manual_seed(seed)
        return torch.randperm(n, generator=gen)[:samples].sort().values.numpy()
    rows = np.unique(np.asarray(samples, dtype=np.int64))
    if rows.size < 3 or rows[0] < 0 or rows[-1] >= n:
        raise L2BGError(f"sample indices must be >= 3 distinct values in [0, {n})")
    return rows


def _layer_rdms(act: Activations, names: list[str] | None, rows: np.ndarray | None, *,
                slice_width: int, device: torch.device, backend: str,
                progress: bool | None, rdm: str = "correlation", shard: str = "split",
                ) -> tuple[list[str], list[Tensor], set[str]]:
    """(layer names, packed RDM per layer, backends that ran) of one network; on-disk layers
    under torch.distributed: sharded by features (:func:`l2bg.rsa.distributed.sharded_rdm`)."""
    from l2bg import rsa
    from l2bg.rsa.distances import euclidean
    from l2bg.rsa.reference import acc_dtype

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
            if rdm == "euclidean":
                t, r = euclidean(x.to(device, acc_dtype(x.dtype)).unsqueeze(0))[0], "torch"
            else:
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
                slice_width=slice_width, device=device, own=shard == "own", name=layer.name,
                rdm=rdm))
        return [layer.name for layer in layers], out, {"torch-distributed"}
    for layer in layers:
        n = layer.n if rows is None else len(rows)
        t, r = stream_rdm(lambda a, b, layer=layer: layer.read(rows, a, b), n, layer.d,
                          slice_width=slice_width, device=device, backend=backend,
                          progress=progress, desc=f"rdm {layer.name}", rdm=rdm)
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
                     rdm: str = "correlation", shard: str = "split") -> LayerMatrix:
    """Layer x layer similarity of one or more networks fed the same inputs.

    ``sources``: on-disk sources (paths or ``Source``) or mappings layer -> tensor (n, ...);
    ``layers``: per source, the layer names to use (None: all); ``names``: labels of the
    sources (three or more); ``samples``: a number of samples drawn with ``seed``, or indices;
    ``rdm``: 'correlation' (l2bg's) or 'euclidean' (rsatoolbox's, on the torch backend).
    Under torch.distributed (torchrun) every on-disk layer's RDM is sharded by features: with
    ``shard='split'`` each rank reads its slice of the columns of the same sources, with
    ``'own'`` its sources hold its own features; every rank returns the same matrix."""
    from l2bg.rsa.distributed import SHARDS

    if shard not in SHARDS:
        raise L2BGError(f"shard {shard!r} is unknown; use one of {', '.join(SHARDS)}")
    if isinstance(sources, str | Path | Source | Mapping) or not sources:
        raise L2BGError("layer_similarity: pass a list of one or more sources")
    check_rdm(rdm, backend)  # before any source is read
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
    labels_of = source_names([p if isinstance(a, Source | str | Path) else None
                              for a, (p, _) in zip(opened, counts, strict=True)])
    labels, rdms, ran = [], [], set()
    for act, names_k in zip(opened, per_source, strict=True):
        got_names, got, r = _layer_rdms(act, None if names_k is None else list(names_k), rows,
                                        slice_width=slice_width, device=device, backend=backend,
                                        progress=progress, rdm=rdm, shard=shard)
        labels.append(got_names)
        rdms.append(got)
        ran |= r
    with one_torch_thread(device):  # both sides ranked side by side (comparisons.side_by_side)
        if len(opened) == 2:
            ta, tb = _stack(rdms[0]), _stack(rdms[1])
            values, row_names, col_names = spec.all_pairs(ta, tb), labels[0], labels[1]
        else:
            tags = list(names or labels_of)
            tags = [t if tags.count(t) == 1 else f"{t}#{k}" for k, t in enumerate(tags)]
            flat = [f"{tags[k]}:{x}" if len(opened) > 1 else x
                    for k, group in enumerate(labels) for x in group]
            values = spec.all_pairs(_stack([t for group in rdms for t in group]))
            row_names = col_names = flat
    used = len(rows) if rows is not None else n
    info = {"sources": [p for p, _ in counts], "names": list(names or labels_of),
            "rdm": f"{rdm} distance",
            "rdm_backend": "+".join(sorted(ran))}
    return LayerMatrix(row_names, col_names, values.to("cpu", torch.float64).numpy(),
                       spec.name, used, info)


def _stack(rdms: list[Tensor]) -> Tensor:
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in rdms) else torch.float32
    if len(rdms) == 1:  # no copy of a lone (possibly n = 10,000: 200 MB) triangle
        return rdms[0].to(dtype).unsqueeze(0)
    return torch.stack([t.to(dtype) for t in rdms])
