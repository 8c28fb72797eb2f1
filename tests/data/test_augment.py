"""Batch transforms drawn per mini-batch: RandomCropFlip's gather equals its per-sample
reference on any batch (degenerate ones included), is deterministic given the generator, draws
independent crops and flips per sample; a Task with a train_transform is checked, fingerprinted
and fitted to a template through it."""

import dataclasses
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from l2bg.base.errors import L2BGError
from l2bg.data import Task, task_fingerprint
from l2bg.data.augment import RandomCropFlip, random_crop_flip_reference
from l2bg.data.fit import FitAfter, fit_benchmark, fit_task


@settings(max_examples=60, deadline=None)
@given(b=st.integers(0, 5), c=st.integers(1, 3), size=st.integers(1, 6),
       extra_h=st.integers(0, 4), extra_w=st.integers(0, 4), flip=st.booleans(),
       seed=st.integers(0, 2**31))
def test_gather_equals_the_per_sample_reference(b, c, size, extra_h, extra_w, flip, seed):
    """B=0 and 1, H or W equal to size (offset 0), flip on and off: the same crops."""
    t = RandomCropFlip(size, flip)
    x = torch.randn(b, c, size + extra_h, size + extra_w, generator=torch.Generator()
                    .manual_seed(seed))
    fast = t(x, torch.Generator().manual_seed(seed))
    ref = random_crop_flip_reference(t, x, torch.Generator().manual_seed(seed))
    assert fast.shape == (b, c, size, size) and fast.dtype == x.dtype
    assert torch.equal(fast, ref)


def test_crops_are_pieces_of_the_image_and_flips_are_mirrors():
    """Every output is a window of its own input, mirrored or not; without flip never mirrored;
    an input of the crop's size comes back whole (offset 0)."""
    x = torch.arange(64 * 3 * 9 * 9, dtype=torch.float32).reshape(64, 3, 9, 9)
    out = RandomCropFlip(5, flip=True)(x, torch.Generator().manual_seed(1))
    windows = x.unfold(2, 5, 1).unfold(3, 5, 1)  # (B, C, 5, 5, 5, 5): every offset
    mirrored = 0
    for i in range(64):
        plain = (windows[i].permute(1, 2, 0, 3, 4) == out[i]).flatten(2).all(2).any()
        flipped = (windows[i].flip(-1).permute(1, 2, 0, 3, 4) == out[i]).flatten(2).all(2).any()
        assert bool(plain or flipped)
        mirrored += int(bool(flipped))
    assert 10 < mirrored < 54  # about half, drawn per sample
    offsets = {int(o[0, 0, 0]) for o in out}
    assert len(offsets) > 8  # offsets drawn per sample, not once per batch
    no_flip = RandomCropFlip(5, flip=False)(x, torch.Generator().manual_seed(1))
    assert all(bool((windows[i].permute(1, 2, 0, 3, 4) == no_flip[i]).flatten(2).all(2).any())
               for i in range(64))
    same = torch.randn(4, 3, 5, 5)
    assert torch.equal(RandomCropFlip(5, flip=False)(same, torch.Generator()), same)


def test_deterministic_given_the_generator_and_fresh_on_each_draw():
    t = RandomCropFlip(4)
    x = torch.randn(16, 3, 8, 8)
    gen = torch.Generator().manual_seed(7)
    first, second = t(x, gen), t(x, gen)
    assert not torch.equal(first, second)  # the generator moved on: new crops
    again = torch.Generator().manual_seed(7)
    assert torch.equal(t(x, again), first) and torch.equal(t(x, again), second)


@pytest.mark.parametrize("x, size, message", [
    (torch.zeros(2, 8, 8), 4, r"takes a \(B, C, H, W\) batch"),
    (torch.zeros(2, 3, 8, 3), 4, "cannot crop 8×3"),
])
def test_bad_batches_are_one_line(x, size, message):
    with pytest.raises(L2BGError, match=message) as info:
        RandomCropFlip(size)(x, torch.Generator())
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_bad_sizes_are_refused(size):
    with pytest.raises(L2BGError, match="size must be an int >= 1"):
        RandomCropFlip(size)


