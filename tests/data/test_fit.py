"""Inputs brought to a template's shape (l2bg.data.fit): flat images become one-channel images,
one channel is replicated, small differences are zero-padded (centred), larger ones resized;
the same tensors when the shape already fits; one-line errors naming the template."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from l2bg.base.errors import ParamError
from l2bg.data import build_benchmark
from l2bg.data.fit import fit_benchmark, fit_tensor


@settings(max_examples=40, deadline=None, derandomize=True)
@given(side=st.integers(2, 12), grow=st.integers(0, 20), channels=st.sampled_from([1, 3]),
       flat=st.booleans(), n=st.integers(0, 3))
def test_images_are_padded_or_resized(side, grow, channels, flat, n):
    """A (flat) s×s image reaches (C, s + g, s + g): centred zero padding keeps every pixel when
    g <= (s + g) // 4, else bilinear resizing; every channel is the one image."""
    x = torch.rand(n, side * side) if flat else torch.rand(n, 1, side, side)
    target = side + grow
    y = fit_tensor(x, (channels, target, target))
    assert y.shape == (n, channels, target, target)
    img = x.reshape(n, 1, side, side)
    for c in range(channels):
        assert torch.equal(y[:, c], y[:, 0])
    if grow <= target // 4:
        top = grow // 2
        assert torch.equal(y[:, :1, top:top + side, top:top + side], img)
        assert float(y.abs().sum()) == pytest.approx(float(img.sum()) * channels, rel=1e-5)
    elif n:
        assert not torch.equal(y[:, :1, :side, :side], img)  # resized, not padded
        assert float(y.min()) >= float(img.min()) - 1e-6  # bilinear stays in range
        assert float(y.max()) <= float(img.max()) + 1e-6


def test_same_shape_passes_through_and_flat_templates_flatten():
    x = torch.rand(4, 3, 8, 8)
    assert fit_tensor(x, (3, 8, 8)) is x
    assert torch.equal(fit_tensor(x, (192,)), x.reshape(4, 192))
    shrunk = fit_tensor(x, (3, 4, 4))  # larger images are resized down (antialiased)
    assert shrunk.shape == (4, 3, 4, 4)
    assert torch.allclose(shrunk.mean(), x.mean(), atol=0.05)


@pytest.mark.parametrize("shape, have, match", [
    ((100,), (4, 3, 8, 8), "192 values per sample"),
    ((3, 8, 8), (4, 10), "flat square"),
    ((3, 8, 8), (4, 2, 8, 8), "2 channels"),
])
def test_misfits_are_one_line_naming_the_template(shape, have, match):
    with pytest.raises(ParamError, match=match) as info:
        fit_tensor(torch.zeros(have), shape)
    assert info.value.param == "template" and "\n" not in str(info.value)


def test_benchmark_is_fitted_and_says_how():
    """Every task and split reaches the shape; the labels are the same tensors; the source
    record says what was done; an already-fitting shape gives the same benchmark back."""
    bench = build_benchmark("split-mnist", num_tasks=2)
    assert fit_benchmark(bench, bench.tasks[0].input_shape) is bench
    fitted = fit_benchmark(bench, (3, 32, 32))
    for old, new in zip(bench.tasks, fitted.tasks, strict=True):
        assert new.x_train.shape[1:] == (3, 32, 32) and new.x_test.shape[1:] == (3, 32, 32)
        assert new.y_train is old.y_train and new.name == old.name
    assert fitted.source["input_fit"]["to"] == [3, 32, 32]
    assert "input_fit" not in bench.source
