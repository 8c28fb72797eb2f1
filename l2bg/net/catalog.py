"""The template catalog: every template by name (:data:`TEMPLATES`, the choices of
``--template``), how one is fitted to a benchmark's data (:func:`template_for`) and rebuilt from a
saved topology (:func:`make_template`). Built-ins: ``mlp`` and ``convnet``
(:mod:`l2bg.net.templates`), ``resnet26`` and ``resnet18`` (:mod:`l2bg.net.resnets`); yours
through :func:`register_template`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from l2bg.base.errors import L2BGError
from l2bg.base.registry import Registry
from l2bg.net.resnets import resnet18, resnet26
from l2bg.net.templates import Template, convnet, image_shape, mlp

__all__ = ["TEMPLATES", "TemplateSpec", "make_template", "register_template", "template_for"]


@dataclass(frozen=True)
class TemplateSpec:
    """A registered template: ``fit(input_shape, num_classes, shared_head)`` makes the template
    for a benchmark's data (one sample's shape as the data give it, the first task's classes,
    the benchmark's head kind); ``make(**kwargs)`` rebuilds a built-in template from the kwargs
    its topology saved (None for user templates, which load with the template passed in);
    ``train``: the training recipe of a user template (a
    :class:`l2bg.learn.training.TrainConfig`; built-ins have theirs in ``default_config``)."""

    name: str
    help: str
    fit: Callable[[tuple[int, ...], int, bool], Template]
    make: Callable[..., Template] | None = None
    train: Any = None


TEMPLATES: Registry[TemplateSpec] = Registry("template", "template")
"""Every template by name: the choices of ``--template`` (built-ins first)."""


def register_template(name: str, fit: Callable[[tuple[int, ...], int, bool], Template], *,
                      help: str = "", train: Any = None, replace: bool = False) -> TemplateSpec:
    """Register your template under ``name`` (then ``--template NAME`` and
    ``Settings(template=NAME)`` use it): ``fit(input_shape, num_classes, shared_head)`` returns
    a :class:`Template` (for example from :func:`l2bg.net.modules.module_template`) whose
    ``input_shape`` the data are brought to (:func:`l2bg.data.fit.fit_benchmark`); ``train`` is
    its :class:`l2bg.learn.training.TrainConfig` (required by ``l2bg run``)."""
    if not callable(fit):
        raise L2BGError(f"template {name!r}: fit must be a function (input_shape, num_classes, "
                        f"shared_head) -> Template, got {type(fit).__name__}")
    return TEMPLATES.register(TemplateSpec(name, help, fit, train=train), replace=replace)


def _fit_mlp(shape: tuple[int, ...], num_classes: int, shared_head: bool) -> Template:
    return mlp(input_dim=math.prod(shape), num_classes=num_classes, shared_head=shared_head)


def _fit_convnet(shape: tuple[int, ...], num_classes: int, shared_head: bool) -> Template:
    c, h, w = image_shape("convnet", shape)
    if h != w:
        raise L2BGError(f"convnet needs square (C, H, W) inputs, got {(c, h, w)}")
    return convnet(in_channels=c, image_size=h)


TEMPLATES.register(TemplateSpec("mlp", "fully connected ReLU layers (the paper's permuted-MNIST "
                                "net); image inputs are flattened", _fit_mlp, mlp))
TEMPLATES.register(TemplateSpec("convnet", "3 conv+pool slots, 2 FC slots, per-task heads "
                                "(Learn-to-Grow's split CIFAR-100 net), at the data's size",
                                _fit_convnet, convnet))


def make_template(name: str, **kwargs: Any) -> Template:
    """Rebuild a built-in template by name from its kwargs (as saved in a JointNet's
    topology)."""
    spec = TEMPLATES.get(name) if name in TEMPLATES else None
    if spec is None or spec.make is None:
        built = [n for n in TEMPLATES.names() if TEMPLATES.get(n).make is not None]
        raise L2BGError(f"unknown template {name!r}; use one of {', '.join(built)}")
    return spec.make(**kwargs)


def template_for(benchmark: Any, name: str | None = None) -> Template:
    """The template a benchmark's tasks run on, sized to its inputs and classes: ``name`` (a
    registered template), else the benchmark's own (``benchmark.template``): the one place the
    choice is made. Bring the data to its ``input_shape`` with
    :func:`l2bg.data.fit.fit_benchmark`."""
    spec = TEMPLATES.get(benchmark.template if name is None else name)
    first = benchmark.tasks[0]
    template = spec.fit(tuple(first.input_shape), int(first.num_classes),
                        bool(benchmark.shared_head))
    if not isinstance(template, Template):
        raise L2BGError(f"template {spec.name!r}: fit returned {type(template).__name__}, not a "
                        "Template; return one (l2bg.net.modules.module_template)")
    return template


def _fitter(make, side: int):
    def fit(shape: tuple[int, ...], num_classes: int, shared_head: bool) -> Template:
        c = image_shape(make.__name__, shape)[0]
        return make(in_channels=c, image_size=side)

    return fit


TEMPLATES.register(TemplateSpec("resnet26", "the residual-adapters ResNet-26, 64x64 inputs, "
                                "per-task heads, one slot per block", _fitter(resnet26, 64),
                                resnet26))
TEMPLATES.register(TemplateSpec("resnet18", "the CIFAR ResNet-18, 32x32 inputs, per-task "
                                "heads, one slot per block", _fitter(resnet18, 32), resnet18))
