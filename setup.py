"""Builds the C++ extension ``l2bg._C`` against the torch that is already installed.

Install with ``pip install --no-build-isolation .`` so the extension sees that torch; when torch
cannot be imported at build time the package installs without the extension and l2bg falls back
to a JIT build or the pure-PyTorch reference at run time.
"""

import glob
import os
import sys
import warnings

from setuptools import setup

# pyproject.toml maps l2bg.kernels to kernels/ (package-dir), so an editable install goes through
# setuptools' import finder, which then warns "Editable installation." about folders named like
# the package in the working directory: a notice about the layout we chose, printed by pip on
# every `make setup`. Only that notice is silenced; any other warning still shows.
warnings.filterwarnings("ignore", message=r"Editable installation\.", category=UserWarning)

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
