"""Search over grow sequences π = [(t, b_t, δ_t)] for the Pareto front of gain Δ ↑ and
parameters ↓ (paper §3, "Grow Sequences" and "Global Optimization"), on Optuna.

Pieces, top to bottom:

* :class:`SearchSpace`: which parts of π are searched (``shared-delta``: one δ for every task, the
  paper's; ``per-task-delta``: δ_t per task; ``bind``: b_t as a categorical over earlier tasks plus
  δ_t; ``order``: the task order as random keys plus one δ), with the low-budget restrictions of the
  paper (a fixed set of allowed bind targets, a curated δ set).
* :class:`MemoRunner`: runs one grow sequence with decision memoisation. A δ only matters through
  the discrete decision it maps to (bind target, nucleus); every evaluated prefix of decisions is a
  node on disk (JointNet + accuracy rows + task records), so a trial whose decisions were all seen
  costs a few JSON reads and a trial sharing its first k decisions with an earlier one resumes
  from that prefix's saved JointNet. Independent nets (:class:`l2bg.cache.IndependentCache`) are
  trained once per cache directory and the conflict scores (activations of both nets + RSA) are
  computed once per node and task, shared by every trial and worker (file locks keep concurrent
  workers from training the same thing twice).
* :func:`run_search`: the study. Storage: an Optuna journal file in the output directory by
  default, or any Optuna storage URL (``postgresql://``, ``mysql://``, ``sqlite:///``). Every
  trial records its worker and a lease that is refreshed while it runs; a RUNNING trial whose
  lease expired (or whose worker process on this host is gone) is failed and its parameters are
  re-enqueued, so re-running the same command resumes. RDB storages also get Optuna heartbeats.
  Exactly ``trials`` trials complete in total, however many workers or machines share the study.
* :func:`write_report`: ``pareto.json``, ``trials.csv``, ``pareto.png`` and ``hypervolume.png``,
  from the storage alone (``l2bg search --report DIR``).

Optuna and matplotlib are imported only when a search runs, so ``import l2bg`` stays light.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from l2bg.errors import L2BGError

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from l2bg.cache import IndependentCache, IndependentNet
    from l2bg.jointnet import JointNet
    from l2bg.learner import GrowStep, Learner
    from l2bg.templates import Template
    from l2bg.training import TrainConfig

__all__ = [
    "OBJECTIVES",
    "REFERENCE_POINT",
    "SAMPLERS",
    "SPACES",
    "Decision",
    "MemoRunner",
    "Outcome",
    "SearchConfig",
    "SearchSpace",
    "add_search_parser",
    "hypervolume_2d",
    "main",
    "make_sampler",
    "run_search",
    "write_report",
]

SPACES = ("shared-delta", "per-task-delta", "bind", "order")
SAMPLERS = ("gp", "tpe", "nsga2", "nsga2-paper", "random")
OBJECTIVES = ("gain", "acc")
BENCHMARK_NAMES = ("pmnist", "split-mnist", "split-cifar100")  # == l2bg.data.BENCHMARKS
DELTA_STEP = 0.05
#: Hypervolume reference point on (−gain in %, params / params of ``independent``).
REFERENCE_POINT = (100.0, 1.1)
MEMO_FORMAT = 1
SIGNATURE_ATTR = "l2bg_search"
#: Testing hook: seconds every trial sleeps (while holding its lease) before it runs.
DELAY_ENV = "L2BG_SEARCH_TRIAL_DELAY"


# =============================================================================================
# Search spaces
# =============================================================================================


@dataclass(frozen=True)
class SearchSpace:
    """Which parts of a grow sequence are searched, over the tasks ``tasks`` (benchmark order).

    Parameter names (stable, so a study can be resumed and inspected in optuna-dashboard):
    ``delta`` (shared-delta, order), ``delta_<task>`` (per-task-delta, bind), ``bind_<task>``
    (bind: a categorical over the earlier tasks that are allowed targets; omitted when only one
    is possible), ``key_<task>`` (order: random keys in [0, 1], the order is their argsort).
    """

    mode: str
    tasks: tuple[str, ...]
    bind_targets: tuple[str, ...] | None = None
    delta_set: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.mode not in SPACES:
            raise L2BGError(f"unknown search space {self.mode!r}; use one of {', '.join(SPACES)}")
        if len(self.tasks) < 2:
            raise L2BGError(f"a grow-sequence search needs at least 2 tasks, got "
                            f"{len(self.tasks)}; raise --tasks")
        if self.bind_targets is not None:
            unknown = [b for b in self.bind_targets if b not in self.tasks]
            if unknown or not self.bind_targets:
                raise L2BGError(f"--bind-targets {list(self.bind_targets)} must name tasks of "
                                f"the benchmark: {', '.join(self.tasks)}")
        if self.delta_set is not None:
            bad = [d for d in self.delta_set if not (isinstance(d, (int, float))
                                                     and 0 <= d <= 1)]
            if bad or not self.delta_set:
                raise L2BGError(f"--delta-set values must be in [0, 1], got "
                                f"{list(self.delta_set)}")
            object.__setattr__(self, "delta_set", tuple(sorted({float(d)
                                                                for d in self.delta_set})))

    # ------------------------------------------------------------------ parameters
    def _delta_names(self) -> list[str]:
        if self.mode in ("shared-delta", "order"):
            return ["delta"]
        return [f"delta_{t}" for t in self.tasks[1:]]

    def bind_choices(self, index: int) -> list[str]:
        """Allowed bind targets of the task at benchmark position ``index`` (bind mode): the
        earlier tasks, restricted to ``bind_targets`` (all earlier tasks if none is allowed)."""
        earlier = list(self.tasks[:index])
        if self.bind_targets is None:
            return earlier
        allowed = [t for t in earlier if t in self.bind_targets]
        return allowed or earlier

    def distributions(self) -> dict[str, Any]:
        """Optuna distribution of every parameter, by name."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution

        delta = (CategoricalDistribution(list(self.delta_set)) if self.delta_set is not None
                 else FloatDistribution(0.0, 1.0, step=DELTA_STEP))
        out: dict[str, Any] = {}
        if self.mode == "order":
            for t in self.tasks:
                out[f"key_{t}"] = FloatDistribution(0.0, 1.0)
        if self.mode == "bind":
            for i, t in enumerate(self.tasks[1:], start=1):
                choices = self.bind_choices(i)
                if len(choices) > 1:
                    out[f"bind_{t}"] = CategoricalDistribution(choices)
        for name in self._delta_names():
            out[name] = delta
        return out

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Ask ``trial`` for every parameter (a static space: the same names every trial)."""
        params: dict[str, Any] = {}
        for name, dist in self.distributions().items():
            if hasattr(dist, "choices"):
                params[name] = trial.suggest_categorical(name, dist.choices)
            else:
                params[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step)
        return params

    def decode(self, params: Mapping[str, Any]) -> tuple[list[int], list[GrowStep]]:
        """Task order (benchmark indices) and one GrowStep per task after the first."""
        from l2bg.learner import GrowStep

        T = len(self.tasks)
        if self.mode == "order":
            order = sorted(range(T), key=lambda j: (float(params[f"key_{self.tasks[j]}"]), j))
        else:
            order = list(range(T))
        steps = []
        for pos in range(1, T):
            j = order[pos]
            name = self.tasks[j]
            raw = params["delta"] if "delta" in params else params[f"delta_{name}"]
            delta = min(1.0, max(0.0, round(float(raw), 10)))
            learned = [self.tasks[k] for k in order[:pos]]
            bind_to = None
            if self.mode == "bind":
                choices = self.bind_choices(j)
                bind_to = params.get(f"bind_{name}", choices[0])
            candidates = None
            if self.bind_targets is not None and bind_to is None:
                candidates = [t for t in learned if t in self.bind_targets] or None
            steps.append(GrowStep(delta=delta, bind_to=bind_to, candidates=candidates))
        return order, steps

    def baseline_params(self, grow_all: bool) -> tuple[dict[str, Any], str]:
        """Parameters of the no-growth (δ = 0) or grow-all (δ = 1) end of the space, and a
        label: ``shared``/``full`` when they are exactly those strategies (bind mode, binding
        to the previous task), else ``delta=0``/``delta=1``."""
        dists = self.distributions()
        params: dict[str, Any] = {}
        exact = self.mode == "bind"
        for name, dist in dists.items():
            if name.startswith("key_"):
                params[name] = self.tasks.index(name[4:]) / (len(self.tasks) - 1)
            elif name.startswith("bind_"):
                task = name[5:]
                prev = self.tasks[self.tasks.index(task) - 1]
                exact = exact and prev in dist.choices
                params[name] = prev if prev in dist.choices else dist.choices[-1]
            elif hasattr(dist, "choices"):
                params[name] = max(dist.choices) if grow_all else min(dist.choices)
                exact = exact and params[name] == (1.0 if grow_all else 0.0)
            else:
                params[name] = 1.0 if grow_all else 0.0
        if self.mode == "bind":
            for i, t in enumerate(self.tasks[1:], start=1):
                if f"bind_{t}" not in dists:
                    exact = exact and self.bind_choices(i) == [self.tasks[i - 1]]
        if exact:
            return params, "full" if grow_all else "shared"
        return params, "delta=1" if grow_all else "delta=0"

    def diagonal_params(self, delta: float) -> dict[str, Any]:
        """The same grow coefficient for every task (a point of the paper's shared-δ space),
        snapped to the δ grid or set; bind targets and order keys are left to the sampler."""
        dists = self.distributions()
        out: dict[str, Any] = {}
        for name in self._delta_names():
            dist = dists[name]
            if hasattr(dist, "choices"):
                out[name] = min(dist.choices, key=lambda c: (abs(c - delta), -c))
            else:
                out[name] = round(round(delta / DELTA_STEP) * DELTA_STEP, 10)
        return out

    def signature(self) -> dict[str, Any]:
        return {"space": self.mode, "tasks": list(self.tasks),
                "bind_targets": None if self.bind_targets is None else list(self.bind_targets),
                "delta_set": None if self.delta_set is None else list(self.delta_set),
                "params": sorted(self.distributions())}


# =============================================================================================
# Worker identity and file locks
# =============================================================================================


def _proc_start(pid: int) -> str | None:
    """Start time (clock ticks since boot) of a process, None where /proc is missing; 'Z' for
    a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return "Z" if fields[0] in ("Z", "X") else fields[19]


_WORKER_ID: str | None = None


def worker_id() -> str:
    """``host:pid:start`` of this process (start = /proc start ticks, tells reused pids apart)."""
    global _WORKER_ID
    pid = os.getpid()
    if _WORKER_ID is None or _WORKER_ID.split(":")[-2] != str(pid):
        _WORKER_ID = f"{socket.gethostname()}:{pid}:{_proc_start(pid) or '0'}"
    return _WORKER_ID


def worker_dead(worker: str | None) -> bool:
    """True when ``worker`` ran on this host and its process is gone; False when it is alive or
    on another host (there, only its lease can tell)."""
    if not worker or worker.count(":") < 2:
        return False
    host, pid_s, start = worker.rsplit(":", 2)
    if host != socket.gethostname() or not pid_s.isdigit():
        return False
    pid = int(pid_s)
    now = _proc_start(pid)
    if now is not None:
        return now == "Z" or (start != "0" and now != start)
    if os.path.isdir("/proc"):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class FileLocks:
    """Advisory lock files (``O_CREAT | O_EXCL``) for work that several workers may start at
    once (training an independent net or a memo node). A lock whose holder died on this host, or
    that was not refreshed for ``lease_s`` seconds, is broken. Breaking a live lock by a rare race
    only duplicates work: every result is written atomically and is the same either way."""

    def __init__(self, lease_s: float = 60.0, poll_s: float = 0.1) -> None:
        self.lease_s = float(lease_s)
        self.poll_s = poll_s
        self._held: set[Path] = set()
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None
        self.waits = 0

    @contextmanager
    def hold(self, path: Path) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        waited = False
        while True:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._stale(path):
                    self._break(path)
                    continue
                waited = True
                time.sleep(self.poll_s)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps({"worker": worker_id(), "time": time.time()}))
            break
        if waited:
            self.waits += 1
        with self._mutex:
            self._held.add(path)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._refresh, daemon=True,
                                                name="l2bg-lock-refresh")
                self._thread.start()
        try:
            yield
        finally:
            with self._mutex:
                self._held.discard(path)
            path.unlink(missing_ok=True)

    def _stale(self, path: Path) -> bool:
        try:
            age = time.time() - path.stat().st_mtime
            owner = json.loads(path.read_text() or "{}").get("worker")
        except (OSError, ValueError):
            return False
        return worker_dead(owner) or age > self.lease_s

    @staticmethod
    def _break(path: Path) -> None:
        tmp = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(path, tmp)
            tmp.unlink(missing_ok=True)
        except FileNotFoundError:
            pass

    def _refresh(self) -> None:
        while True:
            time.sleep(max(0.5, self.lease_s / 4))
            with self._mutex:
                held = list(self._held)
            if not held:
                return
            for p in held:
                try:
                    os.utime(p)
                except OSError:
                    pass


