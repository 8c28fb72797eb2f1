"""What several test suites draw or build: activation batches for the RDM streams (hypothesis)
and a small residual block for user templates (a module the native executor does not know)."""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import nn


@st.composite
def activation_batches(draw, min_d: int = 0, twin_rows: bool = False):
    """(B, n, d) float64 activations with a common offset, ties and constant rows, and a slice
    width that need not divide d; ``twin_rows``: sometimes row 1 repeats row 0 (a distance of
    exactly 0 off the diagonal)."""
    b, n, d = draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(min_d, 40))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(b, n, d, generator=gen, dtype=torch.float64)
    if draw(st.booleans()):
        x = x.round()
    x += draw(st.sampled_from([0.0, 50.0]))
    for row in draw(st.lists(st.integers(0, n - 1), max_size=2)):
        x[:, row] = draw(st.sampled_from([0.0, 1.5]))
    if twin_rows and n > 1 and draw(st.booleans()):
        x[:, 1] = x[:, 0]
    return x, draw(st.integers(1, max(1, d + 3)))


class Block(nn.Module):
    """A small residual block: conv, batch norm, the shortcut, relu."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn(self.conv(x)))
