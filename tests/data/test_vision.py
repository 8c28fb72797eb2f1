"""Tasks and benchmarks from torchvision-style data sets (``ds[i] -> (image, label)``), built
with a tiny fake data set: torchvision is never imported in the default environment."""

import numpy as np
import pytest
import torch

from l2bg.base.errors import L2BGError
from l2bg.data.vision import benchmark_from_datasets, task_from_dataset, to_tensor


class FakeImages:
    """A torchvision-style data set of HWC uint8 arrays; ``targets`` optional."""

    def __init__(self, per_class=6, classes=5, size=8, with_targets=True, seed=0):
        rng = np.random.default_rng(seed)
        self.labels = [c for c in range(classes) for _ in range(per_class)]
        self.images = [np.full((size, size, 3), 20 * c, np.uint8)
                       + rng.integers(0, 5, (size, size, 3), dtype=np.uint8)
                       for c in self.labels]
        if with_targets:
            self.targets = list(self.labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


@pytest.mark.parametrize("with_targets", [True, False])
def test_task_of_a_class_subset(with_targets):
    train, test = FakeImages(with_targets=with_targets), FakeImages(per_class=2, seed=1)
    task = task_from_dataset("fake-0", train, test, [3, 1], seed=5)
    assert task.num_classes == 2 and task.classes == (3, 1)
    assert task.input_shape == (3, 8, 8)
    assert task.sizes["train"] + task.sizes["val"] == 12 and task.sizes["test"] == 4
    # label 0 is original class 3, whose pixels are 60..64 / 255
    assert float(task.x_train[task.y_train == 0].min()) == pytest.approx(60 / 255)
    assert float(task.x_test[task.y_test == 1].max()) <= 24 / 255 + 1e-6
    again = task_from_dataset("fake-0", train, test, [3, 1], seed=5)
    assert again.x_val.equal(task.x_val)


def test_transform_is_applied_and_recorded():
    flip = lambda img: torch.from_numpy(np.ascontiguousarray(img[:, ::-1])).permute(2, 0, 1)  # noqa: E731
    bench = benchmark_from_datasets("fake", FakeImages(), FakeImages(per_class=2),
                                    [[0, 1], [2, 3]], transform=flip)
    assert len(bench.tasks) == 2 and bench.template == "convnet"
    assert "lambda" in bench.source["transform"]
    assert bench.tasks[0].x_train.dtype == torch.float32  # uint8 transform output stays raw
    assert float(bench.tasks[1].x_train.max()) > 1.0


@pytest.mark.parametrize("image, shape", [
    (np.zeros((4, 5), np.uint8), (1, 4, 5)),
    (np.zeros((4, 5, 3), np.uint8), (3, 4, 5)),
    (torch.zeros(3, 2, 2), (3, 2, 2)),
])
def test_to_tensor_shapes(image, shape):
    assert tuple(to_tensor(image).shape) == shape


def test_missing_class_and_bad_items_are_one_line():
    with pytest.raises(L2BGError, match="no items of class"):
        task_from_dataset("t", FakeImages(), FakeImages(), [0, 9])
    bad = FakeImages()
    bad.__class__ = type("Bad", (FakeImages,), {"__getitem__": lambda self, i: 7})
    with pytest.raises(L2BGError, match=r"expected \(image, label\)"):
        task_from_dataset("t", bad, FakeImages(), [0, 1])


def test_with_torchvision_datasets():
    """Where torchvision imports, its FakeData works as a source (skipped elsewhere)."""
    tv = pytest.importorskip("torchvision")
    ds = tv.datasets.FakeData(size=40, image_size=(3, 8, 8), num_classes=2,
                              transform=tv.transforms.PILToTensor())
    task = task_from_dataset("tv", ds, ds, [0, 1])
    assert task.input_shape == (3, 8, 8)


class FakeCIFAR100:
    """What torchvision.datasets.CIFAR100 holds: ``data`` uint8 (N, 32, 32, 3), ``targets``."""

    def __init__(self, data, targets):
        self.data, self.targets = data, targets

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.data[i], self.targets[i]


def _cifar_pickles(root, rng):
    import pickle

    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    sets = {}
    for split, k in (("train", 3), ("test", 1)):
        labels = np.repeat(np.arange(100), k)
        data = rng.integers(0, 256, size=(labels.size, 3072), dtype=np.uint8)
        with open(d / split, "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": labels.tolist()}, f)
        sets[split] = FakeCIFAR100(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1),
                                   labels.tolist())
    return sets


@pytest.mark.parametrize("seed, class_order_seed", [(0, None), (3, 7)])
def test_split_cifar100_from_torchvision_style_sets_equals_the_pickles(tmp_path, seed,
                                                                       class_order_seed):
    from l2bg.data import build_benchmark

    sets = _cifar_pickles(tmp_path, np.random.default_rng(seed))
    a = build_benchmark("split-cifar100", num_tasks=5, seed=seed, data_root=tmp_path,
                        class_order_seed=class_order_seed)
    b = build_benchmark("split-cifar100", num_tasks=5, seed=seed, class_order_seed=class_order_seed,
                        datasets=(sets["train"], sets["test"]))
    assert b.source["kind"] == "torchvision-cifar100"
    for ta, tb in zip(a.tasks, b.tasks, strict=True):
        for f in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
            assert getattr(ta, f).equal(getattr(tb, f)), f


def test_datasets_apply_to_split_cifar100_only():
    from l2bg.base.errors import ParamError
    from l2bg.data import build_benchmark

    with pytest.raises(ParamError, match="applies to split-cifar100, not pmnist"):
        build_benchmark("pmnist", datasets=(FakeImages(), FakeImages()))
    with pytest.raises(L2BGError, match=r"\(32, 32, 3\)"):
        build_benchmark("split-cifar100", datasets=(FakeImages(), FakeImages()))
