"""Per-task overlays on shared nodes: task batch norm, grown channel groups and adapters.

An :class:`Overlay` belongs to one (owner task, slot) and holds optional parts (docs/design.md,
"Units, groups, adapters and task batch norm"):

- ``bn``: the owner's own copy of every batch-norm submodule of the slot (``task_bn``);
- ``rows``: the owner's copy of some channel groups of the slot's *main layer* (the last linear or
  conv2d of a primitive chain whose later layers are channel-wise, or ``conv2`` of a residual
  block, :mod:`l2bg.net.overlay_block`): those output rows of its weight and bias and, without
  task batch norm, those channels' entries of the later batch norms;
- ``adapters``: per grown unit a zero-initialised adapter on the main layer's input whose output is
  added to the main layer's output on the unit's channels (a parallel 1x1 convolution for conv2d,
  a rank-r product ``up @ down`` for linear).

A task's *stack* at a slot lists the overlays applied over its node, in order: a bound task
inherits its target's stack (sharing those overlays, as it shares nodes) and its own overlay, if
any, comes last. :class:`SlotView` is what a task runs at a slot: its node with that stack. Its
meaning: the main layer with the stack's rows in place of the node's, plus every adapter, then the
channel-wise rest with the last ``bn`` of the stack (else the rows' and node's entries). It is
computed as the node's own output with only the grown channels recomputed (one product over the
grown rows, scattered in), or, with task batch norm, the node's main-layer product (shared) with
the grown rows scattered in and the rest run with the task's statistics. The executor passes a
per-run memo so the shared parts (node output, main product) are computed once per distinct input.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from l2bg.base.errors import L2BGError
from l2bg.net.kinds import (
    BATCH_NORM,
    CONV2D,
    DROPOUT,
    FLATTEN,
    LINEAR,
    MAX_POOL2D,
    RELU,
    _layer_kind,
    _pair,
)
from l2bg.net.overlay_block import BLOCK_BN, before_main, block_cut, post, post_rows, pre

MODES = ("copy", "adapt")
_CHANNELWISE = (RELU, MAX_POOL2D, BATCH_NORM, DROPOUT)


def is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def bn_paths(module: nn.Module) -> list[str]:
    """Paths of the batch-norm submodules of a slot module ('' for the module itself)."""
    return [p for p, m in module.named_modules() if is_bn(m)]


@dataclass(frozen=True)
class Chain:
    """How a slot is cut: ``main`` (index of its main layer in a chain), its kind and output
    channels, ``bn`` (keys of the batch norms after it: chain indices, or ``"bn2"``), ``block``
    (a residual block at module path ``path``, main layer its ``conv2``)."""

    main: int
    kind: int
    channels: int
    in_channels: int
    bn: tuple[int | str, ...]
    block: bool = False
    path: str = ""

    def main_layer(self, node: nn.Module) -> nn.Module:
        return node.get_submodule(self.path).conv2 if self.block else node[self.main]

    def layer(self, node: nn.Module, key: int | str) -> nn.Module:
        return node.get_submodule(f"{self.path}.{key}" if self.path else str(key))

    def before_main(self, path: str) -> bool:
        """Whether the submodule at ``path`` runs before the main layer."""
        if self.block:
            return before_main(self.path, path)
        head = path.split(".")[0]
        return head.isdigit() and int(head) < self.main


def chain_of(module: nn.Module) -> Chain | None:
    """The cut of a slot module, or None when it cannot be cut: not a residual block
    (:func:`~l2bg.net.overlay_block.block_cut`) nor an ``nn.Sequential`` of primitive layers, no
    linear/conv2d, a grouped conv, or a later layer that is not channel-wise (relu, max_pool2d,
    batch_norm, dropout; a flatten only last)."""
    block = block_cut(module)
    if block is not None:
        return Chain(0, CONV2D, block[1], block[2], (BLOCK_BN,), block=True, path=block[0])
    if type(module) is not nn.Sequential:
        return None
    layers = list(module)
    kinds = [_layer_kind(m) for m in layers]
    mains = [i for i, k in enumerate(kinds) if k in (LINEAR, CONV2D)]
    if not mains or any(k is None for k in kinds):
        return None
    m = mains[-1]
    main = layers[m]
    if kinds[m] == CONV2D and main.groups != 1:
        return None
    channels = main.out_features if kinds[m] == LINEAR else main.out_channels
    for j in range(m + 1, len(layers)):
        k, layer = kinds[j], layers[j]
        if k == FLATTEN:
            if j != len(layers) - 1 or layer.start_dim != 1 or layer.end_dim != -1:
                return None
        elif k not in _CHANNELWISE or (k == BATCH_NORM and layer.num_features != channels):
            return None
    return Chain(m, kinds[m], channels, main.in_features if kinds[m] == LINEAR
                 else main.in_channels,
                 tuple(j for j in range(m + 1, len(layers)) if kinds[j] == BATCH_NORM))


def _bn_like(bn: nn.Module, features: int) -> nn.Module:
    ref = next(iter(bn.state_dict().values()), None)
    where = {} if ref is None else {"device": ref.device}
    return type(bn)(features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                    track_running_stats=bn.track_running_stats, **where)


class Rows(nn.Module):
    """A task's own copy of some output channels of a slot: main-layer weight/bias rows and,
    with ``with_bn``, the later batch norms' entries of those channels (``bn[str(layer)]``)."""

    def __init__(self, node: nn.Sequential, chain: Chain, ranges: Sequence[tuple[int, int]],
                 with_bn: bool) -> None:
        super().__init__()
        self.ranges = [tuple(r) for r in ranges]
        n = sum(b - a for a, b in self.ranges)
        main = chain.main_layer(node)
        self.weight = nn.Parameter(main.weight.new_zeros((n, *main.weight.shape[1:])))
        self.bias = (None if main.bias is None
                     else nn.Parameter(main.bias.new_zeros(n)))
        self.bn = nn.ModuleDict({str(i): _bn_like(chain.layer(node, i), n)
                                 for i in chain.bn} if with_bn else {})

    def position(self, channel: int) -> int:
        """Row of ``channel`` in this copy."""
        p = 0
        for a, b in self.ranges:
            if a <= channel < b:
                return p + channel - a
            p += b - a
        raise L2BGError(f"channel {channel} is not in these rows {self.ranges}")


