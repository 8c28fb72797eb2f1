"""``task_from_dataset(..., train_transform=)``: a per-sample transform drawn on the training
images every time a mini-batch is drawn (every epoch), reproducible from l2bg's seed whatever
the global generators hold; the validation and test splits keep ``transform``. Built with a tiny
fake torchvision-style data set whose every image carries its own index in channel 0."""

import pickle
import random

import numpy as np
import pytest
import torch

from l2bg.base.errors import L2BGError
from l2bg.data import task_fingerprint
from l2bg.data.redraw import ItemRedraw, stable_repr
from l2bg.data.vision import benchmark_from_datasets, task_from_dataset, to_tensor
from l2bg.learn.plugins import Plugin
from l2bg.learn.training import TrainConfig, fit
from l2bg.net.jointnet import JointNet
from l2bg.net.templates import convnet

SIDE, CLASSES, PER_CLASS = 8, 3, 10


class Indexed:
    """A torchvision-style data set of HWC uint8 arrays: image i's channel 0 is i everywhere
    (its index survives flips), channels 1-2 are seeded noise; label i % CLASSES."""

    def __init__(self, n=CLASSES * PER_CLASS, seed=0):
        rng = np.random.default_rng(seed)
        self.images = [np.concatenate([np.full((SIDE, SIDE, 1), i, np.uint8),
                                       rng.integers(0, 255, (SIDE, SIDE, 2), dtype=np.uint8)],
                                      axis=2) for i in range(n)]
        self.targets = [i % CLASSES for i in range(n)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.targets[i]


def jitter(image):
    """A seeded-random per-sample transform drawing from Python's and torch's global
    generators: a horizontal flip (p = 1/2) and noise on channels 1-2."""
    x = to_tensor(image)
    if random.random() < 0.5:
        x = x.flip(-1)
    return torch.cat([x[:1], x[1:] + 0.1 * torch.rand(2, SIDE, SIDE)])


def crop6(image):
    """A transform that changes the sample shape (8×8 to 6×6)."""
    return to_tensor(image)[:, :6, :6]


def _task(train_transform=jitter, seed=4):
    return task_from_dataset("t", Indexed(), Indexed(seed=1), [0, 1, 2],
                             train_transform=train_transform, val_fraction=0.2, seed=seed)


def _items(x):
    """The data-set item of each sample of a batch (channel 0 holds it)."""
    return (x[:, 0, 0, 0] * 255).round().long()


def _net():
    torch.manual_seed(0)
    net = JointNet(convnet(in_channels=3, image_size=SIDE, channels=(4,), kernels=(3,), fc=(6,)))
    net.add_task("t", CLASSES)
    return net


class Inputs(Plugin):
    """Records every mini-batch the net is given, with its epoch."""

    def __init__(self):
        self.batches = []

    def before_training_iteration(self, state):
        self.batches.append((state.epoch, state.x.detach().clone()))


def _train(task, seed, epochs=2, plugins=()):
    net = _net()
    fit(net, "t", task.x_train, task.y_train, TrainConfig(epochs=epochs, batch_size=8, seed=seed),
        transform=task.train_transform, plugins=plugins)
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def test_each_row_is_re_read_from_its_own_item():
    """Row r is re-read from the item behind it (the validation part is split off, so rows are
    not items), with new draws; global generators are left as they were."""
    task = _task()
    assert isinstance(task.train_transform, ItemRedraw)
    rows = torch.tensor([5, 0, 17, 3, 11])
    assert not torch.equal(_items(task.x_train[rows]), rows)  # rows are not items
    state, py_state = torch.get_rng_state(), random.getstate()
    out = task.train_transform(task.x_train[rows], torch.Generator().manual_seed(1), index=rows)
    assert torch.equal(torch.get_rng_state(), state) and random.getstate() == py_state
    assert torch.equal(_items(out), _items(task.x_train[rows]))
    assert torch.equal(out[:, 0], task.x_train[rows, 0])
    assert (out[:, 1:] != task.x_train[rows, 1:]).any(dim=(1, 2, 3)).all()
    again = task.train_transform(task.x_train[rows], torch.Generator().manual_seed(1), index=rows)
    assert torch.equal(out, again)


def test_two_epochs_see_different_train_inputs():
    rec = Inputs()
    _train(_task(), seed=1, plugins=[rec])
    epochs = []
    for e in (0, 1):
        x = torch.cat([b for ep, b in rec.batches if ep == e])
        epochs.append(x[torch.argsort(_items(x))])
    n = _task().x_train.shape[0]
    for x in epochs:
        assert x.shape[0] == n and len(set(_items(x).tolist())) == n
    assert torch.equal(_items(epochs[0]), _items(epochs[1]))
    differs = (epochs[0] != epochs[1]).flatten(1).any(1)
    assert bool(differs.all())  # the noise is drawn afresh for every sample


@pytest.mark.parametrize("global_seed", [0, 123])
def test_the_same_seed_trains_the_same_weights_whatever_the_global_rngs(global_seed):
    task = _task()
    torch.manual_seed(7)
    random.seed(7)
    first = _train(task, seed=1)
    torch.manual_seed(global_seed)
    random.seed(global_seed)
    np.random.seed(global_seed)
    assert torch.equal(_train(task, seed=1), first)
    assert not torch.equal(_train(task, seed=2), first)


def test_val_test_and_first_read_are_untouched_and_none_is_as_before():
    """train_transform changes only what training re-reads: every split tensor equals the task
    built without one, which has no train_transform and keys as a task without one."""
    with_t, plain = _task(), _task(None)
    assert plain.train_transform is None
    for f in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(with_t, f), getattr(plain, f)), f
    assert task_fingerprint(with_t) != task_fingerprint(plain)
    assert torch.equal(_train(plain, seed=1), _train(_task(None), seed=1))
    ds = Indexed()  # the first read is through transform (to_tensor), no draw
    for split in ("x_train", "x_val"):
        x = getattr(with_t, split)
        assert torch.equal(x, torch.stack([to_tensor(ds[int(i)][0]) for i in _items(x)]))


