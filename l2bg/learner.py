"""Bind-Grow-Step (Algorithm 1) and grow-sequence runs over a task stream.

A run takes a benchmark (or any list of tasks with a template), a strategy and, for ``l2bg``, a
grow coefficient per task. For every task it trains (or takes from the cache) the independent net,
decides where to bind and what to grow, trains the task inside the JointNet, and evaluates every
learned task. All decisions, their scores and the timings are recorded.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from l2bg import conflict, metrics
from l2bg.cache import IndependentCache, IndependentNet, task_seed
from l2bg.errors import L2BGError
from l2bg.executor import default_backend
from l2bg.jointnet import JointNet, copy_task_net
from l2bg.templates import Template
from l2bg.training import TrainConfig, evaluate_all, fit

STRATEGIES = ("independent", "shared", "full", "random", "l2bg")


@dataclass
class GrowStep:
    """One element (t, b_t, δ_t) of a grow sequence. ``bind_to=None`` lets RSA choose;
    ``candidates`` restricts the bind targets; ``slots`` forces the grown slots directly."""

    delta: float | None = None
    bind_to: str | None = None
    candidates: Sequence[str] | None = None
    slots: Sequence[int] | None = None


@dataclass
class RunResult:
    net: JointNet
    record: dict[str, Any]
    independent: list[IndependentNet] = field(default_factory=list)


def _timer(timings: dict[str, float], key: str):
    class _T:
        def __enter__(self):
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            timings[key] = timings.get(key, 0.0) + time.perf_counter() - self.t

    return _T()


@torch.no_grad()
def activations(net: JointNet, tasks: Sequence[str], x: Tensor, batch_size: int = 1024
                ) -> dict[str, list[Tensor]]:
    """Per-slot activations of every task-net in ``tasks`` on the same inputs x (eval mode), each
    (n, d_l) fp32. One :meth:`JointNet.forward_all` pass per batch computes every shared node
    once for all the tasks routed through it."""
    was = net.training
    net.eval()
    device = next(net.parameters()).device
    parts: dict[str, list[list[Tensor]]] = {t: [] for t in tasks}
    try:
        for i in range(0, x.shape[0], batch_size):
            _, acts = net.forward_all(x[i:i + batch_size].to(device), tasks=list(tasks),
                                      return_activations=True)
            for t in tasks:
                parts[t].append(acts[t])
    finally:
        net.train(was)
    return {t: [torch.cat([p[s] for p in ps]).float() for s in range(len(ps[0]))]
            for t, ps in parts.items()}


def check_forced_bind(task: str, step: GrowStep, learned: Sequence[str]) -> None:
    if step.bind_to is not None and step.bind_to not in learned:
        raise L2BGError(f"task {task!r} is forced to bind to {step.bind_to!r}, which is not a "
                        f"learned task; learned: {list(learned)}")


def bind_candidates(step: GrowStep, learned: Sequence[str]) -> list[str]:
    """The tasks a step scores: its ``candidates`` (default every learned task), plus a forced
    ``bind_to`` so its scores are recorded too."""
    candidates = list(step.candidates) if step.candidates else list(learned)
    unknown = [c for c in candidates if c not in learned]
    if unknown:
        raise L2BGError(f"bind candidates {unknown} are not learned tasks; "
                        f"learned: {list(learned)}")
    if step.bind_to is not None and step.bind_to not in candidates:
        candidates.append(step.bind_to)
    return candidates


class Learner:
    """Runs grow sequences on one task stream with one training recipe."""

    def __init__(self, tasks: Sequence[Any], template: Template, config: TrainConfig, *,
                 benchmark: str = "custom", seed: int = 0, device: torch.device | str = "cpu",
                 cache: IndependentCache | None = None, rsa_samples: int | None = None,
                 rsa_backend: str = "auto", quiet: bool = True) -> None:
        if not tasks:
            raise L2BGError("the task stream is empty: give at least one task")
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise L2BGError(f"task names must be unique, got {names}")
        self.tasks = list(tasks)
        self.template = template
        self.config = config
        self.benchmark = benchmark
        self.seed = seed
        self.device = torch.device(device)
        self.cache = cache if cache is not None else IndependentCache(None)
        self.rsa_samples = rsa_samples
        self.rsa_backend = rsa_backend
        self.quiet = quiet
        if rsa_samples is not None:
            for t in self.tasks:
                conflict.sample_indices(t.x_val.shape[0], rsa_samples, 0)

    # ------------------------------------------------------------------ pieces
    def independent(self, index: int, progress: Any = None) -> IndependentNet:
        return self.cache.get_or_train(self.benchmark, self.tasks[index], index, self.seed,
                                       self.template, self.config, self.device, progress)

    def score_candidates(self, net: JointNet, index: int, indep: IndependentNet,
                         candidates: Sequence[str], timings: dict[str, float]
                         ) -> dict[str, dict[str, Any]]:
        """Conflict scores of task ``index`` against every candidate task-net of ``net``."""
        from l2bg import rsa

        task = self.tasks[index]
        idx = conflict.sample_indices(task.x_val.shape[0], self.rsa_samples,
                                      task_seed(self.seed, index))
        x = task.x_val[idx]
        expandable = self.template.expandable_slots
        with _timer(timings, "activations"):
            acts_t = activations(indep.net, [indep.task], x)[indep.task]
            acts_b = activations(net, candidates, x)
        out = {}
        with _timer(timings, "rsa"):
            layers = conflict.layer_conflicts(
                [acts_t[s] for s in expandable],
                {b: [acts_b[b][s] for s in expandable] for b in candidates},
                backend=self.rsa_backend)
            for b in candidates:
                out[b] = {"layers": layers[b], "score": conflict.task_score(layers[b])}
        self.last_rsa_backend = rsa.last_backend()
        return out

    # ------------------------------------------------------------------ a run
    def run(self, strategy: str = "l2bg", sequence: Sequence[GrowStep] | None = None,
            delta: float | None = None) -> RunResult:
        """Learn every task in order with ``strategy``; ``sequence`` gives one GrowStep per task
        after the first (or ``delta`` one δ for all of them, for ``l2bg``)."""
        if strategy not in STRATEGIES:
            raise L2BGError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
        T = len(self.tasks)
        if sequence is None:
            sequence = [GrowStep(delta=delta) for _ in range(T - 1)]
        if len(sequence) != T - 1:
            raise L2BGError(f"a grow sequence needs one step per task after the first "
                            f"({T - 1}), got {len(sequence)}")
        if strategy == "l2bg":
            for step in sequence:
                if step.slots is None:
                    if step.delta is None:
                        raise L2BGError("strategy l2bg needs a grow coefficient: pass --delta D "
                                        "or --deltas d2,...,dT")
                    conflict.check_delta(step.delta)
        if (strategy == "shared" and self.config.shared_lr_scale == 0
                and not self.template.per_task_heads and T > 1):
            raise L2BGError("strategy shared with --shared-lr-scale 0 and no per-task head leaves "
                            "nothing to train; use a positive --shared-lr-scale")

        from tqdm.auto import tqdm

        total_epochs = self.config.epochs * (T if strategy == "independent" else 2 * T - 1)
        progress = tqdm(total=total_epochs, desc=f"{self.benchmark}:{strategy}", unit="epoch",
                        disable=True if self.quiet else None, leave=False)
        rng = random.Random(self.seed)
        timings: dict[str, float] = {}
        self.last_rsa_backend = None
        net = JointNet(self.template).to(self.device)
        indeps: list[IndependentNet] = []
        task_records = []
        R_val: list[list[float | None]] = []
        R_test: list[list[float | None]] = []
        start = time.perf_counter()
        try:
            for i, task in enumerate(self.tasks):
                with _timer(timings, "independent"):
                    indep = self.independent(i, progress)
                indeps.append(indep)
                rec: dict[str, Any] = {"name": task.name, "bind_to": None, "grown_slots": [],
                                       "delta": None, "conflict": {},
                                       "independent_val_acc": indep.val_acc,
                                       "independent_test_acc": indep.test_acc,
                                       "independent_cached": indep.cached}
                if strategy == "independent" or i == 0:
                    copy_task_net(indep.net, indep.task, net, as_task=task.name)
                else:
                    step = sequence[i - 1]
                    bind_to, slots = self._decide(strategy, step, net, i, indep, rng, rec,
                                                  timings)
                    torch.manual_seed(task_seed(self.seed, i) + 1)
                    net.bind(task.name, bind_to, task.num_classes)
                    net.grow(task.name, slots, init="copy")
                    rec["bind_to"], rec["grown_slots"] = bind_to, net.grown_slots(task.name)
                    cfg = self.config.replace(seed=task_seed(self.seed, i) + 1)
                    with _timer(timings, "training"):
                        rec["train_loss"] = fit(net, task.name, task.x_train, task.y_train, cfg,
                                                progress)
                with _timer(timings, "evaluation"):
                    learned = self.tasks[:i + 1]
                    val = evaluate_all(net, {t.name: (t.x_val, t.y_val) for t in learned})
                    test = evaluate_all(net, {t.name: (t.x_test, t.y_test) for t in learned})
                    row_v = [val[t.name] for t in learned] + [None] * (T - i - 1)
                    row_t = [test[t.name] for t in learned] + [None] * (T - i - 1)
                R_val.append(row_v)
                R_test.append(row_t)
                rec["val_acc"], rec["test_acc"] = row_v[i], row_t[i]
                rec["params"] = net.num_parameters()
                task_records.append(rec)
        finally:
            progress.close()
        wall = time.perf_counter() - start
        return RunResult(net=net, independent=indeps,
                         record=self._summarise(strategy, task_records, R_val, R_test, indeps,
                                                net, timings, wall))

    def _decide(self, strategy: str, step: GrowStep, net: JointNet, i: int,
                indep: IndependentNet, rng: random.Random, rec: dict[str, Any],
                timings: dict[str, float]) -> tuple[str, list[int]]:
        learned = net.tasks
        expandable = self.template.expandable_slots
        prev = self.tasks[i - 1].name
        check_forced_bind(self.tasks[i].name, step, learned)
        if strategy == "shared":
            return step.bind_to or prev, []
        if strategy == "full":
            return step.bind_to or prev, list(expandable)
        if strategy == "random":
            b = step.bind_to or rng.choice(learned)
            if step.slots is not None:
                return b, [self.template.slot_index(s) for s in step.slots]
            k = rng.randint(0, len(expandable))
            return b, sorted(rng.sample(expandable, k))
        # l2bg
        candidates = bind_candidates(step, learned)
        scores = self.score_candidates(net, i, indep, candidates, timings)
        rec["conflict"] = scores
        b = step.bind_to or conflict.choose_bind({c: scores[c]["score"] for c in candidates})
        if step.slots is not None:
            return b, [self.template.slot_index(s) for s in step.slots]
        rec["delta"] = step.delta
        picked = conflict.nucleus(scores[b]["layers"], step.delta)
        return b, [expandable[p] for p in picked]

    def _summarise(self, strategy: str, task_records: list[dict[str, Any]],
                   R_val: list, R_test: list, indeps: list[IndependentNet], net: JointNet,
                   timings: dict[str, float], wall: float) -> dict[str, Any]:
        final_err = [1.0 - a for a in R_val[-1]]
        indep_err = [x.val_err for x in indeps]
        n_val = [x.n_val for x in indeps]
        indep_params = sum(x.net.num_parameters() for x in indeps)
        return {
            "benchmark": self.benchmark,
            "strategy": strategy,
            "seed": self.seed,
            "tasks": task_records,
            "grow_sequence": [{"task": r["name"], "bind_to": r["bind_to"], "delta": r["delta"],
                               "grown_slots": r["grown_slots"]} for r in task_records],
            "acc_matrix": R_test,
            "acc_matrix_val": R_val,
            "avg_val_acc": metrics.average_accuracy(R_val),
            "avg_test_acc": metrics.average_accuracy(R_test),
            "bwt": metrics.bwt(R_test),
            "fwt": metrics.fwt(R_test, [x.test_acc for x in indeps]),
            "gain": metrics.gain(final_err, indep_err, n_val),
            "gain_raw": metrics.gain_raw(final_err, indep_err, n_val),
            "params": net.num_parameters(),
            "params_independent": indep_params,
            "slots": self.template.slot_names,
            "timings": {k: round(v, 4) for k, v in sorted(timings.items())},
            "rsa_backend": self.last_rsa_backend,
            "executor_backend": default_backend(),
            "cache": {"hits": self.cache.hits, "misses": self.cache.misses},
            "wall_time_s": wall,
        }
