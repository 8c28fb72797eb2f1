"""Task-net templates: the fixed, ordered list of layer slots that every task-net of a JointNet
shares (the paper's bijective layer mapping), plus how heads are made.

A slot is a short chain of primitive layers (linear, conv2d, relu, max_pool2d, flatten,
batch_norm, dropout, basic_block, global_avg_pool: :mod:`l2bg.net.blocks`). Templates are plain
data so a JointNet's topology can be saved as JSON and the C++ executor can run the same chain. A
user template (:func:`l2bg.net.modules.module_template`) holds a prototype module per slot
instead. Templates are registered by name in :data:`l2bg.net.catalog.TEMPLATES` (``--template``):
``mlp`` and ``convnet`` here, ``resnet26`` and ``resnet18`` in :mod:`l2bg.net.resnets`, yours
through :func:`l2bg.net.catalog.register_template`.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from l2bg.base.errors import L2BGError, ParamError
from l2bg.net.blocks import BasicBlock, GlobalAvgPool2d

LAYER_KINDS = ("linear", "conv2d", "relu", "max_pool2d", "flatten", "batch_norm", "dropout",
               "basic_block", "global_avg_pool")


@dataclass(frozen=True)
class Layer:
    """One primitive layer: its kind and the constructor arguments."""

    kind: str
    args: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        a = self.args
        if self.kind == "linear":
            return nn.Linear(a["in_features"], a["out_features"])
        if self.kind == "conv2d":
            return nn.Conv2d(a["in_channels"], a["out_channels"], a["kernel_size"],
                             stride=a.get("stride", 1), padding=a.get("padding", 0),
                             bias=a.get("bias", True))
        if self.kind == "relu":
            return nn.ReLU()
        if self.kind == "max_pool2d":
            return nn.MaxPool2d(a["kernel_size"], stride=a.get("stride"))
        if self.kind == "flatten":
            return nn.Flatten(1)
        if self.kind == "batch_norm":
            return (nn.BatchNorm2d if a.get("dims", 1) == 2 else nn.BatchNorm1d)(a["num_features"])
        if self.kind == "dropout":
            return nn.Dropout(a.get("p", 0.5))
        if self.kind == "basic_block":
            return BasicBlock(a["in_channels"], a["out_channels"], a.get("stride", 1))
        if self.kind == "global_avg_pool":
            return GlobalAvgPool2d()
        raise L2BGError(f"unknown layer kind {self.kind!r}; use one of {', '.join(LAYER_KINDS)}")


@dataclass(frozen=True)
class SlotSpec:
    """A slot of the template: a named chain of layers, expandable (may be grown) or not; or,
    in a user template, a prototype ``module`` (then ``layers`` is empty)."""

    name: str
    layers: tuple[Layer, ...]
    expandable: bool = True
    module: nn.Module | None = None

    def build(self) -> nn.Module:
        """A fresh node: the chain's layers, or a deep copy of the prototype module with every
        submodule that has ``reset_parameters`` re-initialised (from torch's global RNG)."""
        if self.module is None:
            return nn.Sequential(*(layer.build() for layer in self.layers))
        return fresh_copy(self.module)


def fresh_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` re-initialised where its submodules know how
    (``reset_parameters``: linear, conv, batch norm weights and running statistics)."""
    out = copy.deepcopy(module)
    for m in out.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
    return out


@dataclass(frozen=True)
class Template:
    """A task-net template: slots in order, and either a shared head slot (the last slot, as in
    the paper's permuted-MNIST net) or per-task heads fed by ``head_in`` features."""

    name: str
    kwargs: dict[str, Any]
    slots: tuple[SlotSpec, ...]
    per_task_heads: bool
    head_in: int | None = None
    input_shape: tuple[int, ...] | None = None
    """Shape of one input sample (None: not known; inputs are then not checked). Defaults to
    the first layer's input features when that layer is linear."""
    head_factory: Callable[[int], nn.Module] | None = None
    """User templates with per-task heads: ``head_factory(num_classes)`` makes a task's head."""
    modules: dict[str, Any] | None = None
    """User templates: what the saved topology records of the modules (slot names, expandable
    slots, head kind and a signature of the module types and tensor shapes) so that loading
    with another template is an error, never a silent mismatch."""

    @property
    def is_user(self) -> bool:
        """Made from user modules (saved files load only with the template passed in)."""
        return self.modules is not None

    def __post_init__(self) -> None:
        if self.input_shape is None and self.slots and self.slots[0].layers:
            first = self.slots[0].layers[0]
            if first.kind == "linear":
                object.__setattr__(self, "input_shape", (int(first.args["in_features"]),))

    @property
    def slot_names(self) -> list[str]:
        return [s.name for s in self.slots]

    @property
    def expandable_slots(self) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s.expandable]

    def slot_index(self, slot: int | str) -> int:
        """Resolve a slot given by index or name, with a clear error for anything else."""
        if isinstance(slot, str):
            if slot in self.slot_names:
                return self.slot_names.index(slot)
            if slot.lstrip("-").isdigit():
                slot = int(slot)
            else:
                raise L2BGError(f"unknown slot {slot!r}; slots of {self.name}: {self.slot_names}")
        if not isinstance(slot, int) or not 0 <= slot < len(self.slots):
            raise L2BGError(
                f"slot {slot!r} out of range; {self.name} has slots 0..{len(self.slots) - 1} "
                f"({', '.join(self.slot_names)})"
            )
        return slot

    def build_head(self, num_classes: int) -> nn.Module:
        if not self.per_task_heads:
            raise L2BGError(f"template {self.name} has a shared head slot, not per-task heads")
        from l2bg.base.bounds import MAX_PARAMETERS, check_size

        num_classes = _size(self.name, "num_classes", num_classes)
        if self.head_factory is not None:
            head = self.head_factory(num_classes)
            if not isinstance(head, nn.Module):
                raise L2BGError(f"{self.name}: the head factory returned "
                                f"{type(head).__name__}, not an nn.Module; return the head")
            check_size(f"{self.name}: a head of {num_classes} classes has parameters, which",
                       sum(p.numel() for p in head.parameters()), MAX_PARAMETERS,
                       fix="use fewer classes")
            return head
        check_size(f"{self.name}: a head of {num_classes} classes has parameters, which",
                   (self.head_in + 1) * num_classes, MAX_PARAMETERS, fix="use fewer classes")
        return nn.Linear(self.head_in, num_classes)

    def to_dict(self) -> dict[str, Any]:
        if self.modules is not None:
            return {"name": self.name, "kwargs": self.kwargs, "modules": self.modules}
        return {"name": self.name, "kwargs": self.kwargs}


def _linear_slot(name: str, n_in: int, n_out: int, relu: bool = True, dropout: float = 0.0,
                 flatten: bool = False) -> SlotSpec:
    layers = [Layer("flatten")] if flatten else []
    layers.append(Layer("linear", {"in_features": n_in, "out_features": n_out}))
    if relu:
        layers.append(Layer("relu"))
    if dropout > 0:
        layers.append(Layer("dropout", {"p": dropout}))
    return SlotSpec(name, tuple(layers))


def _size(template: str, name: str, value: Any) -> int:
    """A topology parameter that counts something (units, channels, classes, a kernel's side):
    an integer >= 1, else one line naming the parameter."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value != int(value) or value < 1):
        raise L2BGError(f"{template}: {name} must be an integer >= 1, got {value!r}")
    return int(value)


def _sizes(template: str, name: str, values: Any) -> list[int]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence | Iterable):
        raise L2BGError(f"{template}: {name} must be a list of integers >= 1, got {values!r}")
    return [_size(template, f"{name}[{i}]", v) for i, v in enumerate(list(values))]


def _check_parameters(template: Template) -> Template:
    """The template's parameter count (its slots; heads: ``build_head``), bounded before any
    layer is allocated: ``l2bg.base.bounds.MAX_PARAMETERS``."""
    from l2bg.base.bounds import MAX_PARAMETERS, check_size

    count = 0
    for slot in template.slots:
        if slot.module is not None:
            count += sum(p.numel() for p in slot.module.parameters())
        for layer in slot.layers:
            a = layer.args
            if layer.kind == "linear":
                count += (a["in_features"] + 1) * a["out_features"]
            elif layer.kind == "conv2d":
                count += (a["in_channels"] * a["kernel_size"] ** 2 + 1) * a["out_channels"]
            elif layer.kind == "basic_block":
                count += (9 * (a["in_channels"] + a["out_channels"]) + 4) * a["out_channels"]
    check_size(f"{template.name}: the slots of {template.kwargs} have parameters, which",
               count, MAX_PARAMETERS, fix="choose smaller sizes")
    return template


def mlp(input_dim: int = 784, hidden: Sequence[int] = (300, 300, 300), num_classes: int = 10,
        shared_head: bool = True) -> Template:
    """The paper's permuted-MNIST net: fully connected ReLU layers, then either one shared softmax
    layer that is itself an expandable slot (``shared_head``) or per-task heads."""
    hidden = _sizes("mlp", "hidden", hidden)
    input_dim, num_classes = _size("mlp", "input_dim", input_dim), _size("mlp", "num_classes",
                                                                         num_classes)
    if not hidden:
        raise L2BGError("mlp: hidden must name at least one layer size, got []")
    dims = [int(input_dim), *hidden]
    slots = [_linear_slot(f"fc{i + 1}", dims[i], dims[i + 1]) for i in range(len(hidden))]
    if shared_head:
        slots.append(_linear_slot("head", dims[-1], int(num_classes), relu=False))
    kwargs = {"input_dim": int(input_dim), "hidden": hidden, "num_classes": int(num_classes),
              "shared_head": bool(shared_head)}
    return _check_parameters(Template("mlp", kwargs, tuple(slots), per_task_heads=not shared_head,
                                      head_in=None if shared_head else dims[-1],
                                      input_shape=(int(input_dim),)))


def convnet(in_channels: int = 3, image_size: int = 32, channels: Sequence[int] = (64, 128, 256),
            kernels: Sequence[int] = (4, 3, 2), fc: Sequence[int] = (2048, 2048),
            dropout: float = 0.0) -> Template:
    """The Learn-to-Grow / HAT AlexNet-like net for split CIFAR-100: three conv+ReLU+maxpool(2)
    slots, two FC+ReLU slots, per-task heads."""
    channels, kernels = _sizes("convnet", "channels", channels), _sizes("convnet", "kernels",
                                                                        kernels)
    fc = _sizes("convnet", "fc", fc)
    in_channels = _size("convnet", "in_channels", in_channels)
    image_size = _size("convnet", "image_size", image_size)
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
        raise L2BGError(f"convnet: dropout must be a probability in [0, 1), got {dropout!r}")
    if len(channels) != len(kernels):
        raise L2BGError(f"convnet needs one kernel size per conv layer, got {channels}, {kernels}")
    slots, size, c_in = [], int(image_size), int(in_channels)
    for i, (c_out, k) in enumerate(zip(channels, kernels, strict=True)):
        size = (size - k + 1) // 2
        if size < 1:
            raise L2BGError(f"convnet: image_size {image_size} too small for kernels {kernels}")
        layers = (Layer("conv2d", {"in_channels": c_in, "out_channels": c_out, "kernel_size": k}),
                  Layer("relu"), Layer("max_pool2d", {"kernel_size": 2}))
        slots.append(SlotSpec(f"conv{i + 1}", layers))
        c_in = c_out
    n_in = c_in * size * size
    for i, n_out in enumerate(fc):
        slots.append(_linear_slot(f"fc{i + 1}", n_in, n_out, dropout=dropout, flatten=i == 0))
        n_in = n_out
    kwargs = {"in_channels": int(in_channels), "image_size": int(image_size), "channels": channels,
              "kernels": kernels, "fc": fc, "dropout": float(dropout)}
    return _check_parameters(Template("convnet", kwargs, tuple(slots), per_task_heads=True,
                                      head_in=n_in, input_shape=(int(in_channels),
                                                                 int(image_size),
                                                                 int(image_size))))


def image_shape(template: str, shape: Sequence[int]) -> tuple[int, int, int]:
    """One sample's shape as an image (C, H, W): a flat sample of s² values is a one-channel
    s×s image (MNIST, the embedded 8×8 digits); other shapes are an error naming ``template``."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    if len(shape) == 1 and math.isqrt(shape[0]) ** 2 == shape[0]:
        side = math.isqrt(shape[0])
        return (1, side, side)
    raise ParamError(f"template {template} needs image inputs (C, H, W), or flat square images, "
                     f"got samples of shape {shape}; choose {{template}} mlp", "template")
