"""Layer kinds: the primitive layers the executors know (kinds of a slot program, mirrored by
``csrc/l2bg.h``), the parameter entries each reads, and how a slot module is encoded for the C++
executor (:func:`_encode_slot`). A module of no known kind runs through PyTorch in the same plan."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from l2bg.base.errors import L2BGError
from l2bg.net.blocks import BasicBlock, GlobalAvgPool2d, PadShortcut

# Layer kinds of a slot program (csrc/l2bg.h) and the parameter entries each reads.
LINEAR, CONV2D, RELU, MAX_POOL2D, FLATTEN, BATCH_NORM, DROPOUT, BASIC_BLOCK, GLOBAL_AVG_POOL = (
    range(9))
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_PARAMS = {
    LINEAR: ("weight", "bias"),
    CONV2D: ("weight", "bias"),
    BATCH_NORM: _BN,
    # conv1, bn1, conv2, bn2 (csrc/l2bg.h): read from the block's submodules
    BASIC_BLOCK: tuple(f"{m}.{a}" for m, names in (("conv1", ("weight", "bias")), ("bn1", _BN),
                                                   ("conv2", ("weight", "bias")), ("bn2", _BN))
                       for a in names),
}


def _layer_kind(m: nn.Module) -> int | None:
    if type(m) is nn.Linear:
        return LINEAR
    if type(m) is nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str):
        return CONV2D
    if type(m) is nn.ReLU:
        return RELU
    if type(m) is nn.MaxPool2d and not m.return_indices:
        return MAX_POOL2D
    if type(m) is nn.Flatten:
        return FLATTEN
    if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d):
        return BATCH_NORM
    if type(m) is nn.Dropout:
        return DROPOUT
    if type(m) is GlobalAvgPool2d or (type(m) is nn.AdaptiveAvgPool2d
                                      and m.output_size in (1, (1, 1))):
        return GLOBAL_AVG_POOL
    if (type(m) is BasicBlock and all(_layer_kind(c) == CONV2D for c in (m.conv1, m.conv2))
            and all(_layer_kind(b) == BATCH_NORM and type(b) is nn.BatchNorm2d
                    for b in (m.bn1, m.bn2))
            and (type(m.shortcut) is nn.Identity or type(m.shortcut) is PadShortcut)):
        return BASIC_BLOCK
    return None


def _sources(layer: nn.Module) -> list[tuple[dict, str]]:
    """Where the executor reads the parameter entries of one layer: (the owning module's
    ``_parameters`` or ``_buffers`` dict, name), in the order of its kind (csrc/l2bg.h)."""
    out = []
    for entry in _PARAMS.get(_layer_kind(layer), ()):
        owner, _, a = entry.rpartition(".")
        m = layer.get_submodule(owner) if owner else layer
        out.append((m._buffers if a in m._buffers else m._parameters, a))
    return out


def _stateful(layer: nn.Module) -> list[nn.Module]:
    """The modules whose training flags a layer reads, one flag bit each (csrc/l2bg.h)."""
    kind = _layer_kind(layer)
    if kind in (BATCH_NORM, DROPOUT):
        return [layer]
    if kind == BASIC_BLOCK:
        return [layer.bn1, layer.bn2]
    return []


def _pair(v: int | Sequence[int]) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(v[0]), int(v[1])]


def _conv_args(m: nn.Conv2d) -> list[int]:
    return [*_pair(m.stride), *_pair(m.padding), *_pair(m.dilation), m.groups]


def _bn_fargs(m: nn.Module, fargs: list[float]) -> int:
    fargs += [float(m.eps), -1.0 if m.momentum is None else float(m.momentum)]
    return len(fargs) - 2


def _encode_slot(node: nn.Module, fargs: list[float]) -> list[int]:
    """The slot program of one node (kinds and int args); floats go to ``fargs``."""
    layers = list(node) if isinstance(node, nn.Sequential) else [node]
    out = [len(layers)]
    for m in layers:
        kind = _layer_kind(m)
        if kind is None:
            raise L2BGError(f"the native executor cannot run layer {m!r}; use backend='reference'")
        out.append(kind)
        if kind == CONV2D:
            out += _conv_args(m)
        elif kind == MAX_POOL2D:
            stride = m.stride if m.stride is not None else m.kernel_size
            out += [
                *_pair(m.kernel_size),
                *_pair(stride),
                *_pair(m.padding),
                *_pair(m.dilation),
                int(m.ceil_mode),
            ]
        elif kind == FLATTEN:
            out += [m.start_dim, m.end_dim]
        elif kind == BATCH_NORM:
            out.append(_bn_fargs(m, fargs))
        elif kind == DROPOUT:
            out.append(len(fargs))
            fargs.append(float(m.p))
        elif kind == GLOBAL_AVG_POOL:
            out.append(int(type(m) is nn.AdaptiveAvgPool2d))
        elif kind == BASIC_BLOCK:
            sc = m.shortcut
            pad = [sc.stride, sc.out_channels - sc.in_channels] if type(sc) is PadShortcut else [
                1, 0]
            first = _bn_fargs(m.bn1, fargs)
            _bn_fargs(m.bn2, fargs)
            out += [*_conv_args(m.conv1), *_conv_args(m.conv2), *pad, first]
    return out


def _node_signature(node: nn.Module) -> list[int]:
    layers = list(node) if isinstance(node, nn.Sequential) else [node]
    return [_layer_kind(m) if _layer_kind(m) is not None else -1 for m in layers]
