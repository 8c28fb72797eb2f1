"""Converters between l2bg benchmarks and Avalanche benchmarks: l2bg → Avalanche → l2bg gives
the same tensors bit for bit; Avalanche streams with global class ids come back with ids from
zero per task (the originals kept); streams l2bg cannot learn get one-line errors."""

from __future__ import annotations

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("avalanche")

import avalanche_streams as streams  # noqa: E402
import torch  # noqa: E402
from avalanche.benchmarks.scenarios.deprecated.generators import tensors_benchmark  # noqa: E402

from l2bg.avalanche import from_avalanche, make_task, to_avalanche  # noqa: E402
from l2bg.base.errors import L2BGError  # noqa: E402
from l2bg.data import Benchmark  # noqa: E402

SPLITS = ("train", "val", "test")


@pytest.mark.parametrize("num", [1, 3])
def test_round_trip_is_bit_identical(num):
    tasks = streams.tasks(num)
    bm = to_avalanche(Benchmark("blobs", tasks, 0, "mlp", False, {}))
    assert [e.task_label for e in bm.train_stream] == list(range(num))
    assert [sorted(e.classes_in_this_experience) for e in bm.train_stream] == [[0, 1, 2]] * num
    back = from_avalanche(bm, name="blobs")
    assert back.template == "mlp" and not back.shared_head
    assert back.source["valid"] == "valid_stream"
    for a, b in zip(tasks, back.tasks, strict=True):
        assert b.classes == (0, 1, 2) and b.num_classes == 3
        for s in SPLITS:
            assert torch.equal(getattr(a, f"x_{s}"), getattr(b, f"x_{s}"))
            assert torch.equal(getattr(a, f"y_{s}"), getattr(b, f"y_{s}"))


def shifted(shifts, valid: bool = False):
    tasks = streams.tasks(len(shifts))
    other = ({"valid": [(t.x_val, t.y_val + s) for t, s in zip(tasks, shifts, strict=True)]}
             if valid else None)
    return tasks, tensors_benchmark(
        train_tensors=[(t.x_train, t.y_train + s) for t, s in zip(tasks, shifts, strict=True)],
        test_tensors=[(t.x_test, t.y_test + s) for t, s in zip(tasks, shifts, strict=True)],
        other_streams_tensors=other, task_labels=list(range(len(shifts))))


def test_global_class_ids_come_back_from_zero():
    tasks, bm = shifted([0, 3, 6], valid=True)
    back = from_avalanche(bm)
    assert [t.classes for t in back.tasks] == [(0, 1, 2), (3, 4, 5), (6, 7, 8)]
    for a, b in zip(tasks, back.tasks, strict=True):
        assert torch.equal(a.y_train, b.y_train) and torch.equal(a.y_test, b.y_test)


@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_without_a_valid_stream_a_seeded_stratified_part_validates(fraction):
    tasks, bm = shifted([0, 0])
    a = from_avalanche(bm, valid_fraction=fraction, seed=3)
    b = from_avalanche(bm, valid_fraction=fraction, seed=3)
    for t, u, orig in zip(a.tasks, b.tasks, tasks, strict=True):
        n = orig.y_train.numel()
        assert t.y_val.numel() == round(fraction * n)
        assert t.y_train.numel() + t.y_val.numel() == n
        assert torch.equal(torch.bincount(t.y_val), torch.full((3,), t.y_val.numel() // 3))
        assert torch.equal(t.x_val, u.x_val)  # seeded
    assert a.source["valid"].startswith("seeded")


def test_make_task_relabels_any_ids():
    x = torch.randn(12, 4)
    y = torch.tensor([7, 9, 2] * 4)
    task = make_task("t", (x, y), (x[:3], y[:3]), None)
    assert task.classes == (2, 7, 9)
    assert task.y_train.tolist() == [1, 2, 0] * 4
    assert torch.equal(task.x_test, task.x_val)


@pytest.mark.parametrize("valid_y, match", [
    (torch.tensor([7, 9, 5]), "lacks"),
    (torch.tensor([-1, 7, 9]), "lacks"),
])
def test_make_task_refuses_classes_training_lacks(valid_y, match):
    x = torch.randn(12, 4)
    y = torch.tensor([7, 9, 2] * 4)
    with pytest.raises(L2BGError, match=match):
        make_task("t", (x, y), (x[:3], valid_y), None)


def test_one_task_label_per_experience():
    tasks = streams.tasks(2)
    bm = tensors_benchmark(train_tensors=[(t.x_train, t.y_train) for t in tasks],
                           test_tensors=[(t.x_test, t.y_test) for t in tasks],
                           task_labels=[0, 0])
    with pytest.raises(L2BGError, match="two experiences of task label 0"):
        from_avalanche(bm)


def test_every_task_needs_a_test_experience():
    tasks = streams.tasks(2)
    bm = tensors_benchmark(train_tensors=[(t.x_train, t.y_train) for t in tasks],
                           test_tensors=[(tasks[0].x_test, tasks[0].y_test)],
                           task_labels=[0, 1], complete_test_set_only=True)
    with pytest.raises(L2BGError, match="task label 1"):
        from_avalanche(bm)
