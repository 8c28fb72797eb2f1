"""Training augmentation drawn per mini-batch: ``RandomCropFlip``'s one gather against its
per-sample reference (slicing in a Python loop) and against a plain copy of the same bytes (the
floor any crop pays), alternated in one run, best of the rounds; the ratios and the load are
printed. Shape: a vdd mini-batch, 128 stored 3×72×72 images cropped to 64×64."""

from __future__ import annotations

import os
import time

import pytest
import torch
from harness import Timing, record

from l2bg.data.augment import RandomCropFlip, random_crop_flip_reference

SUITE = "augment"
ROUNDS = 15


def _devices() -> list[str]:
    return ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("batch", [32, 128])
def test_random_crop_flip(device: str, batch: int) -> None:
    x = torch.randn(batch, 3, 72, 72, device=device)
    t = RandomCropFlip(64)
    gen = torch.Generator(device="cpu").manual_seed(0)
    out = torch.empty(batch, 3, 64, 64, device=device)
    fns = {"gather": lambda: t(x, gen),
           "reference": lambda: random_crop_flip_reference(t, x, gen),
           "copy": lambda: out.copy_(x[:, :, 4:68, 4:68])}
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(ROUNDS):  # alternated, so every path sees the same load
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    load = os.getloadavg()[0]
    shape = f"{batch}x3x72x72 -> 64"
    best = {k: min(v) for k, v in times.items()}
    for name, ts in times.items():
        record(suite=SUITE, op="random_crop_flip", backend=name, shape=shape, dtype="float32",
               timing=Timing(ts), items=batch, unit="images/s", device=device,
               vs_reference=f"{best['reference'] / best[name]:.2f}x",
               vs_copy=f"{best[name] / best['copy']:.2f}x time", load=f"{load:.1f}")
    print(f"\n{device} {shape}: gather {best['gather'] * 1e3:.3f} ms, reference "
          f"{best['reference'] * 1e3:.3f} ms ({best['reference'] / best['gather']:.2f}x), "
          f"plain copy {best['copy'] * 1e3:.3f} ms (gather {best['gather'] / best['copy']:.2f}x "
          f"of it); load {load:.1f}")
