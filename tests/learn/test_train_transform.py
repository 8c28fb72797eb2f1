"""``fit(..., transform=)`` applies a task's train_transform to every mini-batch: each epoch sees
new crops, drawn from a generator of their own, so the batch order (and every result of a task
without a transform) is what it was; the same seed gives the same net."""

import torch

from l2bg.data.augment import RandomCropFlip
from l2bg.learn.training import TrainConfig, fit
from l2bg.net.jointnet import JointNet
from l2bg.net.templates import convnet

N, SIDE, CROP = 12, 10, 8


def _net(seed=0):
    torch.manual_seed(seed)
    net = JointNet(convnet(in_channels=3, image_size=CROP, channels=(4,), kernels=(3,),
                           fc=(6,)))
    net.add_task("t", 3)
    return net


def _data():
    g = torch.Generator().manual_seed(5)
    return torch.randn(N, 3, SIDE, SIDE, generator=g), torch.arange(N) % 3


class Recording:
    """A transform that records every (input, output) batch it is given, and its rows."""

    def __init__(self, inner):
        self.inner, self.calls, self.rows = inner, [], []

    def __call__(self, x, gen, index=None):
        out = self.inner(x, gen, index=index)
        self.calls.append((x.clone(), out.clone()))
        self.rows.append(index.clone())
        return out

    def to_dict(self):
        return {"name": "Recording", "inner": self.inner.to_dict()}


def _by_sample(inputs, outputs):
    """Outputs ordered by their input sample (keyed by its first value, distinct here)."""
    return outputs[torch.argsort(inputs[:, 0, 0, 0])]


def test_every_epoch_draws_new_crops_per_batch():
    x, y = _data()
    rec = Recording(RandomCropFlip(CROP))
    fit(_net(), "t", x, y, TrainConfig(epochs=2, batch_size=4, seed=1), transform=rec)
    assert len(rec.calls) == 2 * (N // 4)  # once per mini-batch
    assert all(o.shape == (4, 3, CROP, CROP) for _, o in rec.calls)
    epochs = [(torch.cat([i for i, _ in rec.calls[e * 3:e * 3 + 3]]),
               torch.cat([o for _, o in rec.calls[e * 3:e * 3 + 3]])) for e in range(2)]
    first, second = (_by_sample(*e) for e in epochs)
    differs = [not torch.equal(a, b) for a, b in zip(first, second, strict=True)]
    assert sum(differs) > N // 2  # the same image, another crop or flip in epoch 2


def test_the_batch_order_does_not_depend_on_the_transform():
    """An identity transform (a crop of the whole image, no flip: it still draws offsets) trains
    bit-identically to no transform: the crops' generator is not the permutation's."""
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(N, 3, CROP, CROP, generator=g), torch.arange(N) % 3
    cfg = TrainConfig(epochs=2, batch_size=5, seed=3)
    plain, same = _net(), _net()
    h0 = fit(plain, "t", x, y, cfg)
    h1 = fit(same, "t", x, y, cfg, transform=RandomCropFlip(CROP, flip=False))
    assert h0 == h1
    for a, b in zip(plain.parameters(), same.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_same_seed_draws_the_same_crops():
    x, y = _data()
    runs = []
    for seed in (1, 1, 2):
        net = _net()
        hist = fit(net, "t", x, y, TrainConfig(epochs=2, batch_size=4, seed=seed),
                   transform=RandomCropFlip(CROP))
        runs.append((hist, torch.cat([p.flatten() for p in net.parameters()])))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][1], runs[2][1])


def test_the_transform_is_given_the_rows_of_each_mini_batch():
    """``index`` is the rows of x that the mini-batch holds (x[index] is the batch given), every
    row once per epoch: what a transform that re-reads its samples by row needs."""
    x, y = _data()
    rec = Recording(RandomCropFlip(CROP))
    fit(_net(), "t", x, y, TrainConfig(epochs=2, batch_size=5, seed=2), transform=rec)
    for (given, _), rows in zip(rec.calls, rec.rows, strict=True):
        assert rows.dtype == torch.int64 and torch.equal(given, x[rows])
    per_epoch = [torch.cat(rec.rows[e * 3:e * 3 + 3]) for e in range(2)]
    for rows in per_epoch:
        assert sorted(rows.tolist()) == list(range(N))
    assert not torch.equal(per_epoch[0], per_epoch[1])  # reshuffled each epoch