# =============================================================================================
# Memoised grow-sequence runner
# =============================================================================================


def _sha(obj: Any, n: int = 20) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


@dataclass(frozen=True)
class Decision:
    """The discrete decision a grow step maps to: bind ``task`` to ``bind_to`` and grow ``slots``
    (template slot indices, sorted). Different δ with the same decision give the same net."""

    task: str
    bind_to: str | None
    slots: tuple[int, ...]

    def to_json(self) -> list[Any]:
        return [self.task, self.bind_to, list(self.slots)]


@dataclass
class Outcome:
    """One evaluated grow sequence: its record (as :meth:`l2bg.learner.Learner.run` writes it,
    plus ``order``, ``decisions`` and ``memo``), its decisions, and where its JointNet lies."""

    record: dict[str, Any]
    decisions: list[Decision]
    order: list[int]
    key: str
    net_dir: Path | None
    stats: dict[str, Any]


@dataclass
class _State:
    net: JointNet
    R_val: list[list[float | None]]
    R_test: list[list[float | None]]
    records: list[dict[str, Any]]


class _Timer:
    def __init__(self, timings: dict[str, float], key: str) -> None:
        self.timings, self.key = timings, key

    def __enter__(self) -> None:
        self.t = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.timings[self.key] = self.timings.get(self.key, 0.0) + time.perf_counter() - self.t


