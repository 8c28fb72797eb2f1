"""Small templates and helpers shared by the overlay tests (tests/net/test_overlay*.py)."""

from __future__ import annotations

import torch
from activations import Block
from torch import nn

from l2bg.net.jointnet import JointNet
from l2bg.net.modules import module_template
from l2bg.net.templates import convnet, mlp


def bn_chain():
    """Cuttable chains with batch norm: conv (even kernel) + in-place relu + bn + pool, a strided
    padded conv + bn + relu, flatten + linear + bn + relu; per-task heads."""
    torch.manual_seed(0)
    return module_template(
        {"c1": nn.Sequential(nn.Conv2d(1, 4, 2), nn.ReLU(inplace=True), nn.BatchNorm2d(4),
                             nn.MaxPool2d(2)),
         "c2": nn.Sequential(nn.Conv2d(4, 3, 3, stride=2, padding=1), nn.BatchNorm2d(3),
                             nn.ReLU()),
         "fc": nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.BatchNorm1d(5), nn.ReLU())},
        name="bnchain", head=lambda n: nn.Linear(5, n), input_shape=(1, 7, 8))


def with_block():
    """A slot that cannot be cut (a residual block with batch norm) beside a cuttable one."""
    torch.manual_seed(0)
    return module_template(
        {"stem": nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU()),
         "block": Block(3),
         "fc": nn.Sequential(nn.Flatten(), nn.Linear(48, 4), nn.ReLU())},
        name="blocky", head=lambda n: nn.Linear(4, n), input_shape=(1, 4, 4))


TEMPLATES = {
    "mlp": lambda: mlp(input_dim=12, hidden=(6, 5), num_classes=4),
    "convnet": lambda: convnet(in_channels=1, image_size=8, channels=(3, 4), kernels=(2, 2),
                               fc=(6,)),
    "bnchain": bn_chain,
    "blocky": with_block,
}


def inputs(net: JointNet, n: int = 5, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *net.template.input_shape), generator=g)


def outputs(net: JointNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    net.eval()
    with torch.no_grad():
        return {t: net(x, t) for t in net.tasks}


def perturb(net: JointNet, seed: int) -> None:
    """Random values in every overlay and batch-norm statistic, so adapters and copies matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in [*net.overlays.values(), *net.nodes.values()]:
            for k, v in m.state_dict().items():
                if v.is_floating_point():
                    v.copy_(torch.rand(v.shape, generator=g) + 0.5 if k.endswith("running_var")
                            else torch.randn(v.shape, generator=g) * 0.5)


