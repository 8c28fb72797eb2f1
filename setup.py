"""Builds the C++ extension ``l2bg._C`` against the torch that is already installed.

Install with ``pip install --no-build-isolation .`` so the extension sees that torch; when torch
cannot be imported at build time the package installs without the extension and l2bg falls back
to a JIT build or the pure-PyTorch reference at run time.
"""

import glob
import os
import sys

from setuptools import setup

ext_modules = []
cmdclass = {}
try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:
    print("l2bg: torch is not importable at build time; building without l2bg._C", file=sys.stderr)
else:
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if sources:
        ext_modules.append(
            CppExtension(
                "l2bg._C",
                sources,
                # No -std here: BuildExtension passes the C++ standard torch's headers need.
                extra_compile_args={"cxx": ["-O3"]},
            )
        )
        cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=True)

setup(ext_modules=ext_modules, cmdclass=cmdclass)
