"""On-disk cache of independent task-nets G_t↓ (the single-task baselines φ).

An entry is keyed by everything that shapes the net: benchmark, task data fingerprint, seed,
template and training config. It holds the saved net and its accuracies, so the gain of every
strategy and the conflict model of every run reuse one trained baseline. Entries are written to a
temporary directory and renamed into place, so concurrent workers never see half an entry, and
sealed (``meta.json`` holds the sha256 of itself and of the net's files): an entry that does not
match is moved aside (renamed ``<key>.damaged-…``, never deleted) and trained again, with one
warning. What a killed writer left (``.<key>.*.tmp``) is swept once it is older than the lock
lease.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from l2bg.base.errors import L2BGError, ParamError, one_line
from l2bg.base.fileio import atomic_dir, read_sealed, seal, set_aside, sweep_stale_temps, write_json
from l2bg.base.locks import FileLocks
from l2bg.base.version import __version__
from l2bg.learn.training import TrainConfig, accuracy, fit
from l2bg.net.jointnet import TOPOLOGY_FILE, WEIGHTS_FILE, JointNet
from l2bg.net.templates import Template

if TYPE_CHECKING:  # pragma: no cover
    from l2bg.learn.plugins import Plugin

CACHE_FORMAT = 2  # 2: sealed entries (checksums in meta.json)


@dataclass
class IndependentNet:
    """A trained independent task-net and its accuracies (fractions)."""

    net: JointNet
    task: str
    val_acc: float
    test_acc: float
    n_val: int
    train_s: float
    cached: bool
    key: str


def task_seed(seed: int, index: int) -> int:
    """Per-task seed for initialisation and shuffling, derived from the run seed."""
    return seed * 1_000_003 + index


class IndependentCache:
    """Directory of independent nets; ``root=None`` keeps them in memory only. Workers sharing a
    directory train each net once: a miss takes a file lock (``locks``) and looks again."""

    def __init__(self, root: str | os.PathLike | None = None,
                 locks: FileLocks | None = None) -> None:
        self.root = Path(root) if root is not None else None
        self.locks = locks if locks is not None else FileLocks()
        self._memory: dict[str, IndependentNet] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(benchmark: str, fingerprint: str, seed: int, template: Template,
            config: TrainConfig) -> str:
        payload = {"format": CACHE_FORMAT, "benchmark": benchmark, "data": fingerprint,
                   "seed": seed, "template": template.to_dict(),
                   "train": {k: v for k, v in config.to_dict().items() if k != "shared_lr_scale"}}
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:20]

    def get_or_train(self, benchmark: str, task: Any, index: int, seed: int, template: Template,
                     config: TrainConfig, device: torch.device, progress: Any = None,
                     plugins: Sequence[Plugin] = ()) -> IndependentNet:
        """The independent net of ``task`` (a :class:`l2bg.data.Task`), trained on a miss (the
        ``plugins``' training extension points see it, phase ``independent``)."""
        from l2bg.data import task_fingerprint

        tseed = task_seed(seed, index)
        cfg = config.replace(seed=tseed)
        key = self.key(benchmark, task_fingerprint(task), tseed, template, cfg)
        found = self._memory.get(key) or self._read(key, task.name, device, template=template)
        if found is None and self.root is not None:
            with self.locks.hold(self.root / "independent" / f".{key}.lock"):
                found = self._read(key, task.name, device, repair=True,
                                   template=template)
                if found is None:
                    return self._train(key, task, tseed, template, cfg, device, progress,
                                       plugins)
        elif found is None:
            return self._train(key, task, tseed, template, cfg, device, progress, plugins)
        self.hits += 1
        if progress is not None:
            progress.update(cfg.epochs)
        self._memory[key] = found
        return found

    def _train(self, key: str, task: Any, tseed: int, template: Template, cfg: TrainConfig,
               device: torch.device, progress: Any, plugins: Sequence[Plugin]
               ) -> IndependentNet:
        self.misses += 1
        torch.manual_seed(tseed)
        net = JointNet(template)
        net.add_task(task.name, task.num_classes)
        net.to(device)
        start = time.perf_counter()
        fit(net, task.name, task.x_train, task.y_train, cfg, progress, plugins=plugins,
            phase="independent", transform=task.train_transform)
        train_s = time.perf_counter() - start
        result = IndependentNet(
            net=net, task=task.name, val_acc=accuracy(net, task.name, task.x_val, task.y_val),
            test_acc=accuracy(net, task.name, task.x_test, task.y_test),
            n_val=int(task.x_val.shape[0]), train_s=train_s, cached=False, key=key)
        self._write(key, result)
        self._memory[key] = result
        return result

    def _read(self, key: str, task: str, device: torch.device, repair: bool = False,
              template: Template | None = None) -> IndependentNet | None:
        """The entry ``key``, or None when it is absent or damaged; with ``repair`` (under the
        entry's lock) a damaged entry is moved aside."""
        if self.root is None:
            return None
        entry = self.root / "independent" / key
        if not entry.is_dir():
            return None
        meta, problem = read_sealed(entry, "meta.json")
        found = None
        if problem is None:
            try:
                net = JointNet.load(entry, map_location=device,
                                    template=template if template is not None and template.is_user
                                    else None)
                found = IndependentNet(net=net, task=task, val_acc=float(meta["val_acc"]),
                                       test_acc=float(meta["test_acc"]),
                                       n_val=int(meta["n_val"]), train_s=float(meta["train_s"]),
                                       cached=True, key=key)
                if net.tasks != [task] or meta.get("task") != task:
                    problem = f"it holds task {meta.get('task')!r}, not {task!r}"
            except (L2BGError, KeyError, TypeError, ValueError) as exc:
                problem = one_line(exc, 120)
        if problem is None:
            return found
        if repair:
            set_aside(entry, problem, "cached independent net")
        return None

    def _write(self, key: str, result: IndependentNet) -> None:
        if self.root is None:
            return
        sweep_stale_temps(self.root / "independent", self.locks.lease_s)
        with atomic_dir(self.root / "independent" / key) as tmp:
            result.net.save(tmp)
            meta = {"val_acc": result.val_acc, "test_acc": result.test_acc, "n_val": result.n_val,
                    "train_s": result.train_s, "task": result.task, "l2bg": __version__}
            write_json(tmp / "meta.json", seal(meta, tmp, (WEIGHTS_FILE, TOPOLOGY_FILE)))


def default_cache_dir() -> Path:
    """``$L2BG_CACHE_DIR``, else the user cache directory (``$XDG_CACHE_HOME/l2bg`` or
    ``~/.cache/l2bg``)."""
    env = os.environ.get("L2BG_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "l2bg"


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """The one rule of both commands and the Python API: ``cache_dir``, else
    :func:`default_cache_dir`; an empty ``cache_dir`` is refused (it would put the cache in the
    working directory)."""
    if cache_dir is None:
        return default_cache_dir()
    if not os.fspath(cache_dir).strip():
        raise ParamError("{cache_dir} is empty; give a directory, or leave {cache_dir} out for "
                         "the default ($L2BG_CACHE_DIR, else ~/.cache/l2bg)", "cache_dir")
    return Path(cache_dir)


def open_cache(cache: IndependentCache | bool | None = None,
               cache_dir: str | os.PathLike | None = None) -> IndependentCache:
    """The cache of independent nets by the rule of ``l2bg run``, ``l2bg search`` and the Python
    API: an :class:`~l2bg.learn.independent.IndependentCache` as given; ``False``: in memory only
    (``--no-cache``); else on disk in :func:`resolve_cache_dir` (``cache_dir``)."""
    if isinstance(cache, IndependentCache):
        return cache
    if cache is False:
        return IndependentCache(None)
    if cache not in (None, True):
        raise ParamError(f"{{cache}} must be an IndependentCache, True, False or None, got "
                         f"{type(cache).__name__}", "cache")
    return IndependentCache(resolve_cache_dir(cache_dir))