class _Store:
    """Memo nodes and conflict scores, on disk under ``root`` or in memory (``root=None``)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._meta: dict[str, dict[str, Any]] = {}
        self._nets: dict[str, JointNet] = {}
        self._scores: dict[str, Any] = {}

    def node_dir(self, key: str) -> Path | None:
        return None if self.root is None else self.root / "nodes" / key

    def exists(self, key: str) -> bool:
        if key in self._meta:
            return True
        d = self.node_dir(key)
        return d is not None and (d / "node.json").is_file()

    def read_meta(self, key: str) -> dict[str, Any]:
        if key not in self._meta:
            self._meta[key] = json.loads((self.node_dir(key) / "node.json").read_text())
        return self._meta[key]

    def load_net(self, key: str, device: Any) -> JointNet:
        from l2bg.jointnet import JointNet

        if self.root is None:
            return copy.deepcopy(self._nets[key])
        return JointNet.load(self.node_dir(key), map_location=device)

    def save(self, key: str, meta: dict[str, Any], net: JointNet) -> None:
        meta = json.loads(json.dumps(meta, allow_nan=False))  # a snapshot, not live lists
        if self.root is None:
            self._nets[key] = copy.deepcopy(net)
            self._meta[key] = meta
            return
        final = self.node_dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{key}."))
        try:
            net.save(tmp)
            (tmp / "node.json").write_text(json.dumps(meta, allow_nan=False))
            try:
                os.rename(tmp, final)
            except OSError:
                pass  # another worker stored the same node first; both are the same
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._meta[key] = meta

    def read_scores(self, name: str) -> Any:
        if name in self._scores or self.root is None:
            return self._scores.get(name)
        p = self.root / "scores" / f"{name}.json"
        if p.is_file():
            self._scores[name] = json.loads(p.read_text())
        return self._scores.get(name)

    def write_scores(self, name: str, obj: Any) -> None:
        self._scores[name] = obj
        if self.root is not None:
            _atomic_text(self.root / "scores" / f"{name}.json", json.dumps(obj))


def _atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class MemoRunner:
    """Runs grow sequences over ``tasks`` with decision memoisation (see the module docstring).

    For the benchmark order, ``run(None, steps)`` gives the same decisions, accuracies, gain and
    parameters as ``Learner.run("l2bg", sequence=steps)`` with the same settings; independent
    nets are keyed by a task's benchmark index, so a task keeps its baseline in any order.
    ``memo_dir=None`` keeps nodes in memory (one process); a directory shares them between
    trials, workers and machines (``<memo_dir>/memo/<context>/``, one context per data,
    template, training recipe, seed and RSA sample count).
    """

    def __init__(self, tasks: Sequence[Any], template: Template, config: TrainConfig, *,
                 benchmark: str = "custom", seed: int = 0, device: Any = "cpu",
                 cache: IndependentCache | None = None, memo_dir: str | os.PathLike | None = None,
                 rsa_samples: int | None = None, rsa_backend: str = "auto",
                 locks: FileLocks | None = None) -> None:
        from l2bg.data import task_fingerprint
        from l2bg.learner import Learner

        # the benchmark-order Learner validates the stream and holds the shared settings
        base = Learner(tasks, template, config, benchmark=benchmark, seed=seed, device=device,
                       cache=cache, rsa_samples=rsa_samples, rsa_backend=rsa_backend)
        names = [t.name for t in base.tasks]
        self.tasks, self.template, self.config = base.tasks, template, config
        self.benchmark, self.seed, self.device = benchmark, seed, base.device
        self.cache, self.rsa_samples, self.rsa_backend = base.cache, rsa_samples, rsa_backend
        self.locks = locks if locks is not None else FileLocks()
        self.fingerprints = [task_fingerprint(t) for t in self.tasks]
        self.context = _sha({"format": MEMO_FORMAT, "benchmark": benchmark,
                             "tasks": list(zip(names, self.fingerprints, strict=True)),
                             "seed": seed, "template": template.to_dict(),
                             "train": config.to_dict(), "rsa_samples": rsa_samples,
                             "rsa_method": "spearman"})
        root = Path(memo_dir) / "memo" / self.context if memo_dir is not None else None
        self.store = _Store(root)
        self._indeps: dict[int, IndependentNet] = {}
        self._learners: dict[tuple[int, ...], Learner] = {tuple(range(len(names))): base}
        self.last_rsa_backend: str | None = None

    # ------------------------------------------------------------------ keys
    def node_key(self, decisions: Sequence[Decision]) -> str:
        return _sha([self.context, [d.to_json() for d in decisions]])

    def _indep_key(self, index: int) -> str:
        from l2bg.cache import IndependentCache, task_seed

        tseed = task_seed(self.seed, index)
        return IndependentCache.key(self.benchmark, self.fingerprints[index], tseed,
                                    self.template, self.config.replace(seed=tseed))

    # ------------------------------------------------------------------ shared pieces
    def independent(self, index: int, stats: dict[str, Any] | None = None) -> IndependentNet:
        """The independent net of benchmark task ``index`` (trained once per cache dir)."""
        if index in self._indeps:
            return self._indeps[index]
        misses = self.cache.misses
        root = self.cache.root
        lock = (self.locks.hold(root / "independent" / f".{self._indep_key(index)}.lock")
                if root is not None else _nullcontext())
        with lock:
            indep = self.cache.get_or_train(self.benchmark, self.tasks[index], index, self.seed,
                                            self.template, self.config, self.device)
        if stats is not None:
            stats["indep_trained"] += self.cache.misses - misses
        self._indeps[index] = indep
        return indep

    def learner(self, order: Sequence[int]) -> Learner:
        """A :class:`Learner` over the tasks in ``order`` (its conflict scoring and record
        summary are the ones every run uses)."""
        from l2bg.learner import Learner

        key = tuple(order)
        if key not in self._learners:
            self._learners[key] = Learner(
                [self.tasks[j] for j in order], self.template, self.config,
                benchmark=self.benchmark, seed=self.seed, device=self.device, cache=self.cache,
                rsa_samples=self.rsa_samples, rsa_backend=self.rsa_backend, quiet=True)
        return self._learners[key]

    def _scores(self, key: str, pos: int, order: list[int], candidates: list[str],
                state_fn: Any, stats: dict[str, Any], timings: dict[str, float]
                ) -> dict[str, dict[str, Any]]:
        """Conflict scores of the task at ``pos`` against ``candidates`` in the JointNet of node
        ``key``: computed once (activations of both nets, RSA) and kept with the node."""
        task = self.tasks[order[pos]]
        name = f"{key}-{task.name}-{_sha(candidates, 10)}"
        found = self.store.read_scores(name)
        if found is not None:
            stats["scores_hits"] += 1
            return found
        stats["scores_misses"] += 1
        with _Timer(timings, "independent"):
            indep = self.independent(order[pos], stats)
        state = state_fn()
        learner = self.learner(order)
        out = learner.score_candidates(state.net, pos, indep, candidates, timings)
        self.last_rsa_backend = learner.last_rsa_backend
        out = json.loads(json.dumps(out))
        self.store.write_scores(name, out)
        return out

    def decide(self, pos: int, order: list[int], step: GrowStep, key: str, learned: list[str],
               state_fn: Any, stats: dict[str, Any], timings: dict[str, float]
               ) -> tuple[Decision, dict[str, Any]]:
        """The decision of the task at position ``pos`` (as ``Learner`` takes it for l2bg)."""
        from l2bg import conflict
        from l2bg.learner import bind_candidates, check_forced_bind

        name = self.tasks[order[pos]].name
        check_forced_bind(name, step, learned)
        if step.bind_to is not None and step.slots is not None:
            slots = sorted({self.template.slot_index(s) for s in step.slots})
            return Decision(name, step.bind_to, tuple(slots)), {}
        candidates = bind_candidates(step, learned)
        scores = self._scores(key, pos, order, candidates, state_fn, stats, timings)
        b = step.bind_to or conflict.choose_bind({c: scores[c]["score"] for c in candidates})
        if step.slots is not None:
            slots = sorted({self.template.slot_index(s) for s in step.slots})
        else:
            expandable = self.template.expandable_slots
            slots = [expandable[p] for p in conflict.nucleus(scores[b]["layers"], step.delta)]
        return Decision(name, b, tuple(slots)), scores

    # ------------------------------------------------------------------ states
    def _evaluate_row(self, net: JointNet, order: list[int], pos: int
                      ) -> tuple[list[float | None], list[float | None]]:
        from l2bg.training import evaluate_all

        T = len(order)
        learned = [self.tasks[j] for j in order[:pos + 1]]
        val = evaluate_all(net, {t.name: (t.x_val, t.y_val) for t in learned})
        test = evaluate_all(net, {t.name: (t.x_test, t.y_test) for t in learned})
        pad: list[float | None] = [None] * (T - pos - 1)
        return [val[t.name] for t in learned] + pad, [test[t.name] for t in learned] + pad

    def _root_state(self, order: list[int], stats: dict[str, Any],
                    timings: dict[str, float]) -> _State:
        from l2bg.jointnet import JointNet, copy_task_net

        task = self.tasks[order[0]]
        with _Timer(timings, "independent"):
            indep = self.independent(order[0], stats)
        net = JointNet(self.template).to(self.device)
        copy_task_net(indep.net, indep.task, net, as_task=task.name)
        rec = {"name": task.name, "bind_to": None, "grown_slots": [], "delta": None,
               "conflict": {}, "independent_val_acc": indep.val_acc,
               "independent_test_acc": indep.test_acc, "independent_cached": indep.cached}
        with _Timer(timings, "evaluation"):
            row_v, row_t = self._evaluate_row(net, order, 0)
        rec["val_acc"], rec["test_acc"] = row_v[0], row_t[0]
        rec["params"] = net.num_parameters()
        return _State(net, [row_v], [row_t], [rec])

    def _load_state(self, key: str, depth: int, order: list[int], stats: dict[str, Any],
                    timings: dict[str, float]) -> _State:
        if depth == 1 and not self.store.exists(key):
            return self._root_state(order, stats, timings)
        stats["node_loads"] += 1
        with _Timer(timings, "memo_load"):
            meta = self.store.read_meta(key)
            net = self.store.load_net(key, self.device)
        return _State(net, [list(r) for r in meta["R_val"]], [list(r) for r in meta["R_test"]],
                      copy.deepcopy(meta["records"]))

    def _train(self, state: _State, pos: int, order: list[int], d: Decision, step: GrowStep,
               scores: dict[str, Any], stats: dict[str, Any], timings: dict[str, float]) -> None:
        import torch

        from l2bg.cache import task_seed
        from l2bg.training import fit

        task = self.tasks[order[pos]]
        with _Timer(timings, "independent"):
            indep = self.independent(order[pos], stats)
        rec: dict[str, Any] = {"name": task.name, "bind_to": None, "grown_slots": [],
                               "delta": None, "conflict": scores,
                               "independent_val_acc": indep.val_acc,
                               "independent_test_acc": indep.test_acc,
                               "independent_cached": indep.cached}
        net = state.net
        torch.manual_seed(task_seed(self.seed, pos) + 1)
        net.bind(task.name, d.bind_to, task.num_classes)
        net.grow(task.name, list(d.slots), init="copy")
        rec["bind_to"], rec["grown_slots"] = d.bind_to, net.grown_slots(task.name)
        rec["delta"] = step.delta
        cfg = self.config.replace(seed=task_seed(self.seed, pos) + 1)
        with _Timer(timings, "training"):
            rec["train_loss"] = fit(net, task.name, task.x_train, task.y_train, cfg)
        with _Timer(timings, "evaluation"):
            row_v, row_t = self._evaluate_row(net, order, pos)
        state.R_val.append(row_v)
        state.R_test.append(row_t)
        rec["val_acc"], rec["test_acc"] = row_v[pos], row_t[pos]
        rec["params"] = net.num_parameters()
        state.records.append(rec)

    def _summary(self, state: _State, order: list[int], timings: dict[str, float],
                 wall: float) -> dict[str, Any]:
        learner = self.learner(order)
        learner.last_rsa_backend = self.last_rsa_backend
        indeps = [self.independent(j) for j in order]
        return learner._summarise("search", state.records, state.R_val, state.R_test, indeps,
                                  state.net, timings, wall)

    # ------------------------------------------------------------------ a run
    def run(self, order: Sequence[int] | None = None,
            steps: Sequence[GrowStep] | None = None) -> Outcome:
        """Evaluate the grow sequence ``steps`` (one per task after the first) over the tasks in
        ``order`` (benchmark indices; default the benchmark order), reusing memo nodes."""
        from l2bg import conflict

        T = len(self.tasks)
        order = list(range(T)) if order is None else [int(j) for j in order]
        if sorted(order) != list(range(T)):
            raise L2BGError(f"order must be a permutation of 0..{T - 1}, got {order}")
        steps = list(steps or [])
        if len(steps) != T - 1:
            raise L2BGError(f"a grow sequence needs one step per task after the first "
                            f"({T - 1}), got {len(steps)}")
        for s in steps:
            if s.slots is None:
                if s.delta is None:
                    raise L2BGError("every grow step needs a grow coefficient delta or slots")
                conflict.check_delta(s.delta)
        start = time.perf_counter()
        stats: dict[str, Any] = dict(memo_hits=0, memo_misses=0, prefix_len=0, full_hit=False,
                                     scores_hits=0, scores_misses=0,
                                     indep_trained=0, node_loads=0, lock_waits=0)
        waits0 = self.locks.waits
        timings: dict[str, float] = {}
        names = [self.tasks[j].name for j in order]
        decisions = [Decision(names[0], None, ())]
        key = self.node_key(decisions)
        state: _State | None = None
        leading = True

        def state_fn() -> _State:
            nonlocal state
            if state is None:
                state = self._load_state(key, len(decisions), order, stats, timings)
            return state

        for pos in range(1, T):
            step = steps[pos - 1]
            with _Timer(timings, "decide"):
                d, scores = self.decide(pos, order, step, key, names[:pos], state_fn, stats,
                                        timings)
            child_decisions = [*decisions, d]
            child = self.node_key(child_decisions)
            hit = self.store.exists(child)
            if not hit:
                node_dir = self.store.node_dir(child)
                lock = (self.locks.hold(node_dir.with_name(f".{child}.lock"))
                        if node_dir is not None else _nullcontext())
                with lock:
                    hit = self.store.exists(child)
                    if not hit:
                        st = state_fn()
                        t0 = time.perf_counter()
                        self._train(st, pos, order, d, step, scores, stats, timings)
                        meta: dict[str, Any] = {
                            "format": MEMO_FORMAT, "context": self.context,
                            "decisions": [x.to_json() for x in child_decisions],
                            "R_val": st.R_val, "R_test": st.R_test, "records": st.records,
                            "step_s": time.perf_counter() - t0, "worker": worker_id(),
                            "created": time.time()}
                        if pos == T - 1:
                            meta["record"] = self._summary(st, order, {}, 0.0)
                        self.store.save(child, meta, st.net)
                        stats["memo_misses"] += 1
            if hit:
                stats["memo_hits"] += 1
                state = None
            leading = leading and hit
            stats["prefix_len"] += int(leading)
            decisions, key = child_decisions, child
        if T == 1:
            st = state_fn()
            record = self._summary(st, order, {}, 0.0)
        else:
            record = copy.deepcopy(self.store.read_meta(key)["record"])
        stats["full_hit"] = T > 1 and stats["memo_hits"] == T - 1
        stats["lock_waits"] = self.locks.waits - waits0
        wall = time.perf_counter() - start
        for pos, rec in enumerate(record["tasks"]):
            rec["delta"] = None if pos == 0 else steps[pos - 1].delta
        for pos, g in enumerate(record["grow_sequence"]):
            g["delta"] = None if pos == 0 else steps[pos - 1].delta
        record["timings"] = {k: round(v, 4) for k, v in sorted(timings.items())}
        record["wall_time_s"] = wall
        record["cache"] = {"hits": self.cache.hits, "misses": self.cache.misses}
        record["order"] = names
        record["decisions"] = [x.to_json() for x in decisions]
        record["memo"] = dict(stats)
        return Outcome(record=record, decisions=decisions, order=order, key=key,
                       net_dir=self.store.node_dir(key), stats=stats)


@contextmanager
def _nullcontext() -> Iterator[None]:
    yield


# =============================================================================================
# Storage, samplers, study
# =============================================================================================


@dataclass
class SearchConfig:
    """Everything ``l2bg search`` takes (see ``l2bg search --help`` for each field)."""

    benchmark: str
    trials: int
    data_root: str | None = None
    tasks: int | None = None
    epochs: int | None = None
    space: str = "shared-delta"
    objective: str = "gain"
    sampler: str = "gp"
    sampler_seed: int | None = None
    startup_trials: int | None = None
    max_params: int | None = None
    bind_targets: list[str] | None = None
    delta_set: list[float] | None = None
    enqueue_baselines: bool = False
    initial: str | None = None
    baselines: bool = True
    storage: str | None = None
    study_name: str | None = None
    workers: int = 1
    threads: int | None = None
    cache_dir: str | None = None
    seed: int = 0
    rsa_samples: int | None = None
    device: str = "auto"
    out: str | None = None
    lease_s: float = 60.0
    max_retry: int = 3
    quiet: bool = False

    def check(self) -> None:
        if self.benchmark not in BENCHMARK_NAMES:
            raise L2BGError(f"unknown benchmark {self.benchmark!r}; use one of "
                            f"{', '.join(BENCHMARK_NAMES)}")
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise L2BGError(f"--trials must be a positive number of trials to complete, got "
                            f"{self.trials}")
        for name, choices in (("space", SPACES), ("sampler", SAMPLERS),
                              ("objective", OBJECTIVES)):
            if getattr(self, name) not in choices:
                raise L2BGError(f"--{name} {getattr(self, name)!r} is not one of "
                                f"{', '.join(choices)}")
        if self.workers < 1:
            raise L2BGError(f"--workers must be >= 1, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise L2BGError(f"--threads must be >= 1, got {self.threads}")
        if self.tasks is not None and self.tasks < 2:
            raise L2BGError(f"a search needs --tasks >= 2, got {self.tasks}")
        if self.epochs is not None and self.epochs < 1:
            raise L2BGError(f"--epochs must be >= 1, got {self.epochs}")
        if self.max_params is not None and self.max_params < 1:
            raise L2BGError(f"--max-params must be a positive parameter count, got "
                            f"{self.max_params}")
        if self.startup_trials is not None and self.startup_trials < 0:
            raise L2BGError(f"--startup-trials must be >= 0, got {self.startup_trials}")
        if self.lease_s <= 0:
            raise L2BGError(f"--lease-seconds must be positive, got {self.lease_s}")
        if self.initial not in (None, "random", "diagonal"):
            raise L2BGError(f"--initial {self.initial!r} is not one of random, diagonal")
        if self.study_name is not None and not self.study_name.strip():
            raise L2BGError("--study-name must not be empty")


def default_startup_trials(trials: int) -> int:
    """Random trials before a model-based sampler (gp, tpe) starts modelling: a quarter of the
    budget, between 3 and 10 (Optuna's fixed 10 would make a short study random search)."""
    return min(10, max(3, trials // 4))


def initial_design(sampler: str, initial: str | None, trials: int,
                   startup_trials: int | None = None) -> list[float]:
    """Grow coefficients of the diagonal start-up trials (one δ for every task, enqueued when a
    study is created). ``initial=None`` means diagonal for the model-based samplers (gp, tpe)
    and none for the others (nsga2-paper stays as the paper ran it). The diagonal holds all but
    one of the start-up trials (the last stays random, so the model sees the tasks' δ vary
    independently), from δ = 1 (grow everything) down in equal steps, never δ = 0."""
    if (initial or ("diagonal" if sampler in ("gp", "tpe") else "random")) != "diagonal":
        return []
    startup = default_startup_trials(trials) if startup_trials is None else startup_trials
    k = max(1, min(startup, trials) - 1)
    return [1.0 - j / (k + 1) for j in range(k)]


def nsga2_population(trials: int) -> int:
    """NSGA-II population sized to the budget: about four generations, between 4 and 50."""
    return min(50, max(4, trials // 4))


def make_sampler(name: str, seed: int | None, trials: int,
                 startup_trials: int | None = None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of ``l2bg search --sampler NAME`` for a budget of ``trials``."""
    import optuna

    startup = default_startup_trials(trials) if startup_trials is None else startup_trials
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup,
                                              multivariate=True, constant_liar=True)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed,
                                                 population_size=nsga2_population(trials))
        if name == "nsga2-paper":
            return optuna.samplers.NSGAIISampler(seed=seed)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
    raise L2BGError(f"unknown sampler {name!r}; use one of {', '.join(SAMPLERS)}")


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***``."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = re.sub(r"\(Background on this error at: [^)]*\)", "", text).strip()
    return text[:240]


def _retry_callback(max_retry: int) -> Any:
    """Optuna's RetryHeartbeatStaleTrialCallback (the former RetryFailedTrialCallback), but the
    re-enqueued trial does not inherit the dead worker's lease."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    class _Retry(RetryHeartbeatStaleTrialCallback):
        def __call__(self, study: Any, trial: Any) -> None:
            trial = copy.deepcopy(trial)
            for k in ("worker", "lease_until", "lease_trial"):
                trial.user_attrs.pop(k, None)
            trial.user_attrs["retry_of"] = trial.system_attrs.get("failed_trial", trial.number)
            super().__call__(study, trial)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _Retry(max_retry=max_retry)


def open_storage(url: str, *, lease_s: float = 60.0, max_retry: int = 3) -> Any:
    """An Optuna storage for ``url``: ``journal:FILE`` (JournalStorage + JournalFileBackend),
    ``sqlite:///FILE``, ``postgresql://…`` or ``mysql://…`` (RDBStorage with heartbeats and
    stale-trial retry)."""
    import optuna

    if not isinstance(url, str) or not url.strip():
        raise L2BGError("--storage is empty; give postgresql://…, mysql://…, sqlite:///FILE "
                        "or journal:FILE")
    shown = redact_url(url)
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):]).expanduser()
        if not path.parent.is_dir():
            raise L2BGError(f"journal storage {shown}: directory {path.parent} does not exist; "
                            "create it or point journal: elsewhere")
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except Exception as exc:  # noqa: BLE001 - reported on one line
            raise L2BGError(f"cannot open journal storage {shown}: {_one_line(exc)}") from exc
    scheme = url.split("://", 1)[0] if "://" in url else ""
    base = scheme.split("+", 1)[0]
    if base not in ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql"):
        raise L2BGError(f"unsupported storage URL {shown!r}: use postgresql://USER:PASS@HOST/DB, "
                        "mysql://USER:PASS@HOST/DB, sqlite:///FILE.db or journal:FILE")
    if base == "postgres":
        raise L2BGError(f"storage URL {shown!r}: SQLAlchemy needs the scheme postgresql://, "
                        "not postgres://")
    interval = max(1, int(lease_s // 6))
    grace = max(2 * interval, int(math.ceil(lease_s)))
    kwargs: dict[str, Any] = {} if base == "sqlite" else {"pool_pre_ping": True}
    try:
        for attempt in range(5):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return optuna.storages.RDBStorage(
                        url, engine_kwargs=kwargs, heartbeat_interval=interval,
                        grace_period=grace, heartbeat_stale_trial_callback=_retry_callback(
                            max_retry))
            except ImportError:
                raise
            except Exception as exc:  # noqa: BLE001
                # workers starting together race to create Optuna's tables; a retry sees them
                race = any(w in str(exc).lower() for w in ("already exists", "duplicate",
                                                           "uniqueviolation", "integrity"))
                if attempt == 4 or not race:
                    raise
                time.sleep(0.3 * (attempt + 1) + 0.2 * (os.getpid() % 5))
        raise AssertionError("unreachable")
    except ImportError as exc:
        hint = {"postgresql": "pip install 'psycopg[binary]' (or use postgresql+psycopg2://)",
                "mysql": "pip install mysqlclient (or use mysql+pymysql:// with PyMySQL)"}.get(
                    base, "install the database driver SQLAlchemy needs for it")
        raise L2BGError(f"cannot open storage {shown}: its database driver is not installed; "
                        f"{hint}") from exc
    except Exception as exc:  # noqa: BLE001 - any driver/connection error, one line
        raise L2BGError(f"cannot open storage {shown}: {_one_line(exc)}; check the URL and that "
                        "the database server is up") from exc


def _heartbeat_enabled(storage: Any) -> bool:
    try:
        from optuna.storages._heartbeat import is_heartbeat_enabled
    except ImportError:  # pragma: no cover
        return False
    return is_heartbeat_enabled(storage)


class _Lease:
    """Records this worker and a lease on a running trial, refreshed every lease/4 seconds (and
    an Optuna heartbeat where the storage has them) until stopped."""

    def __init__(self, trial: Any, storage: Any, lease_s: float) -> None:
        self.trial, self.storage, self.lease_s = trial, storage, lease_s
        self.heartbeat = _heartbeat_enabled(storage)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="l2bg-lease")

    def _beat(self) -> None:
        self.trial.set_user_attr("lease_until", time.time() + self.lease_s)
        if self.heartbeat:
            self.storage.record_heartbeat(self.trial._trial_id)

    def start(self) -> _Lease:
        self.trial.set_user_attr("worker", worker_id())
        self.trial.set_user_attr("lease_trial", self.trial.number)
        self._beat()
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(max(0.2, self.lease_s / 4)):
            try:
                self._beat()
            except Exception:  # noqa: BLE001 - a missed refresh is retried next period
                pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def _trial_by_number(study: Any, number: int) -> Any:
    for t in study.get_trials(deepcopy=True):
        if t.number == number:
            return t
    raise KeyError(number)


def reap_stale_trials(study: Any, lease_s: float, max_retry: int = 3) -> list[int]:
    """Fail every RUNNING trial whose worker on this host is gone or whose lease expired (or,
    without a lease of its own, that started more than ``lease_s`` ago) and re-enqueue its
    parameters. Returns the numbers of the trials failed here. Safe to run from many workers:
    only the one whose FAIL lands re-enqueues."""
    import optuna
    from optuna.trial import TrialState

    if _heartbeat_enabled(study._storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)
    now = time.time()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        own = t.user_attrs.get("lease_trial") == t.number
        until = t.user_attrs.get("lease_until") if own else None
        worker = t.user_attrs.get("worker") if own else None
        started = t.datetime_start.timestamp() if t.datetime_start else now
        stale = (worker_dead(worker) or (until is not None and until < now)
                 or (until is None and now - started > lease_s))
        if not stale:
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except Exception:  # noqa: BLE001 - finished meanwhile, or failed by another worker
            continue
        failed.append(t.number)
        _retry_callback(max_retry)(study, _trial_by_number(study, t.number))
    return failed


def _counts(study: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


# ------------------------------------------------------------------ study set-up


@dataclass
class _Setup:
    """What a worker needs: the benchmark, template, training recipe, space and runner."""

    cfg: SearchConfig
    bench: Any
    template: Template
    train: TrainConfig
    space: SearchSpace
    device: Any
    cache_dir: Path
    out: Path
    storage_url: str
    study_name: str
    runner: MemoRunner | None = None
    locks: FileLocks = field(default_factory=FileLocks)

    def make_runner(self) -> MemoRunner:
        from l2bg.cache import IndependentCache

        if self.runner is None:
            self.locks = FileLocks(self.cfg.lease_s)
            self.runner = MemoRunner(
                self.bench.tasks, self.template, self.train, benchmark=self.bench.name,
                seed=self.cfg.seed, device=self.device, cache=IndependentCache(self.cache_dir),
                memo_dir=self.cache_dir, rsa_samples=self.cfg.rsa_samples, locks=self.locks)
        return self.runner

    def signature(self) -> dict[str, Any]:
        runner = self.make_runner()
        sig = {"version": 1, "benchmark": self.bench.name, "objective": self.cfg.objective,
               "epochs": self.train.epochs, "seed": self.cfg.seed,
               "rsa_samples": self.cfg.rsa_samples, "max_params": self.cfg.max_params,
               "context": runner.context, **self.space.signature()}
        return json.loads(json.dumps(sig))


def _resolve_task_names(names: Sequence[str], tasks: Sequence[str], what: str) -> list[str]:
    out = []
    for n in names:
        n = str(n).strip()
        if n in tasks:
            out.append(n)
        elif n.isdigit() and int(n) < len(tasks):
            out.append(tasks[int(n)])
        else:
            raise L2BGError(f"{what} {n!r} is not a task of the benchmark; use a name "
                            f"({', '.join(tasks)}) or an index 0..{len(tasks) - 1}")
    return list(dict.fromkeys(out))


def _setup(cfg: SearchConfig) -> _Setup:
    from l2bg.data import build_benchmark
    from l2bg.templates import template_for
    from l2bg.training import default_config, resolve_device

    cfg.check()
    bench = build_benchmark(cfg.benchmark, num_tasks=cfg.tasks, seed=cfg.seed,
                            data_root=cfg.data_root)
    names = tuple(t.name for t in bench.tasks)
    if len(names) < 2:
        raise L2BGError(f"a grow-sequence search needs at least 2 tasks; {bench.name} has "
                        f"{len(names)}")
    targets = (tuple(_resolve_task_names(cfg.bind_targets, names, "--bind-targets"))
               if cfg.bind_targets else None)
    space = SearchSpace(cfg.space, names, bind_targets=targets,
                        delta_set=tuple(cfg.delta_set) if cfg.delta_set else None)
    template = template_for(bench)
    train = default_config(template.name, epochs=cfg.epochs, seed=cfg.seed)
    T = len(names)
    study_name = cfg.study_name or (f"l2bg-{bench.name}-{T}t-{cfg.space}-{cfg.objective}-"
                                    f"{cfg.sampler}-s{cfg.seed}")
    out = Path(cfg.out) if cfg.out else Path("runs") / f"search-{study_name}"
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
    storage_url = cfg.storage or f"journal:{out / 'study.journal'}"
    return _Setup(cfg=cfg, bench=bench, template=template, train=train, space=space,
                  device=resolve_device(cfg.device), cache_dir=cache_dir, out=out,
                  storage_url=storage_url, study_name=study_name)


def _directions(objective: str) -> list[str]:
    return ["maximize", "minimize"]


def _open_study(setup: _Setup, storage: Any, create: bool) -> Any:
    """Create (or load) the study and check it was made for this search."""
    import optuna

    sig = setup.signature()
    name = setup.study_name
    shown = redact_url(setup.storage_url)
    created = False
    if create:
        try:
            optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            try:
                study = optuna.create_study(storage=storage, study_name=name,
                                            directions=_directions(setup.cfg.objective))
                study.set_user_attr(SIGNATURE_ATTR, sig)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    study.set_metric_names([setup.cfg.objective, "params"])
                created = True
            except optuna.exceptions.DuplicatedStudyError:
                pass
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError as exc:
        raise L2BGError(f"no study {name!r} in {shown}; run the search first or check "
                        "--study-name") from exc
    found = study.user_attrs.get(SIGNATURE_ATTR)
    for _ in range(50):  # another machine may have created it a moment ago
        if found is not None:
            break
        time.sleep(0.1)
        found = optuna.load_study(study_name=name, storage=storage).user_attrs.get(SIGNATURE_ATTR)
    if found is None:
        raise L2BGError(f"study {name!r} in {shown} was not created by l2bg search; choose "
                        "another --study-name")
    if found != sig:
        diffs = [f"{k}: {found.get(k)!r} (study) vs {sig.get(k)!r} (now)"
                 for k in sorted(set(found) | set(sig)) if found.get(k) != sig.get(k)
                 and k != "context"]
        if not diffs:
            diffs = ["data, template, training recipe or seed differ"]
        raise L2BGError(f"study {name!r} in {shown} was created for a different search "
                        f"({'; '.join(diffs[:3])}); rerun with the same options or choose "
                        "another --study-name")
    if created:
        cfg = setup.cfg
        if cfg.enqueue_baselines:
            for grow_all in (False, True):
                params, label = setup.space.baseline_params(grow_all)
                study.enqueue_trial(params, user_attrs={"baseline": label})
        for delta in initial_design(cfg.sampler, cfg.initial, cfg.trials, cfg.startup_trials):
            params = setup.space.diagonal_params(delta)
            if cfg.enqueue_baselines and set(params.values()) <= {0.0, 1.0}:
                continue  # the grow-all / no-growth baseline is already queued
            study.enqueue_trial(params, user_attrs={"initial": f"diagonal delta={delta:.2f}"})
    return study


def _trial_attrs(outcome: Outcome, runner: MemoRunner) -> dict[str, Any]:
    r = outcome.record
    ratio = r["params"] / r["params_independent"] if r["params_independent"] else None
    attrs = {
        "gain": r["gain"], "gain_raw": r["gain_raw"], "avg_val_acc": r["avg_val_acc"],
        "avg_test_acc": r["avg_test_acc"], "bwt": r["bwt"], "fwt": r["fwt"],
        "params": r["params"], "params_independent": r["params_independent"],
        "params_ratio": ratio, "order": r["order"],
        "grow_sequence": r["grow_sequence"], "decisions_key": outcome.key,
        "net_dir": None if outcome.net_dir is None else str(outcome.net_dir),
        "wall_s": round(r["wall_time_s"], 4),
        "independent_val_acc": [t["independent_val_acc"] for t in r["tasks"]],
        "independent_test_acc": [t["independent_test_acc"] for t in r["tasks"]],
    }
    attrs.update({f"memo_{k}" if not k.startswith(("memo", "indep")) else k: v
                  for k, v in outcome.stats.items()})
    return attrs


def _objective_values(cfg: SearchConfig, record: Mapping[str, Any]) -> list[float]:
    first = record["gain"] if cfg.objective == "gain" else record["avg_val_acc"]
    return [float(first), float(record["params"])]


def _register_worker(study: Any) -> int:
    """Record this worker in the study (user attribute ``worker:<host:pid:start>``) and return
    its rank by registration time: the sampler of rank k is seeded with seed + 1000·k, so the
    first worker of a fresh study reproduces a single-process run and later workers (other
    processes, machines or a resumed run) do not repeat its random start-up points."""
    me = f"worker:{worker_id()}"
    study.set_user_attr(me, time.time())
    regs = sorted((v, k) for k, v in study.user_attrs.items() if k.startswith("worker:"))
    return [k for _, k in regs].index(me)


def _work(setup: _Setup, index: int) -> int:
    """One worker: run trials until ``trials`` have completed in total. Returns how many trials
    this worker completed."""
    import optuna
    import torch
    from optuna.trial import TrialState

    cfg = setup.cfg
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // cfg.workers)
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(setup.storage_url, lease_s=cfg.lease_s, max_retry=cfg.max_retry)
    seed = cfg.seed if cfg.sampler_seed is None else cfg.sampler_seed
    rank = _register_worker(optuna.load_study(study_name=setup.study_name, storage=storage))
    sampler = make_sampler(cfg.sampler, seed + 1000 * rank, cfg.trials, cfg.startup_trials)
    study = optuna.load_study(study_name=setup.study_name, storage=storage, sampler=sampler)
    runner = setup.make_runner()
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    done_here = 0
    T = len(setup.space.tasks)
    while True:
        reap_stale_trials(study, cfg.lease_s, cfg.max_retry)
        counts = _counts(study)
        if counts.get("COMPLETE", 0) + counts.get("RUNNING", 0) >= cfg.trials:
            break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = study.ask()
        lease = _Lease(trial, storage, cfg.lease_s).start()
        try:
            sys_attrs = study._storage.get_trial_system_attrs(trial._trial_id)
            ahead = [t for t in study.get_trials(deepcopy=False,
                                                 states=(TrialState.COMPLETE, TrialState.RUNNING))
                     if t.number < trial.number]
            if len(ahead) >= cfg.trials:  # another worker took the last slot first
                trial.set_user_attr("surplus", True)
                fixed = dict(trial.params)
                if fixed or sys_attrs.get("fixed_params"):
                    study.enqueue_trial(sys_attrs.get("fixed_params") or fixed,
                                        user_attrs={k: v for k, v in trial.user_attrs.items()
                                                    if k == "baseline"})
                lease.stop()
                study.tell(trial, state=TrialState.PRUNED)
                break
            if "failed_trial" in sys_attrs:
                trial.set_user_attr("retry_of", sys_attrs["failed_trial"])
            params = setup.space.suggest(trial)
            order, steps = setup.space.decode(params)
            if delay > 0:
                time.sleep(delay)
            outcome = runner.run(order, steps)
            for k, v in _trial_attrs(outcome, runner).items():
                trial.set_user_attr(k, v)
            if cfg.max_params is not None:
                trial.set_constraint("max_params",
                                     float(outcome.record["params"] - cfg.max_params))
            values = _objective_values(cfg, outcome.record)
        except KeyboardInterrupt:
            lease.stop()
            with suppress(Exception):  # give the trial back: fail it and re-enqueue its params
                study.tell(trial, state=TrialState.FAIL)
                _retry_callback(cfg.max_retry)(study, _trial_by_number(study, trial.number))
            raise
        except BaseException:
            lease.stop()
            study.tell(trial, state=TrialState.FAIL)
            raise
        lease.stop()
        study.tell(trial, values)
        done_here += 1
        if not cfg.quiet:
            r, s = outcome.record, outcome.stats
            ratio = r["params"] / r["params_independent"]
            print(f"[w{index}] trial {trial.number}: gain {r['gain']:+.2f}%  params "
                  f"{r['params']:,} ({ratio:.2f}x independent)  val acc "
                  f"{100 * r['avg_val_acc']:.2f}%  memo {s['memo_hits']}/{T - 1} reused  "
                  f"{r['wall_time_s']:.1f}s", flush=True)
    return done_here


def _worker_entry(cfg_dict: dict[str, Any], index: int) -> None:
    """Entry of a ``--workers`` process (spawned)."""
    try:
        setup = _setup(SearchConfig(**cfg_dict))
        _work(setup, index)
    except L2BGError as exc:
        print(f"l2bg: error: [worker {index}] {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def _baselines(setup: _Setup, study: Any) -> None:
    """Store the independent and shared baselines (gain, params, accuracies) as study user
    attributes, for the plot; shared is evaluated through the memo (bind to the previous task,
    grow nothing), so it costs T − 1 trainings once per cache directory."""
    from l2bg.learner import GrowStep

    if "baseline_shared" in study.user_attrs:
        return
    runner = setup.make_runner()
    names = list(setup.space.tasks)
    steps = [GrowStep(bind_to=names[i - 1], slots=[]) for i in range(1, len(names))]
    r = runner.run(None, steps).record
    keep = ("gain", "params", "avg_val_acc", "avg_test_acc", "params_independent")
    indep_val = [t["independent_val_acc"] for t in r["tasks"]]
    indep_test = [t["independent_test_acc"] for t in r["tasks"]]
    study.set_user_attr("baseline_shared", {k: r[k] for k in keep})
    study.set_user_attr("baseline_independent", {
        "gain": 0.0, "params": r["params_independent"],
        "avg_val_acc": sum(indep_val) / len(indep_val),
        "avg_test_acc": sum(indep_test) / len(indep_test),
        "params_independent": r["params_independent"]})


def _write_search_json(setup: _Setup) -> None:
    storage = setup.storage_url
    m = re.match(r"^(sqlite(?:\+\w+)?:///)(.+)$", storage)
    if m and not m.group(2).startswith("/") and m.group(2) != ":memory:":
        storage = f"{m.group(1)}{Path(m.group(2)).resolve()}"  # --report from any directory
    if storage.startswith("journal:"):
        p = Path(storage[len("journal:"):]).resolve()
        try:
            storage = f"journal:{p.relative_to(setup.out.resolve())}"
        except ValueError:
            storage = f"journal:{p}"
    meta = {"format": "l2bg.search", "version": 1, "study_name": setup.study_name,
            "storage": redact_url(storage), "config": asdict(setup.cfg),
            "cache_dir": str(setup.cache_dir)}
    meta["config"]["storage"] = None if setup.cfg.storage is None else redact_url(
        setup.cfg.storage)
    _atomic_text(setup.out / "search.json", json.dumps(meta, indent=2))


def run_search(cfg: SearchConfig) -> dict[str, Any]:
    """Run (or resume) a search until ``cfg.trials`` trials have completed; write the outputs
    and return the report summary (see :func:`write_report`)."""
    import multiprocessing

    import optuna

    setup = _setup(cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if cfg.storage is not None:  # a bad URL fails before anything is created
        storage = open_storage(setup.storage_url, lease_s=cfg.lease_s, max_retry=cfg.max_retry)
    setup.out.mkdir(parents=True, exist_ok=True)
    setup.cache_dir.mkdir(parents=True, exist_ok=True)
    if cfg.storage is None:
        storage = open_storage(setup.storage_url, lease_s=cfg.lease_s, max_retry=cfg.max_retry)
    study = _open_study(setup, storage, create=True)
    _write_search_json(setup)
    if cfg.workers == 1:
        _work(setup, 0)
    else:
        import l2bg.search as mod  # the importable module, also when run as __main__

        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=mod._worker_entry, args=(asdict(cfg), i),
                             name=f"l2bg-search-{i}") for i in range(cfg.workers)]
        for p in procs:
            p.start()
        try:
            for p in procs:
                p.join()
        except KeyboardInterrupt:
            for p in procs:
                p.join()
            raise
        bad = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode != 0]
        if bad:
            raise L2BGError(f"search worker {bad[0][0]} exited with code {bad[0][1]} (message "
                            "above); fix it and rerun the same command to resume")
    study = optuna.load_study(study_name=setup.study_name, storage=storage)
    if cfg.baselines:
        import torch

        torch.set_num_threads(cfg.threads or (os.cpu_count() or 1))
        _baselines(setup, study)
    summary = write_report(study, setup.out, storage_label=redact_url(setup.storage_url))
    if not cfg.quiet:
        print(_summary_text(summary, setup.out))
    return summary


# =============================================================================================
# Report: Pareto front, hypervolume, files and plots
# =============================================================================================


def hypervolume_2d(points: Sequence[Sequence[float]],
                   reference: Sequence[float] = REFERENCE_POINT) -> float:
    """Area dominated by ``points`` (both coordinates minimised) up to ``reference``; points not
    strictly better than the reference in both coordinates add nothing."""
    rx, ry = reference
    pts = sorted((float(x), float(y)) for x, y in points
                 if math.isfinite(x) and math.isfinite(y) and x < rx and y < ry)
    hv, best_y = 0.0, ry
    for x, y in pts:
        if y < best_y:
            hv += (rx - x) * (best_y - y)
            best_y = y
    return hv


def _hv_point(t: Any) -> tuple[float, float] | None:
    gain = t.user_attrs.get("gain")
    ratio = t.user_attrs.get("params_ratio")
    if gain is None or ratio is None:
        return None
    return (-float(gain), float(ratio))


def _feasible(t: Any) -> bool:
    return all(v <= 0 for v in t.constraints.values())


def pareto_trials(trials: Sequence[Any]) -> list[Any]:
    """Non-dominated trials (first value maximised, second minimised) among ``trials``."""
    pts = [(t, float(t.values[0]), float(t.values[1])) for t in trials]
    front = []
    for t, a, p in pts:
        dominated = any((a2 >= a and p2 <= p) and (a2 > a or p2 < p) for _, a2, p2 in pts)
        if not dominated:
            front.append(t)
    return sorted(front, key=lambda t: (t.values[1], -t.values[0], t.number))


def _complete_order(t: Any) -> tuple[float, int]:
    return (t.datetime_complete.timestamp() if t.datetime_complete else float("inf"), t.number)


def write_report(study: Any, out: str | os.PathLike, storage_label: str = "") -> dict[str, Any]:
    """Write pareto.json, trials.csv, pareto.png and hypervolume.png for ``study`` into ``out``
    and return the pareto.json content."""
    from optuna.trial import TrialState

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sig = study.user_attrs.get(SIGNATURE_ATTR, {})
    objective = sig.get("objective", "gain")
    trials = study.get_trials(deepcopy=False)
    complete = sorted([t for t in trials if t.state == TrialState.COMPLETE], key=_complete_order)
    feasible = [t for t in complete if _feasible(t)]
    front = pareto_trials(feasible)
    hist, pts = [], []
    for k, t in enumerate(complete, start=1):
        p = _hv_point(t)
        if p is not None and _feasible(t):
            pts.append(p)
        hist.append({"trials": k, "number": t.number, "hypervolume": hypervolume_2d(pts)})
    groups: dict[str, dict[str, Any]] = {}
    for t in front:
        key = t.user_attrs.get("decisions_key", str(t.number))
        if key in groups:
            groups[key]["trials"].append(t.number)
            continue
        u = t.user_attrs
        groups[key] = {
            "number": t.number, "trials": [t.number], "values": list(t.values),
            **{k: u.get(k) for k in ("gain", "gain_raw", "params", "params_ratio",
                                     "avg_val_acc", "avg_test_acc", "bwt", "fwt", "order",
                                     "grow_sequence", "net_dir")},
            "search_params": dict(t.params), "baseline": u.get("baseline")}
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    baselines = {k[len("baseline_"):]: v for k, v in study.user_attrs.items()
                 if k.startswith("baseline_")}
    if "independent" not in baselines and complete:
        pi = complete[0].user_attrs.get("params_independent")
        if pi:
            baselines["independent"] = {"gain": 0.0, "params": pi, "params_independent": pi}
    summary = {
        "study": study.study_name, "storage": storage_label, "objective": objective,
        "objectives": [objective, "params"], "directions": ["maximize", "minimize"],
        "space": sig.get("space"), "benchmark": sig.get("benchmark"),
        "max_params": sig.get("max_params"), "trials": counts,
        "hypervolume_reference": {"point": list(REFERENCE_POINT),
                                  "axes": ["-gain (%)", "params / params of independent"]},
        "hypervolume": hist[-1]["hypervolume"] if hist else 0.0,
        "hypervolume_history": hist, "baselines": baselines, "pareto": list(groups.values()),
    }
    _atomic_text(out / "pareto.json", json.dumps(summary, indent=2, allow_nan=False,
                                                 default=str))
    _write_trials_csv(out / "trials.csv", trials, {t.number for t in front}, objective)
    _plot_pareto(out / "pareto.png", complete, front, baselines, summary)
    _plot_hv(out / "hypervolume.png", hist, summary)
    return summary


def _fmt_sequence(seq: Sequence[Mapping[str, Any]] | None) -> str:
    if not seq:
        return ""
    parts = []
    for g in seq:
        if g.get("bind_to") is None:
            parts.append(str(g["task"]))
        else:
            slots = ",".join(str(s) for s in g.get("grown_slots") or []) or "-"
            delta = "" if g.get("delta") is None else f"@{g['delta']:g}"
            parts.append(f"{g['task']}<{g['bind_to']}[{slots}]{delta}")
    return " ".join(parts)


def _write_trials_csv(path: Path, trials: Sequence[Any], front: set[int], objective: str) -> None:
    cols = ["number", "state", f"value_{objective}", "value_params", "gain", "avg_val_acc",
            "avg_test_acc", "params_ratio", "feasible", "pareto", "baseline", "grow_sequence",
            "search_params", "duration_s", "worker", "memo_hits", "memo_misses", "memo_prefix_len",
            "memo_full_hit", "indep_trained", "retry_of"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for t in sorted(trials, key=lambda t: t.number):
            u = t.user_attrs
            dur = (t.datetime_complete - t.datetime_start).total_seconds() if (
                t.datetime_complete and t.datetime_start) else None
            vals = list(t.values) if t.values else [None, None]
            w.writerow([t.number, t.state.name, vals[0], vals[1], u.get("gain"),
                        u.get("avg_val_acc"), u.get("avg_test_acc"), u.get("params_ratio"),
                        _feasible(t) if t.values else None, t.number in front,
                        u.get("baseline"), _fmt_sequence(u.get("grow_sequence")),
                        json.dumps(t.params, sort_keys=True), dur, u.get("worker"),
                        u.get("memo_hits"), u.get("memo_misses"), u.get("memo_prefix_len"),
                        u.get("memo_full_hit"), u.get("indep_trained"), u.get("retry_of")])
    os.replace(tmp, path)


def _figure(width: float = 6.4, height: float = 4.4) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save_fig(fig: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)


def _plot_pareto(path: Path, complete: Sequence[Any], front: Sequence[Any],
                 baselines: Mapping[str, Any], summary: Mapping[str, Any]) -> None:
    acc = summary.get("objective") == "acc"
    ykey, scale = ("avg_val_acc", 100.0) if acc else ("gain", 1.0)

    def xy(items: Sequence[Any]) -> tuple[list[float], list[float]]:
        return ([t.user_attrs["params"] for t in items],
                [scale * t.user_attrs[ykey] for t in items])

    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    usable = [t for t in complete if t.user_attrs.get(ykey) is not None]
    feas = [t for t in usable if _feasible(t)]
    infeas = [t for t in usable if not _feasible(t)]
    if feas:
        ax.scatter(*xy(feas), s=18, c="0.6", label=f"trials ({len(complete)})", zorder=2)
    if infeas:
        ax.scatter(*xy(infeas), s=22, c="0.6", marker="x", label="over --max-params", zorder=2)
    if front:
        xs, ys = xy(sorted(front, key=lambda t: t.user_attrs["params"]))
        ax.step(xs, ys, where="post", c="tab:red", lw=1, zorder=3)
        ax.scatter(xs, ys, s=36, c="tab:red", edgecolors="k", linewidths=0.5,
                   label=f"Pareto front ({len(front)})", zorder=4)
    marks = {"independent": ("D", "tab:blue"), "shared": ("s", "tab:green")}
    for name, (marker, color) in marks.items():
        b = baselines.get(name)
        if b and b.get("params") is not None and b.get(ykey) is not None:
            ax.scatter([b["params"]], [scale * b[ykey]], marker=marker, s=110,
                       facecolors="none", edgecolors=color, linewidths=1.6,
                       label=f"{name} baseline", zorder=5)
    if summary.get("max_params"):
        ax.axvline(summary["max_params"], ls="--", c="0.4", lw=0.8, label="--max-params")
    ax.set_xlabel("parameters of the JointNet")
    ax.set_ylabel("average validation accuracy (%)" if acc else "gain Δ (%)")
    ax.set_title(f"{summary.get('study')}: hypervolume {summary.get('hypervolume', 0):.2f}",
                 fontsize=8)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    _save_fig(fig, path)


def _plot_hv(path: Path, hist: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> None:
    fig = _figure(5.6, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    if hist:
        ax.step([h["trials"] for h in hist], [h["hypervolume"] for h in hist], where="post",
                c="tab:red")
    ax.set_xlabel("completed trials")
    ax.set_ylabel("hypervolume")
    ref = REFERENCE_POINT
    ax.set_title(f"hypervolume of (-gain, params/independent), reference {ref}", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_fig(fig, path)


def _summary_text(s: Mapping[str, Any], out: Path) -> str:
    lines = [f"study {s['study']} ({s['storage']}): {s['trials'].get('complete', 0)} complete, "
             f"{s['trials'].get('fail', 0)} failed, {s['trials'].get('running', 0)} running; "
             f"hypervolume {s['hypervolume']:.3f}",
             f"Pareto front ({len(s['pareto'])}):"]
    for p in s["pareto"]:
        lines.append(f"  trial {p['number']:>4}  gain {p['gain']:+7.2f}%  params "
                     f"{p['params']:>10,} ({p['params_ratio']:.2f}x)  "
                     f"{_fmt_sequence(p['grow_sequence'])}")
    lines.append(f"outputs: {out / 'pareto.json'}, trials.csv, pareto.png, hypervolume.png")
    return "\n".join(lines)


def report_dir(directory: str | os.PathLike, storage: str | None = None,
               study_name: str | None = None, quiet: bool = False) -> dict[str, Any]:
    """Regenerate the outputs of the search in ``directory`` from its storage."""
    import optuna

    directory = Path(directory)
    meta_file = directory / "search.json"
    if not meta_file.is_file():
        raise L2BGError(f"{meta_file} not found; point --report at the --out directory of a "
                        "search")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise L2BGError(f"{meta_file} is not valid JSON ({exc}); rerun the search") from exc
    url = storage or meta.get("storage", "")
    if url.startswith("journal:") and not Path(url[len("journal:"):]).is_absolute():
        url = f"journal:{directory / url[len('journal:'):]}"
    if "***" in url:
        raise L2BGError(f"search.json holds the storage without its password ({url}); pass "
                        "--storage URL with the password")
    if url.startswith("journal:") and not Path(url[len("journal:"):]).is_file():
        raise L2BGError(f"journal {url[len('journal:'):]} not found; pass --storage URL")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = open_storage(url)
    name = study_name or meta["study_name"]
    try:
        study = optuna.load_study(study_name=name, storage=st)
    except KeyError as exc:
        raise L2BGError(f"no study {name!r} in {redact_url(url)}; check --study-name") from exc
    summary = write_report(study, directory, storage_label=redact_url(url))
    if not quiet:
        print(_summary_text(summary, directory))
    return summary


# =============================================================================================
# Command line
# =============================================================================================


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _name_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_search_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``l2bg search`` to the sub-parsers of the ``l2bg`` command line."""
    s = sub.add_parser(
        "search", help="search grow sequences for the Pareto front of gain and parameters",
        description="Search grow sequences [(t, b_t, delta_t)] with Optuna for the Pareto front "
                    "of gain (or accuracy) and parameter count. Re-running the same command "
                    "resumes the study; more workers or machines share it through --storage "
                    "and --cache-dir. `l2bg search --report DIR` rewrites the outputs.")
    s.add_argument("--benchmark", choices=BENCHMARK_NAMES, default=None)
    s.add_argument("--data-root", type=Path, default=None,
                   help="MNIST IDX files or cifar-100-python/ (default: embedded MNIST digits)")
    s.add_argument("--tasks", type=int, default=None, help="number of tasks (>= 2)")
    s.add_argument("--epochs", type=int, default=None, help="epochs per task")
    s.add_argument("--trials", type=int, default=None,
                   help="trials to complete in total (over every worker and rerun)")
    s.add_argument("--space", choices=SPACES, default="shared-delta",
                   help="shared-delta: one delta for every task (steps of 0.05, the paper's); "
                        "per-task-delta: one delta per task; bind: bind target of each task "
                        "searched (categorical over earlier tasks) plus its delta; order: task "
                        "order (random keys) plus one delta")
    s.add_argument("--objective", choices=OBJECTIVES, default="gain",
                   help="first objective, maximised: gain Δ or average validation accuracy; "
                        "the second is the parameter count, minimised")
    s.add_argument("--sampler", choices=SAMPLERS, default="gp",
                   help="gp: Gaussian process (EHVI); tpe: multivariate TPE; nsga2: NSGA-II "
                        "with a population sized to --trials; nsga2-paper: Optuna's NSGA-II "
                        "defaults (population 50), as the paper ran it; random")
    s.add_argument("--startup-trials", type=int, default=None,
                   help="random trials before gp/tpe model (default trials/4, within 3..10)")
    s.add_argument("--sampler-seed", type=int, default=None,
                   help="seed of the sampler (default --seed); the k-th worker to join the "
                        "study adds 1000*k")
    s.add_argument("--max-params", type=int, default=None,
                   help="parameter budget: trials above it are infeasible (Trial.set_constraint)")
    s.add_argument("--bind-targets", type=_name_list, default=None,
                   help="comma-separated tasks (names or indices) allowed as bind targets")
    s.add_argument("--delta-set", type=_float_list, default=None,
                   help="comma-separated curated grow coefficients to choose from")
    s.add_argument("--enqueue-baselines", action="store_true",
                   help="evaluate the no-growth (delta 0) and grow-all (delta 1) sequences first")
    s.add_argument("--initial", choices=("random", "diagonal"), default=None,
                   help="start-up design: diagonal enqueues trials with one delta for every "
                        "task (1 and evenly below, the paper's space) before the model takes "
                        "over; default diagonal for gp/tpe, random for the others")
    s.add_argument("--no-baselines", action="store_true",
                   help="do not evaluate the shared baseline for the plot")
    s.add_argument("--storage", default=None,
                   help="Optuna storage URL: postgresql://, mysql://, sqlite:///FILE or "
                        "journal:FILE (default: journal:OUT/study.journal)")
    s.add_argument("--study-name", default=None, help="default: derived from the options")
    s.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    s.add_argument("--threads", type=int, default=None,
                   help="torch threads per worker (default: cores / workers)")
    s.add_argument("--cache-dir", type=Path, default=None,
                   help="independent nets, memo nodes and conflict scores, shared by all "
                        "trials and workers (default OUT/cache; share it between machines)")
    s.add_argument("--seed", type=int, default=0,
                   help="seed of data, initialisation and (by default) the sampler")
    s.add_argument("--rsa-samples", type=int, default=None,
                   help="validation inputs fed to both nets for RSA (default min(500, |V_t|))")
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    s.add_argument("--lease-seconds", type=float, default=60.0,
                   help="a RUNNING trial whose worker has not refreshed it for this long is "
                        "failed and retried (default 60)")
    s.add_argument("--out", type=Path, default=None,
                   help="output directory (default runs/search-<study name>)")
    s.add_argument("--report", type=Path, default=None, metavar="DIR",
                   help="only rewrite the outputs of the search in DIR from its storage")
    s.add_argument("--quiet", action="store_true", help="no per-trial lines and no summary")
    s.set_defaults(func=cmd_search)
    return s


def cmd_search(args: argparse.Namespace) -> int:
    """``l2bg search``."""
    if args.report is not None:
        if args.benchmark is not None or args.trials is not None:
            raise L2BGError("--report DIR only rewrites outputs; drop --benchmark/--trials")
        report_dir(args.report, storage=args.storage, study_name=args.study_name,
                   quiet=args.quiet)
        return 0
    if args.benchmark is None:
        raise L2BGError("l2bg search needs --benchmark B and --trials N (or --report DIR)")
    if args.trials is None:
        raise L2BGError("l2bg search needs --trials N, the number of trials to complete")
    cfg = SearchConfig(
        benchmark=args.benchmark, trials=args.trials,
        data_root=None if args.data_root is None else str(args.data_root), tasks=args.tasks,
        epochs=args.epochs, space=args.space, objective=args.objective, sampler=args.sampler,
        sampler_seed=args.sampler_seed, startup_trials=args.startup_trials,
        max_params=args.max_params, bind_targets=args.bind_targets, delta_set=args.delta_set,
        enqueue_baselines=args.enqueue_baselines, initial=args.initial,
        baselines=not args.no_baselines,
        storage=args.storage, study_name=args.study_name, workers=args.workers,
        threads=args.threads, cache_dir=None if args.cache_dir is None else str(args.cache_dir),
        seed=args.seed, rsa_samples=args.rsa_samples, device=args.device,
        out=None if args.out is None else str(args.out), lease_s=args.lease_seconds,
        quiet=args.quiet)
    run_search(cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m l2bg.search …``: the ``l2bg search`` sub-command on its own."""
    parser = argparse.ArgumentParser(prog="l2bg")
    sub = parser.add_subparsers(dest="command", required=True)
    add_search_parser(sub)
    args = parser.parse_args(["search", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except L2BGError as exc:
        print(f"l2bg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("l2bg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