def test_a_train_transform_of_another_shape_is_a_one_line_error():
    with pytest.raises(L2BGError, match="train_transform") as info:
        _task(crop6)
    assert "\n" not in str(info.value) and "(2, 3, 6, 6)" in str(info.value)


def test_fingerprint_is_stable_and_task_pickles():
    """The description has no object ids (a lambda's repr loses its address), so equal tasks
    key alike; a task with a picklable data set and transform round-trips with its re-read."""
    closure = lambda image: jitter(image)  # noqa: E731
    assert "0x" not in stable_repr(closure) and "0x" in repr(closure)
    assert task_fingerprint(_task(closure)) == task_fingerprint(_task(closure))
    assert task_fingerprint(_task()) != task_fingerprint(_task(seed=5))
    task = _task()
    back = pickle.loads(pickle.dumps(task))
    rows = torch.arange(6)
    out = [t.train_transform(t.x_train[rows], torch.Generator().manual_seed(2), index=rows)
           for t in (task, back)]
    assert torch.equal(out[0], out[1]) and task_fingerprint(back) == task_fingerprint(task)


def test_benchmark_records_the_train_transform():
    bench = benchmark_from_datasets("fake", Indexed(), Indexed(seed=1), [[0, 1], [1, 2]],
                                    train_transform=jitter)
    assert bench.source["train_transform"].startswith("<function jitter")
    assert all(isinstance(t.train_transform, ItemRedraw) for t in bench.tasks)
    plain = benchmark_from_datasets("fake", Indexed(), Indexed(seed=1), [[0, 1]])
    assert plain.source["train_transform"] is None and plain.tasks[0].train_transform is None


def test_with_torchvision_random_crop_and_flip():
    """Where torchvision imports, its RandomCrop + RandomHorizontalFlip + ToTensor on PIL
    images are drawn afresh per mini-batch and reproducibly from the seed."""
    tv = pytest.importorskip("torchvision")
    from PIL import Image

    class Pil(Indexed):
        def __getitem__(self, i):
            return Image.fromarray(self.images[i]), self.targets[i]

    t = tv.transforms
    aug = t.Compose([t.RandomCrop(SIDE, padding=2), t.RandomHorizontalFlip(), t.ToTensor()])
    task = task_from_dataset("tv", Pil(), Pil(seed=1), [0, 1, 2], train_transform=aug,
                             val_fraction=0.2, seed=4)
    assert "RandomCrop" in task.train_transform.to_dict()["read"]
    rows = torch.arange(task.x_train.shape[0])
    draws = [task.train_transform(task.x_train, torch.Generator().manual_seed(s), index=rows)
             for s in (1, 1, 2)]
    assert draws[0].shape == task.x_train.shape
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert torch.equal(_train(task, seed=3), _train(task, seed=3))
