"""Residual templates: ``resnet26`` (the residual-adapters Visual Decathlon net) and
``resnet18`` (the CIFAR ResNet-18), both with per-task heads, made of the block kinds of
:mod:`l2bg.net.blocks` so both executors run them natively.

Slots (one per residual block; see docs/design.md §2.10):

* ``stem``: conv3×3 (no bias) + batch norm (+ relu in resnet18), expandable;
* ``s{i}b{j}``: stage i, block j, one :class:`l2bg.net.blocks.BasicBlock` each, expandable; the
  first block of a stage strides 2 (resnet26: every stage; resnet18: stages 2-4) and widens with
  the parameter-free residual-adapters shortcut;
* ``pool``: resnet26: batch norm + relu + global average pooling (the residual-adapters net's
  ``end_bns`` and average pool), expandable; resnet18: global average pooling alone, which has
  no parameters and is not expandable.

The heads (one linear layer per task) read the pooled features.
"""

from __future__ import annotations

from collections.abc import Sequence

from l2bg.base.errors import L2BGError
from l2bg.net.templates import (
    Layer,
    SlotSpec,
    Template,
    _check_parameters,
    _size,
    _sizes,
)

__all__ = ["resnet18", "resnet26"]


def _stages(widths: list[int], blocks: list[int], strides: list[int], c_in: int
            ) -> list[SlotSpec]:
    slots = []
    for i, (width, n, stride) in enumerate(zip(widths, blocks, strides, strict=True)):
        for j in range(n):
            args = {"in_channels": c_in, "out_channels": width, "stride": stride if j == 0 else 1}
            if width < c_in:
                raise L2BGError(f"stage {i + 1} narrows {c_in} -> {width} channels; the "
                                "padding shortcut needs widths that never fall")
            slots.append(SlotSpec(f"s{i + 1}b{j + 1}", (Layer("basic_block", args),)))
            c_in = width
    return slots


def _stem(c_in: int, width: int, relu: bool) -> SlotSpec:
    layers = [Layer("conv2d", {"in_channels": c_in, "out_channels": width, "kernel_size": 3,
                               "padding": 1, "bias": False}),
              Layer("batch_norm", {"num_features": width, "dims": 2})]
    if relu:
        layers.append(Layer("relu"))
    return SlotSpec("stem", tuple(layers))


def _resnet(name: str, in_channels: int, image_size: int, stem: int, widths: Sequence[int],
            blocks: Sequence[int], strides: list[int], end_bn: bool) -> Template:
    in_channels = _size(name, "in_channels", in_channels)
    image_size = _size(name, "image_size", image_size)
    stem = _size(name, "stem", stem)
    widths, blocks = _sizes(name, "widths", widths), _sizes(name, "blocks", blocks)
    if len(widths) != len(blocks) or not widths:
        raise L2BGError(f"{name} needs one block count per stage width, got widths {widths} "
                        f"and blocks {blocks}")
    halvings = sum(s > 1 for s in strides[:len(widths)])
    if image_size % 2 ** halvings:
        raise L2BGError(f"{name}: image_size {image_size} must be a multiple of "
                        f"{2 ** halvings} ({halvings} stages halve it)")
    slots = [_stem(in_channels, stem, relu=not end_bn),
             *_stages(widths, blocks, strides[:len(widths)], stem)]
    pool = [Layer("global_avg_pool")]
    if end_bn:
        pool = [Layer("batch_norm", {"num_features": widths[-1], "dims": 2}), Layer("relu"),
                *pool]
    slots.append(SlotSpec("pool", tuple(pool), expandable=end_bn))
    kwargs = {"in_channels": in_channels, "image_size": image_size, "stem": stem,
              "widths": widths, "blocks": blocks}
    return _check_parameters(Template(name, kwargs, tuple(slots), per_task_heads=True,
                                      head_in=widths[-1],
                                      input_shape=(in_channels, image_size, image_size)))


def resnet26(in_channels: int = 3, image_size: int = 64, stem: int = 32,
             widths: Sequence[int] = (64, 128, 256), blocks: Sequence[int] = (4, 4, 4)
             ) -> Template:
    """The ResNet-26 of the residual-adapters work for 64×64 inputs: a 32-channel stem (conv +
    batch norm), 3 stages of 4 basic blocks at 64/128/256 channels, each stage striding 2, then
    batch norm + relu + global average pooling, per-task heads (1 + 12·2 convolutions + a
    head: 26 layers). 14 slots, all expandable."""
    return _resnet("resnet26", in_channels, image_size, stem, widths, blocks, [2] * 8,
                   end_bn=True)


def resnet18(in_channels: int = 3, image_size: int = 32, stem: int = 64,
             widths: Sequence[int] = (64, 128, 256, 512), blocks: Sequence[int] = (2, 2, 2, 2)
             ) -> Template:
    """The CIFAR ResNet-18 for 32×32 inputs: a 64-channel stem (conv + batch norm + relu), 4
    stages of 2 basic blocks at 64/128/256/512 channels (stages 2-4 stride 2, the padding
    shortcut), global average pooling, per-task heads. 10 slots; all but ``pool`` expandable."""
    return _resnet("resnet18", in_channels, image_size, stem, widths, blocks, [1] + [2] * 7,
                   end_bn=False)