class Adapter(nn.Module):
    """A zero-initialised correction on ``channels`` output channels of a main layer, computed
    from the main layer's input: rank-``rank`` ``up @ down`` for linear, a 1x1 convolution at the
    main conv's (k-1)//2 tap (same stride; its 'parallel' 1x1 conv) for conv2d."""

    def __init__(self, main: nn.Module, kind: int, channels: int, rank: int) -> None:
        super().__init__()
        self.kind = kind
        w = main.weight
        if kind == LINEAR:
            self.rank = rank
            self.down = nn.Parameter(w.new_empty((rank, main.in_features)))
            if w.device.type != "meta":
                nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
            self.up = nn.Parameter(w.new_zeros((channels, rank)))
        else:
            self.rank = 0
            self.weight = nn.Parameter(w.new_zeros((channels, main.in_channels, 1, 1)))
            k, d, p = _pair(main.kernel_size), _pair(main.dilation), _pair(main.padding)
            self.stride = _pair(main.stride)
            self.tap = [(k[i] - 1) // 2 for i in range(2)]
            self.shift = [p[i] - d[i] * self.tap[i] for i in range(2)]

    def forward(self, h: Tensor, out_shape: torch.Size) -> Tensor:
        if self.kind == LINEAR:
            return F.linear(F.linear(h, self.down), self.up)
        qh, qw = self.shift
        y = F.conv2d(F.pad(h, (qw, qw, qh, qh)), self.weight, stride=self.stride)
        return y[..., : out_shape[-2], : out_shape[-1]]

    def fold_into(self, main: nn.Module, a: int, b: int) -> None:
        """Add this adapter into rows a:b of ``main``'s weight (same map, up to rounding)."""
        with torch.no_grad():
            if self.kind == LINEAR:
                main.weight[a:b] += self.up @ self.down
            else:
                main.weight[a:b, :, self.tap[0], self.tap[1]] += self.weight[:, :, 0, 0]


def adapter_rank(main: nn.Module, kind: int, channels: int, rank: int, bn_layers: int) -> int:
    """``rank`` lowered so a linear adapter never has more parameters than a copy of its unit
    (weight rows, bias, batch-norm affine entries of those channels)."""
    if kind != LINEAR:
        return 0
    n_in = main.in_features
    copy_cost = channels * (n_in + (main.bias is not None) + 2 * bn_layers)
    if n_in + channels > copy_cost:
        raise L2BGError(f"a unit of {channels} channel(s) of a bias-free linear layer is smaller "
                        "than any adapter of it; grow it with mode='copy'")
    return min(int(rank), copy_cost // (n_in + channels), n_in, channels)


class Overlay(nn.Module):
    """The parts task ``owner`` holds at one slot (see the module docstring)."""

    def __init__(self, slot: int, owner: str) -> None:
        super().__init__()
        self.slot, self.owner = slot, owner
        self.bn_paths: list[str] = []
        self.bn = nn.ModuleDict()
        self.register_module("rows", None)
        self.rows_units: tuple[int | None, list[int]] | None = None
        self.adapters = nn.ModuleDict()
        self.adapt_units: tuple[int | None, list[int]] | None = None
        self.rank: int | None = None

    def set_bn(self, source: nn.Module) -> None:
        """Own copies of ``source``'s batch norms (a node, or another task's overlay)."""
        if isinstance(source, Overlay):
            self.bn_paths, self.bn = list(source.bn_paths), copy.deepcopy(source.bn)
            return
        self.bn_paths = bn_paths(source)
        self.bn = nn.ModuleDict({f"bn{i}": copy.deepcopy(source.get_submodule(p))
                                 for i, p in enumerate(self.bn_paths)})

    def bn_tensors(self) -> dict[str, Tensor]:
        """``{path.name: tensor}`` of this overlay's batch norms (for ``functional_call``)."""
        out = {}
        for i, p in enumerate(self.bn_paths):
            m = self.bn[f"bn{i}"]
            for name, t in [*m._parameters.items(), *m._buffers.items()]:
                if t is not None:
                    out[f"{p}.{name}" if p else name] = t
        return out

    def mode(self) -> str | None:
        return "copy" if self.rows is not None else "adapt" if len(self.adapters) else None

    def units(self) -> list[int | None]:
        """Groups this overlay grew (None: the whole slot)."""
        spec = self.rows_units or self.adapt_units
        if spec is None:
            return []
        return [None] if spec[0] is None else list(spec[1])

    def spec(self) -> dict[str, Any]:
        """What the topology records of it (weights are in the safetensors file)."""
        def units(u):
            return None if u is None else {"num_groups": u[0], "groups": list(u[1])}
        return {"slot": self.slot, "owner": self.owner, "bn": list(self.bn_paths),
                "rows": units(self.rows_units), "adapter": units(self.adapt_units),
                "rank": self.rank}


def _spans(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted disjoint union of channel ranges."""
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _memo(memo: dict | None, key: Any, fn):
    if memo is None:
        return fn()
    if key not in memo:
        memo[key] = fn()
    return memo[key]


class SlotView(nn.Module):
    """What a task runs at one slot: ``node`` with a stack of overlays (module docstring). Holds
    references only; its parameters are the node's and the overlays' (not registered here)."""

    def __init__(self, node: nn.Module, stack: Sequence[Overlay], chain: Chain | None) -> None:
        super().__init__()
        object.__setattr__(self, "node", node)
        object.__setattr__(self, "stack", list(stack))
        self.chain = chain
        bn = [o for o in stack if o.bn_paths]
        object.__setattr__(self, "bn_owner", bn[-1] if bn else None)
        ranges = [(r, o.rows) for o in stack if o.rows is not None for r in o.rows.ranges]
        self.adapters = [(a, b, ad) for o in stack if len(o.adapters)
                         for (a, b), ad in zip(_adapter_ranges(o, chain), o.adapters.values(),
                                               strict=True)]
        self.spans = _spans([r for r, _ in ranges] + [(a, b) for a, b, _ in self.adapters])
        if self.spans and chain is None:
            raise L2BGError("a grown channel group on a slot that cannot be cut; grow the whole "
                            "slot")
        source = {}
        for (a, b), rows in ranges:  # later overlays win
            for c in range(a, b):
                source[c] = rows
        self.segments: list[tuple[int, int, Rows | None]] = []  # (start, stop, source)
        for a, b in self.spans:
            for c in range(a, b):
                src = source.get(c)
                if self.segments and self.segments[-1][1] == c and self.segments[-1][2] is src:
                    self.segments[-1] = (self.segments[-1][0], c + 1, src)
                else:
                    self.segments.append((c, c + 1, src))
        self.pre_bn = bool(chain and self.bn_owner and any(
            chain.before_main(p) for p in self.bn_owner.bn_paths))

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x)

    def run(self, x: Tensor, memo: dict | None = None, key: Any = None) -> Tensor:
        """The task's output at this slot. ``memo``/``key``: the executor's per-run memo and the
        input's key: the node's stages (:func:`node_stages`) are looked up there."""
        node, chain = self.node, self.chain
        bn = self.bn_owner.bn_tensors() if self.bn_owner is not None else {}
        if not self.spans and (chain is None or self.pre_bn):
            return functional_call(node, bn, (x,)) if bn else node(x)
        if bn:  # the node's main product (shared unless a batch norm precedes it), then t's rest
            if self.pre_bn:
                h = pre(node, chain, x, bn)
                z = chain.main_layer(node)(h)
            else:
                h, z, _ = node_stages(node, chain, x, memo, key, lazy=True)
                z = z()
            z = self._scatter(z, self._grown(h)) if self.spans else _unshared(node, chain, z)
            return post(node, chain, z, x, bn)
        h, _, y = node_stages(node, chain, x, memo, key, lazy=True)
        y = y()  # the node's own output; only the grown channels are recomputed
        return self._scatter(y, post_rows(node, chain, self._grown(h), x, self.spans,
                                          self._bn_rows))

    def _grown(self, h: Tensor) -> Tensor:
        """The main layer's output on the grown channels only: one product over their rows."""
        main = self.chain.main_layer(self.node)
        w = [main.weight[a:b] if src is None else
             src.weight[src.position(a):src.position(a) + b - a] for a, b, src in self.segments]
        bias = None if main.bias is None else torch.cat(
            [main.bias[a:b] if src is None else src.bias[src.position(a):src.position(a) + b - a]
             for a, b, src in self.segments])
        w = torch.cat(w) if len(w) > 1 else w[0]
        if self.chain.kind == LINEAR:
            z = F.linear(h, w, bias)
        else:
            z = F.conv2d(h, w, bias, main.stride, main.padding, main.dilation)
        for a, b, ad in self.adapters:
            p = self._pos(a)
            z[:, p:p + b - a] += ad(h, z.shape)
        return z

    def _pos(self, channel: int) -> int:
        p = 0
        for a, b in self.spans:
            if a <= channel < b:
                return p + channel - a
            p += b - a
        raise AssertionError(channel)

    def _bn_rows(self, z: Tensor, i: int) -> Tensor:
        """Batch norm ``i`` on the grown channels, each segment with its source's entries: a
        copy's own (updated in train mode) or the node's (batch statistics in train mode; the
        node's own output already updated them once)."""
        parts, p, counted = [], 0, set()
        for a, b, src in self.segments:
            n = b - a
            if src is None:
                m, lo, update = self.chain.layer(self.node, i), a, False
            else:
                m, lo, update = src.bn[str(i)], src.position(a), True
            parts.append(_bn_slice(z[:, p:p + n], m, lo, lo + n, update, counted))
            p += n
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)

    def _scatter(self, full: Tensor, part: Tensor) -> Tensor:
        """``full`` with the grown channels replaced by ``part`` (channel-major)."""
        n = full.shape[0]
        out = full.clone(memory_format=torch.contiguous_format)
        o, part = out.view(n, self.chain.channels, -1), part.reshape(n, self._width(), -1)
        p = 0
        for a, b in self.spans:
            o[:, a:b] = part[:, p:p + b - a]
            p += b - a
        return out

    def _width(self) -> int:
        return sum(b - a for a, b in self.spans)


def node_stages(node: nn.Sequential, chain: Chain, x: Tensor, memo: dict | None, key: Any,
                lazy: bool = False):
    """A chain's own stages on ``x``: the input of its main layer, the main product and its
    output (the same operations as ``node(x)``), each once per (node, input) in ``memo``.
    ``lazy``: the product and output as functions (computed on first use)."""
    nid = id(node)
    h = _memo(memo, (nid, key, "h"), lambda: pre(node, chain, x, {}))

    def z() -> Tensor:
        return _memo(memo, (nid, key, "z"), lambda: chain.main_layer(node)(h))

    def y() -> Tensor:
        return _memo(memo, (nid, key, "y"), lambda: post(
            node, chain, _unshared(node, chain, z()), x, {}))

    return (h, z, y) if lazy else y()


def _unshared(node: nn.Sequential, chain: Chain, z: Tensor) -> Tensor:
    """``z`` (a memoised product), copied when a later layer would write into it in place."""
    inplace = not chain.block and any(getattr(node[i], "inplace", False)
                                      for i in range(chain.main + 1, len(node)))
    return z.clone() if inplace else z


def _bn_slice(x: Tensor, m: nn.Module, a: int, b: int, update: bool, counted: set) -> Tensor:
    rm, rv = m.running_mean, m.running_var
    w = None if m.weight is None else m.weight[a:b]
    bias = None if m.bias is None else m.bias[a:b]
    factor = 0.0 if m.momentum is None else m.momentum
    if m.training and rm is not None:
        if not update:
            rm = rv = None
        else:
            if id(m) not in counted:
                counted.add(id(m))
                m.num_batches_tracked.add_(1)
            if m.momentum is None:
                factor = 1.0 / float(m.num_batches_tracked)
    training = m.training or rm is None
    return F.batch_norm(x, None if rm is None else rm[a:b], None if rv is None else rv[a:b],
                        w, bias, training, factor, m.eps)


def _adapter_ranges(o: Overlay, chain: Chain | None) -> list[tuple[int, int]]:
    """Channel range of each adapter of ``o``, in the order of ``o.adapters``."""
    from l2bg.net.units import channel_groups

    g = o.adapt_units[0] if o.adapt_units else None
    ranges = channel_groups(chain.channels, g) if g is not None else []
    return [(0, chain.channels) if k == "all" else ranges[int(k)] for k in o.adapters]


def materialize(node: nn.Module, stack: Sequence[Overlay], chain: Chain | None,
                fold: bool = True) -> nn.Module:
    """A standalone module computing what ``SlotView(node, stack)`` computes (a copy of the
    node with the stack's rows, batch norms and, with ``fold``, adapters written in): what a
    whole-slot copy grows from, and where a group copy takes its rows."""
    out = copy.deepcopy(node)
    out.train(node.training)
    with torch.no_grad():
        for o in stack:
            if o.rows is None:
                continue
            for a, b in o.rows.ranges:
                p = o.rows.position(a)
                main = chain.main_layer(out)
                main.weight[a:b] = o.rows.weight[p:p + b - a]
                if o.rows.bias is not None:
                    main.bias[a:b] = o.rows.bias[p:p + b - a]
                for i, m in o.rows.bn.items():
                    dst = chain.layer(out, i)
                    for name in ("weight", "bias", "running_mean", "running_var"):
                        if getattr(dst, name, None) is not None:
                            getattr(dst, name)[a:b] = getattr(m, name)[p:p + b - a]
        for o in stack if fold else []:
            for (a, b), ad in zip(_adapter_ranges(o, chain), o.adapters.values(), strict=True):
                ad.fold_into(chain.main_layer(out), a, b)
        bn = [o for o in stack if o.bn_paths]
        if bn:
            for i, p in enumerate(bn[-1].bn_paths):
                out.get_submodule(p).load_state_dict(bn[-1].bn[f"bn{i}"].state_dict())
    return out
