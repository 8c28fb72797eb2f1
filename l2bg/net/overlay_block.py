"""The stages of a slot as the overlays cut it: a primitive chain or a residual block
(docs/design.md, "Units, groups, adapters and task batch norm").

A chain runs its layers before its main layer (``pre``), the main layer, and its layers after it
(``post``). A :class:`~l2bg.net.blocks.BasicBlock` slot is cut at ``conv2``, its *main layer*:
its output channels are the block's, so a grown group owns rows of ``conv2`` and, without task
batch norm, ``bn2``'s entries of those channels, while ``conv1``/``bn1`` (the block's hidden
activation) stay the node's. A block runs the same operations as ``BasicBlock.forward``:

- ``pre``: ``h = relu(bn1(conv1(x)))``, the main layer's input (shared by every group);
- the main product ``z = conv2(h)``;
- ``post``: ``relu(bn2(z) + shortcut(x))``; on the grown channels only (``post_rows``) the sum
  takes the shortcut's channels of those groups, which is exact because bn2, the sum and the relu
  are channel-wise.

Adapters attach to ``conv2`` only (a parallel 1x1 convolution on ``h``): an adapter on ``conv1``
would change ``h`` and so every output channel, not only its unit's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from l2bg.net.blocks import BasicBlock
from l2bg.net.kinds import BASIC_BLOCK, _layer_kind

#: the batch norm after a block's main layer (the key of its grown entries in ``Rows.bn``)
BLOCK_BN = "bn2"


def block_cut(module: nn.Module) -> tuple[str, int, int] | None:
    """(the block's module path, output channels, input channels of ``conv2``) of a block slot
    the overlays can cut, else None. The slot is the exact :class:`BasicBlock` the executors
    recognise (``conv2`` not grouped), alone in an ``nn.Sequential`` (a template's
    ``basic_block`` slot) or as the slot module itself."""
    path, block = "", module
    if type(module) is nn.Sequential and len(module) == 1:
        path, block = "0", module[0]
    if type(block) is not BasicBlock or _layer_kind(block) != BASIC_BLOCK:
        return None
    conv2 = block.conv2
    if conv2.groups != 1 or block.bn2.num_features != conv2.out_channels:
        return None
    return path, conv2.out_channels, conv2.in_channels


def before_main(block_path: str, path: str) -> bool:
    """Whether the submodule at ``path`` of a slot whose block is at ``block_path`` runs before
    the block's ``conv2``."""
    rest = path[len(block_path) + 1:] if block_path else path
    return rest.split(".")[0] in ("conv1", "bn1")


def call_with(layer: nn.Module, tensors: dict[str, Tensor], prefix: str, x: Tensor) -> Tensor:
    """``layer(x)`` with the entries of ``tensors`` under ``prefix`` (``{"<prefix>name": t}``)
    in place of its own (a task's batch norm), plain ``layer(x)`` when there are none."""
    subs = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    return functional_call(layer, subs, (x,)) if subs else layer(x)


def _block(node: nn.Module, chain: Any) -> tuple[BasicBlock, str]:
    """The slot's block and the prefix of its submodules' paths."""
    return node.get_submodule(chain.path), f"{chain.path}." if chain.path else ""


def _layers(node: nn.Sequential, x: Tensor, idx: range, bn: dict[str, Tensor]) -> Tensor:
    """Layers ``idx`` of a chain, batch norms with the tensors ``bn`` gives (``{"i.name": t}``)."""
    for i in idx:
        x = call_with(node[i], bn, f"{i}.", x)
    return x


def pre(node: nn.Module, chain: Any, x: Tensor, bn: dict[str, Tensor]) -> Tensor:
    """The input of the slot's main layer (``chain``: its :class:`~l2bg.net.overlay.Chain`):
    a chain's earlier layers, a block's ``relu(bn1(conv1(x)))``; batch norms with ``bn``'s
    tensors where it has them."""
    if chain.block:
        b, pre = _block(node, chain)
        return F.relu(call_with(b.bn1, bn, f"{pre}bn1.", b.conv1(x)))
    return _layers(node, x, range(chain.main), bn)


def post(node: nn.Module, chain: Any, z: Tensor, x: Tensor, bn: dict[str, Tensor]) -> Tensor:
    """The slot's output from its main product ``z`` on input ``x``: a chain's later layers, a
    block's ``relu(bn2(z) + shortcut(x))``."""
    if chain.block:
        b, pre = _block(node, chain)
        return F.relu(call_with(b.bn2, bn, f"{pre}bn2.", z) + b.shortcut(x))
    return _layers(node, z, range(chain.main + 1, len(node)), bn)


def post_rows(node: nn.Module, chain: Any, zr: Tensor, x: Tensor,
              spans: Sequence[tuple[int, int]], bn_rows: Callable[[Tensor, Any], Tensor]
              ) -> Tensor:
    """``post`` on the channels ``spans`` only: ``zr`` is the main product of those channels (in
    order), ``bn_rows(z, key)`` batch norm ``key`` on them; a block adds the shortcut's
    channels of ``spans``."""
    if not chain.block:
        for i in range(chain.main + 1, len(node)):
            zr = bn_rows(zr, i) if i in chain.bn else node[i](zr)
        return zr
    s = _block(node, chain)[0].shortcut(x)
    s = torch.cat([s[:, a:b] for a, b in spans], 1) if len(spans) > 1 else s[
        :, spans[0][0]:spans[0][1]]
    return F.relu(bn_rows(zr, BLOCK_BN) + s)
