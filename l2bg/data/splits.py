"""Seeded, stratified splits: every split of l2bg is drawn from a seed by ``torch.Generator``, so
the same (benchmark, seed, data) always gives bit-identical tensors."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import Tensor

__all__ = ["allocate", "derive_seed", "seeded_generator", "stratified_split"]




def derive_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for one purpose, so split and permutation streams are independent."""
    digest = hashlib.sha256(f"l2bg:{int(seed)}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seeded_generator(seed: int, purpose: str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, purpose))


def allocate(counts: np.ndarray, fractions: tuple[float, ...]) -> np.ndarray:
    """Per-class sizes of each held-out split: shape ``(len(fractions), C)``.

    Totals equal ``round(f * N)`` (largest remainder, ties to the lower class id), except that
    every class with more samples than there are splits gets at least one sample in each held-out
    split and keeps at least one for training (so no task of a tiny data set has an empty split).
    """
    counts = np.asarray(counts, dtype=np.int64)
    num = int(counts.sum())
    out = np.zeros((len(fractions), len(counts)), dtype=np.int64)
    for k, frac in enumerate(fractions):
        quota = frac * counts
        base = np.floor(quota).astype(np.int64)
        room = counts - out[:k].sum(axis=0) - 1  # keep >= 1 sample for training
        base = np.minimum(base, np.maximum(room, 0))
        bumped = (base == 0) & (counts > len(fractions)) & (room >= 1)
        base[bumped] = 1
        need = int(round(frac * num)) - int(base.sum())
        if need > 0:
            remainder = quota - np.floor(quota)
            eligible = ~bumped & (base < room)
            order = np.lexsort((np.arange(len(counts)), -remainder))
            order = order[eligible[order]][:need]
            base[order] += 1
        out[k] = base
    return out


def stratified_split(
    y: Tensor, fractions: tuple[float, ...], gen: torch.Generator
) -> list[Tensor]:
    """Index tensors ``[rest, held_out_1, ...]``: a seeded stratified split of ``y``.

    Within each class the samples are taken in a random order; every returned index tensor is in
    a random (class-mixed) order too.
    """
    n = y.numel()
    num_classes = int(y.max()) + 1 if n else 0
    counts = torch.bincount(y, minlength=num_classes).numpy()
    alloc = torch.from_numpy(allocate(counts, fractions))  # (K, C)
    perm = torch.randperm(n, generator=gen)
    order = perm[torch.sort(y[perm], stable=True).indices]  # grouped by class, random within
    ys = y[order]
    starts = torch.cumsum(torch.from_numpy(counts), 0) - torch.from_numpy(counts)
    rank = torch.arange(n) - starts[ys]
    split_id = torch.zeros(n, dtype=torch.int64)  # 0 = rest (train)
    bound = torch.zeros(n, dtype=torch.int64)
    for k in range(len(fractions)):
        lo = bound.clone()
        bound = bound + alloc[k][ys]
        split_id[(rank >= lo) & (rank < bound)] = k + 1
    split_of = torch.empty(n, dtype=torch.int64)
    split_of[order] = split_id
    return [perm[split_of[perm] == k] for k in range(len(fractions) + 1)]
