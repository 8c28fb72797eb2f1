"""l2bg.avalanche is lazy: neither ``import l2bg`` nor ``import l2bg.avalanche`` nor its
modules import Avalanche (the classes that subclass Avalanche's are built on first use), and
without Avalanche its names say how to install it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from l2bg.base.errors import L2BGError


def test_importing_the_package_imports_no_avalanche():
    code = ("import sys, l2bg, l2bg.avalanche, l2bg.avalanche.model, l2bg.avalanche.strategy, "
            "l2bg.avalanche.convert; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('avalanche', 'torchvision')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.skipif(importlib.util.find_spec("avalanche") is not None,
                    reason="Avalanche is installed here")
def test_without_avalanche_a_name_says_how_to_install_it():
    import l2bg.avalanche

    with pytest.raises(L2BGError, match=r"pip install 'l2bg\[avalanche\]'"):
        l2bg.avalanche.L2BGStrategy  # noqa: B018
    with pytest.raises(L2BGError, match=r"L2BGModel needs Avalanche"):
        from l2bg.avalanche.model import L2BGModel  # noqa: F401


def test_an_unknown_name_is_an_attribute_error():
    import l2bg.avalanche

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        l2bg.avalanche.nope  # noqa: B018