def test_to_dict_and_pickle():
    t = RandomCropFlip(64, flip=False)
    assert t.to_dict()["size"] == 64 and t.to_dict()["flip"] is False
    assert pickle.loads(pickle.dumps(t)) == t
    f = FitAfter(t, (3, 32, 32))
    assert f.to_dict() == {"name": "FitAfter", "transform": t.to_dict(), "shape": [3, 32, 32]}
    assert pickle.loads(pickle.dumps(f)) == f


CROP8 = RandomCropFlip(8)


class _Broken:
    def __call__(self, x, gen, index=None):
        raise RuntimeError("boom")

    def to_dict(self):
        return {"name": "broken"}


class _NoIndex:
    """A transform of the old protocol, (x, gen) without ``index``."""

    def __call__(self, x, gen):
        return x[..., :8, :8]

    def to_dict(self):
        return {"name": "no-index"}


def _task(train_hw=10, transform=CROP8, n=6, **kw):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    return Task("t", torch.randn(n, 3, train_hw, train_hw, generator=g), y,
                torch.randn(n, 3, 8, 8, generator=g), y.clone(),
                torch.randn(n, 3, 8, 8, generator=g), y.clone(), num_classes=2,
                train_transform=transform, **kw)


def test_a_task_with_a_transform_is_checked():
    """The transform's output (not x_train) must match x_val; input_shape is x_val's."""
    task = _task()
    assert task.input_shape == (3, 8, 8) and tuple(task.x_train.shape[1:]) == (3, 10, 10)
    with pytest.raises(L2BGError, match=r"x_val samples have shape \(3, 8, 8\), x_train"):
        _task(transform=None)  # without a transform every split must match, as before
    cases = [(RandomCropFlip(6), r"not float32 \(2, 3, 8, 8\)"),
             (RandomCropFlip(12), "cannot crop 10×10"),
             (lambda x, gen: x[..., :8, :8], "must be a callable"),
             (FitAfter(RandomCropFlip(8), (5,)), "the template takes 5"),
             (_Broken(), r"fails on x_train\[:2\] \(RuntimeError: boom\)"),
             (_NoIndex(), r"TypeError.*take \(x, gen, index=None\)")]
    for bad, message in cases:
        with pytest.raises(L2BGError, match=message) as info:
            _task(transform=bad)
        assert "\n" not in str(info.value)
    one = dataclasses.replace(task, x_train=task.x_train[:1], y_train=task.y_train[:1])
    assert one.sizes["train"] == 1  # a one-sample train split is checked on one sample


def test_the_fingerprint_keys_on_the_transform():
    """A task without a transform keys as before; a transform (and its settings) change it."""
    plain = _task(train_hw=8, transform=None)
    assert task_fingerprint(plain) == task_fingerprint(dataclasses.replace(plain))
    flips = dataclasses.replace(plain, train_transform=RandomCropFlip(8))
    no_flips = dataclasses.replace(plain, train_transform=RandomCropFlip(8, flip=False))
    keys = {task_fingerprint(t) for t in (plain, flips, no_flips)}
    assert len(keys) == 3
    assert task_fingerprint(flips) == task_fingerprint(
        dataclasses.replace(plain, train_transform=RandomCropFlip(8)))


@pytest.mark.parametrize("shape", [(3, 4, 4), (3, 16, 16), (192,)])
def test_fitting_composes_the_transform(shape):
    """val/test are fitted; x_train is kept and its drawn crops are fitted the same way."""
    from l2bg.data import Benchmark
    from l2bg.data.fit import fit_tensor

    task = _task()
    fitted = fit_task(task, shape)
    assert fitted.input_shape == shape and fitted.x_train is task.x_train
    assert torch.equal(fitted.x_val, fit_tensor(task.x_val, shape))
    assert fitted.train_transform == FitAfter(RandomCropFlip(8), shape)
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(fitted.train_transform(task.x_train, gen_a),
                       fit_tensor(RandomCropFlip(8)(task.x_train, gen_b), shape))
    bench = fit_benchmark(Benchmark("b", [task], 0, "convnet", False, {}), shape)
    assert bench.source["input_fit"]["train_transforms"] == {
        "t": FitAfter(RandomCropFlip(8), shape).to_dict()}
    assert fit_task(task, (3, 8, 8)) is task
