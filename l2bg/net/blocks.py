"""Residual building blocks of the template language: the basic block and global average pooling.

:class:`BasicBlock` is the residual unit of the residual-adapters ResNet-26 (Rebuffi et al.,
2017) and of the CIFAR ResNet-18::

    y = relu(bn1(conv1(x)))          conv1: 3×3, stride s, padding 1, no bias
    y = bn2(conv2(y))                conv2: 3×3, stride 1, padding 1, no bias
    out = relu(y + shortcut(x))

``shortcut`` is the identity when the shape is kept; for a change of shape (stride s > 1 or
more output channels) it is the residual-adapters shortcut, :class:`PadShortcut`: an s×s average
pool with stride s, then zero channels appended up to the output width (no parameters). A block
is one slot of a template and one layer of the executors' slot programs (``basic_block``); its
attributes ``conv1``, ``bn1``, ``conv2``, ``bn2`` and ``shortcut`` are the names other code
(task batch norm, channel groups, adapters) reaches its layers by; ``conv2`` is its main layer
(where channel groups and adapters cut it, :mod:`l2bg.net.overlay_block`).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from l2bg.base.errors import L2BGError

__all__ = ["BasicBlock", "GlobalAvgPool2d", "PadShortcut"]


class PadShortcut(nn.Module):
    """The residual-adapters shortcut for a change of shape: ``avg_pool2d(x, stride)`` (when
    ``stride`` > 1), then ``out_channels - in_channels`` zero channels appended."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels or stride < 1:
            raise L2BGError(f"a padding shortcut needs out_channels >= in_channels and stride "
                            f">= 1, got {in_channels} -> {out_channels}, stride {stride}")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride)
        extra = self.out_channels - self.in_channels
        return F.pad(x, (0, 0, 0, 0, 0, extra)) if extra else x

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """conv3×3-bn-relu-conv3×3-bn plus a shortcut, then relu (see the module docstring).
    Convolutions are initialised He-normal over their fan-out, batch norms to (1, 0), as in the
    residual-adapters code."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        same = stride == 1 and in_channels == out_channels
        self.shortcut: nn.Module = (nn.Identity() if same
                                    else PadShortcut(in_channels, out_channels, stride))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in (self.conv1, self.conv2):
            n = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / n))
        for bn in (self.bn1, self.bn2):
            bn.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class GlobalAvgPool2d(nn.Module):
    """The mean over the spatial dimensions: (N, C, H, W) -> (N, C)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(-2, -1))
