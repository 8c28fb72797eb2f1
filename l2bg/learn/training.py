"""Fit a task-net inside a JointNet and measure accuracy, with whole tensors on the device."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from l2bg.base import crashpoints as faults
from l2bg.base.errors import L2BGError, ParamError
from l2bg.data.augment import BatchTransform
from l2bg.data.splits import seeded_generator
from l2bg.learn.plugins import FitState, training_hooks
from l2bg.net.jointnet import JointNet

if TYPE_CHECKING:  # pragma: no cover
    from l2bg.learn.plugins import Plugin


@dataclass(frozen=True)
class TrainConfig:
    """Every setting that shapes a trained task-net; recorded in results.json and cache keys."""

    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 10
    batch_size: int = 128
    shared_lr_scale: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "sgd"):
            raise L2BGError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0 or math.isinf(self.lr):
            raise ParamError(f"{{epochs}}, {{batch_size}} and {{lr}} must be positive and finite, "
                             f"got {self.epochs}, {self.batch_size}, {self.lr}", "epochs",
                             "batch_size", "lr")
        for name in ("shared_lr_scale", "momentum", "weight_decay"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ParamError(f"{{{name}}} must be finite and >= 0, got {v}", name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


DEFAULTS = {
    "mlp": TrainConfig(optimizer="adam", lr=1e-3, epochs=10, batch_size=128),
    "convnet": TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9, epochs=20, batch_size=64),
    # residual nets (docs/design.md §2.10): SGD with momentum and weight decay as in the
    # residual-adapters code, at a constant rate (no schedule here) and fewer epochs
    "resnet26": TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4,
                            epochs=30, batch_size=128),
    "resnet18": TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4,
                            epochs=30, batch_size=128),
}


def default_config(template: str, **overrides: Any) -> TrainConfig:
    """The default training recipe of a template (paper/Learn-to-Grow settings; a registered
    user template's ``train``), with overrides."""
    if template not in DEFAULTS:
        from l2bg.net.catalog import TEMPLATES

        spec = TEMPLATES.get(template) if template in TEMPLATES else None
        if spec is None or not isinstance(spec.train, TrainConfig):
            raise L2BGError(f"no training defaults for template {template!r}; built-ins: "
                            f"{list(DEFAULTS)}; register yours with train=TrainConfig(...)")
        return spec.train.replace(**overrides)
    return DEFAULTS[template].replace(**overrides)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParamError("{device} cuda asked for, but torch sees no CUDA device; use {device} "
                         "cpu", "device")
    return dev


def make_optimizer(groups: list[dict[str, Any]], config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser of ``config`` over parameter groups (:meth:`JointNet.param_groups`): the
    one that :func:`fit` trains a task-net with."""
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def fit(net: JointNet, task: str, x: Tensor, y: Tensor, config: TrainConfig,
        progress: Any = None, *, transform: BatchTransform | None = None,
        plugins: Sequence[Plugin] = (),
        phase: Literal["independent", "jointnet"] = "jointnet") -> list[float]:
    """Train ``task``'s task-net on (x, y) for ``config.epochs`` epochs; returns the mean loss of
    each epoch. Only the task's own nodes (at lr) and, unless the scale is 0, the nodes it is bound
    to (at lr · shared_lr_scale) change; the last epoch's weights are kept. ``transform`` (a
    task's ``train_transform``) maps every mini-batch ``x[idx]`` afresh (it is given the rows,
    ``index=idx``), drawing from its own generator seeded from ``config.seed``, so the batch order
    is the same with or without it.
    ``plugins``' training extension points (:mod:`l2bg.learn.plugins`) see every epoch and
    iteration (the mini-batch after ``transform``), as ``phase``."""
    groups = net.param_groups(task, config.lr, config.shared_lr_scale)
    if not groups:
        raise ParamError(f"nothing to train for task {task!r}: every layer is bound and "
                         "{shared_lr_scale} is 0; grow a slot or use a positive "
                         "{shared_lr_scale}", "shared_lr_scale")
    trainable = {id(p) for g in groups for p in g["params"]}
    frozen = [p for p in net.task_parameters(task) if id(p) not in trainable]
    opt = make_optimizer(groups, config)
    device = groups[0]["params"][0].device
    x, y = x.to(device), y.to(device)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    aug_gen = None if transform is None else seeded_generator(config.seed, "train-transform")
    loss_fn = nn.CrossEntropyLoss()
    n = x.shape[0]
    history: list[float] = []
    fire = training_hooks(plugins, FitState(task, phase, net, opt, config.epochs,
                                            config.batch_size, n, history=history))
    was_training = net.training
    for p in frozen:
        p.requires_grad_(False)
    try:
        net.train()
        for epoch in range(config.epochs):
            fire("before_training_epoch", epoch=epoch)
            order = torch.randperm(n, generator=gen).to(device)
            total = torch.zeros((), device=device)
            for it, start in enumerate(range(0, n, config.batch_size)):
                idx = order[start:start + config.batch_size]
                xb = x[idx] if transform is None else transform(x[idx], aug_gen, index=idx)
                yb = y[idx]
                fire("before_training_iteration", iteration=it, x=xb, y=yb)
                logits = net(xb, task)
                loss = loss_fn(logits, yb)
                fire("after_forward", logits=logits, loss=loss)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                fire("after_backward")
                opt.step()
                fire("after_update")
                faults.point("train")
                total += loss.detach() * idx.numel()
            history.append(float(total) / n)
            fire("after_training_epoch")
            if progress is not None:
                progress.update(1)
                progress.set_postfix(task=task, loss=f"{history[-1]:.3f}")
    finally:
        for p in frozen:
            p.requires_grad_(True)
        net.train(was_training)
    return history


@torch.no_grad()
def evaluate_all(net: JointNet, split: dict[str, tuple[Tensor, Tensor]],
                 batch_size: int = 4096) -> dict[str, float]:
    """Accuracy of every task on its own inputs, each node run once on the rows of all the tasks
    routed through it (per-task-input :meth:`JointNet.forward_all`)."""
    was = net.training
    net.eval()
    device = next(net.parameters()).device
    correct = dict.fromkeys(split, 0)
    try:
        n_max = max(x.shape[0] for x, _ in split.values())
        for i in range(0, n_max, batch_size):
            chunk = {t: (x[i:i + batch_size], y[i:i + batch_size])
                     for t, (x, y) in split.items() if i < x.shape[0]}
            logits = net.forward_all({t: x.to(device) for t, (x, _) in chunk.items()})
            for t, (_, y) in chunk.items():
                correct[t] += int((logits[t].argmax(1) == y.to(device)).sum())
    finally:
        net.train(was)
    return {t: correct[t] / split[t][0].shape[0] for t in split}


def accuracy(net: JointNet, task: str, x: Tensor, y: Tensor, batch_size: int = 4096) -> float:
    """Fraction of rows of x that ``task``'s task-net classifies as y (same path as
    :func:`evaluate_all`, so a task-net copied into a JointNet scores exactly the same)."""
    if x.shape[0] == 0:
        raise L2BGError(f"cannot measure accuracy of task {task!r} on an empty split")
    return evaluate_all(net, {task: (x, y)}, batch_size)[task]
