"""Decision memoisation: the search's runner of grow sequences.

A δ only matters through the discrete decision it maps to (bind target, grown slots), so every
evaluated prefix of decisions is a *node*: the JointNet after those tasks and their task records,
stored under a key that hashes the context (data, template, training recipe, seed, RSA settings)
and the decisions. :class:`MemoRunner` runs the same :class:`l2bg.learn.step.BindGrowStep` as
:meth:`l2bg.learn.learner.Learner.run`, deciding every task in order (so seeded draws replay
exactly), and wraps it with the memo and nothing else: before ``apply`` it looks the child node up
(a hit costs a JSON read and, the first time in a process, hashing the node's files to check its
seal), after it saves the node; the parent's JointNet is loaded only when a task must
be scored or trained. Conflict scores are kept per node, task and candidate set. Nodes and scores
live on disk (shared by trials, workers and machines, under file locks) or in memory. On disk they
are sealed (:func:`l2bg.base.fileio.seal`: ``node.json`` holds the sha256 of itself, with the
outcomes, and of the JointNet's files; a scores file of itself): a node or scores file that does
not match is moved aside (renamed, never deleted) and computed again, with one warning.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from l2bg.base.errors import L2BGError
from l2bg.base.fileio import atomic_dir, read_sealed, seal, set_aside, sweep_stale_temps, write_json
from l2bg.base.locks import FileLocks, worker_id
from l2bg.learn.step import CandidateScore, Decision, GrowStep, SequenceState, TaskRecord, timer

if TYPE_CHECKING:  # pragma: no cover
    from l2bg.learn.learner import Learner
    from l2bg.learn.record import RunRecord
    from l2bg.learn.strategies import Strategy
    from l2bg.net.jointnet import JointNet

__all__ = ["MEMO_FORMAT", "MemoRunner", "MemoStore", "Outcome", "sha"]

MEMO_FORMAT = 5  # 3: sealed nodes and scores (checksums); 4: scores keyed by similarity measure;
# 5: RSA conflicts stored as the dissimilarities themselves (not 1 - (1 - d))


def sha(obj: Any, n: int = 20) -> str:
    """Short content hash of a JSON-serialisable object (keys of memo nodes and studies)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


@dataclass
class Outcome:
    """One evaluated grow sequence: its run record (as ``Learner.run`` builds it, plus ``order``,
    ``decisions`` and ``memo``), its typed task records, and where its JointNet lies."""

    record: RunRecord
    records: list[TaskRecord]
    order: list[int]
    key: str
    net_dir: Path | None
    stats: dict[str, Any]

    @property
    def decisions(self) -> list[Decision]:
        return [r.decision for r in self.records]


class MemoStore:
    """Memo nodes and conflict scores, on disk under ``root`` or in memory (``root=None``)."""

    def __init__(self, root: Path | None, lease_s: float = 60.0) -> None:
        self.root = root
        self.lease_s = lease_s
        self._meta: dict[str, dict[str, Any]] = {}
        self._nets: dict[str, JointNet] = {}
        self._scores: dict[str, Any] = {}

    def node_dir(self, key: str) -> Path | None:
        return None if self.root is None else self.root / "nodes" / key

    def lock(self, locks: FileLocks, key: str):
        d = self.node_dir(key)
        return nullcontext() if d is None else locks.hold(d.with_name(f".{key}.lock"))

    def exists(self, key: str, repair: bool = False) -> bool:
        """Whether node ``key`` is stored and intact (checked once per process); with
        ``repair`` (under the node's lock) a damaged node is moved aside."""
        if key in self._meta:
            return True
        d = self.node_dir(key)
        if d is None or not d.is_dir():
            return False
        meta, problem = read_sealed(d, "node.json")
        if problem is None and not isinstance(meta.get("outcomes"), list):
            problem = "node.json has no outcomes"
        if problem is None:
            self._meta[key] = meta
            return True
        if repair:
            set_aside(d, problem, "memo node")
        return False

    def read_meta(self, key: str) -> dict[str, Any]:
        if key not in self._meta and not self.exists(key):
            raise L2BGError(f"memo node {key} vanished or is damaged; rerun to compute it again")
        return self._meta[key]

    def load_net(self, key: str, device: Any) -> JointNet:
        from l2bg.net.jointnet import JointNet

        if self.root is None:
            return copy.deepcopy(self._nets[key])
        return JointNet.load(self.node_dir(key), map_location=device)

    def save(self, key: str, meta: dict[str, Any], net: JointNet) -> None:
        from l2bg.net.jointnet import TOPOLOGY_FILE, WEIGHTS_FILE

        meta = json.loads(json.dumps(meta, allow_nan=False))  # a snapshot, not live lists
        if self.root is None:
            self._nets[key] = copy.deepcopy(net)
        else:
            sweep_stale_temps(self.root / "nodes", self.lease_s)
            with atomic_dir(self.node_dir(key)) as tmp:
                net.save(tmp)
                meta = seal(meta, tmp, (WEIGHTS_FILE, TOPOLOGY_FILE))
                write_json(tmp / "node.json", meta, indent=None)
        self._meta[key] = meta

    def read_scores(self, name: str) -> Any:
        """The stored scores ``name`` (None when absent; a damaged file is moved aside)."""
        if name in self._scores or self.root is None:
            return self._scores.get(name)
        p = self.root / "scores" / f"{name}.json"
        if not p.is_file():
            return None
        obj, problem = read_sealed(p.parent, p.name)
        if problem is None:
            try:
                _scores_from_json(obj)
            except L2BGError as exc:
                problem = str(exc)
        if problem is not None:
            set_aside(p, problem, "stored conflict scores")
            return None
        self._scores[name] = obj
        return obj

    def write_scores(self, name: str, obj: Any) -> None:
        self._scores[name] = obj
        if self.root is not None:
            sweep_stale_temps(self.root / "scores", self.lease_s)
            write_json(self.root / "scores" / f"{name}.json", seal(obj), indent=None)


class MemoRunner:
    """Runs grow sequences of ``strategy`` over the tasks of ``learner`` with the memo.

    The record of ``run(order, steps)`` equals ``learner.run(strategy, steps, order=order)``
    (timings and cache counters aside). ``memo_dir=None`` keeps nodes in memory (one process); a
    directory shares them between trials, workers and machines (``<memo_dir>/memo/<context>/``:
    runs with the same data, template, training recipe, seed and RSA sample count share nodes,
    whatever the strategy, rules or similarity measure, since a node depends only on its
    decisions; conflict scores are kept per similarity measure).
    """

    def __init__(self, learner: Learner, strategy: str | Strategy = "l2bg", *,
                 memo_dir: str | Path | None = None, locks: FileLocks | None = None) -> None:
        from l2bg.data import task_fingerprint
        from l2bg.learn import strategies

        self.learner = learner
        self.strategy = strategies.get(strategy)
        self.locks = locks if locks is not None else learner.cache.locks
        lr = learner
        self.context = sha({"format": MEMO_FORMAT, "benchmark": lr.benchmark,
                            "tasks": [[t.name, task_fingerprint(t)] for t in lr.tasks],
                            "seed": lr.seed, "template": lr.template.to_dict(),
                            "train": lr.config.to_dict(), "rsa_samples": lr.rsa_samples})
        root = Path(memo_dir) / "memo" / self.context if memo_dir is not None else None
        self.store = MemoStore(root, self.locks.lease_s)

    def node_key(self, decisions: Sequence[Decision]) -> str:
        return sha([self.context, [d.key for d in decisions]])

    def _load(self, key: str | None, decisions: Sequence[Decision], stats: dict[str, Any],
              timings: dict[str, float]) -> SequenceState:
        from l2bg.net.jointnet import JointNet

        lr = self.learner
        if key is None:
            return SequenceState(JointNet(lr.template).to(lr.device))
        stats["node_loads"] += 1
        with timer(timings, "memo_load"):
            net = self.store.load_net(key, lr.device)
            outcomes = self.store.read_meta(key)["outcomes"]
        return SequenceState(net, [TaskRecord.from_outcome(d, o)
                                   for d, o in zip(decisions, outcomes, strict=True)])

    def run(self, order: Sequence[int] | None = None,
            steps: Sequence[GrowStep] | None = None,
            strategy: str | Strategy | None = None) -> Outcome:
        """Evaluate the grow sequence ``steps`` (one per task after the first) over the tasks in
        ``order`` (stream indices; default the stream order) with ``strategy`` (default the
        runner's), reusing memo nodes. Nodes depend only on decisions, so strategies, rules
        and similarity measures share them."""
        lr = self.learner
        strat, steps, order = lr.prepare(self.strategy if strategy is None else strategy, steps,
                                         None, order)
        T = len(order)
        start = time.perf_counter()
        stats: dict[str, Any] = dict(memo_hits=0, memo_misses=0, prefix_len=0, full_hit=False,
                                     scores_hits=0, scores_misses=0, indep_trained=0,
                                     node_loads=0, lock_waits=0)
        waits0, misses0 = self.locks.waits, lr.cache.misses
        timings: dict[str, float] = {}
        rng = random.Random(strat.rng_seed(lr.seed))
        decisions: list[Decision] = []
        key: str | None = None
        state: SequenceState | None = None
        leading = True

        def state_fn() -> SequenceState:
            nonlocal state
            if state is None:
                state = self._load(key, decisions, stats, timings)
            return state

        for pos in range(T):
            spec = steps[pos - 1] if pos else GrowStep()
            scorer = self._scorer(key, order, pos, state_fn, stats, timings)
            ctx = lr.step.context(order, pos, spec, rng, scorer)
            with timer(timings, "decide"):
                d = lr.step.decide(strat, ctx)
            child = self.node_key([*decisions, d])
            hit = self.store.exists(child)
            if not hit:
                with self.store.lock(self.locks, child):
                    hit = self.store.exists(child, repair=True)
                    if not hit:
                        st = state_fn()
                        t0 = time.perf_counter()
                        lr.step.apply(st, order, pos, d, timings)
                        self.store.save(child, {
                            "format": MEMO_FORMAT, "context": self.context,
                            "decisions": [x.key for x in (*decisions, d)],
                            "outcomes": [r.outcome_json() for r in st.records],
                            "step_s": time.perf_counter() - t0, "worker": worker_id(),
                            "created": time.time()}, st.net)
                        stats["memo_misses"] += 1
            if hit:
                stats["memo_hits"] += 1
                state = None
            leading = leading and hit
            stats["prefix_len"] += int(leading)
            decisions.append(d)
            key = child
        stats["full_hit"] = stats["memo_hits"] == T
        stats["lock_waits"] = self.locks.waits - waits0
        stats["indep_trained"] = lr.cache.misses - misses0
        outcomes = self.store.read_meta(key)["outcomes"]
        records = [TaskRecord.from_outcome(d, o)
                   for d, o in zip(decisions, outcomes, strict=True)]
        record = lr.run_record(strat, records, timings, time.perf_counter() - start)
        record.order = [lr.tasks[j].name for j in order]  # decisions: from the task records
        record.memo = dict(stats)
        return Outcome(record=record, records=records, order=order, key=key,
                       net_dir=self.store.node_dir(key), stats=stats)

    def _scorer(self, key: str | None, order: list[int], pos: int, state_fn: Any,
                stats: dict[str, Any], timings: dict[str, float]):
        """Conflict scores of the task at ``pos`` in the JointNet of node ``key``: computed once
        (activations of both nets, RSA) and kept with the node."""
        task = self.learner.tasks[order[pos]].name

        def score(candidates: Sequence[str], similarity: str
                  ) -> tuple[dict[str, CandidateScore], str | None]:
            name = f"{key}-{task}-{sha([similarity, list(candidates)], 10)}"
            found = self.store.read_scores(name)
            if found is not None:
                stats["scores_hits"] += 1
                return _scores_from_json(found)
            stats["scores_misses"] += 1
            scores, backend = self.learner.step.score(state_fn().net, order, pos, candidates,
                                                      timings, similarity)
            self.store.write_scores(name, {"scores": {c: s.to_json() for c, s in scores.items()},
                                           "rsa_backend": backend})
            return scores, backend

        return score


def _scores_from_json(obj: Mapping[str, Any]) -> tuple[dict[str, CandidateScore], str | None]:
    try:
        return ({c: CandidateScore.from_json(s) for c, s in obj["scores"].items()},
                obj.get("rsa_backend"))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise L2BGError(f"a stored conflict-score entry is malformed ({exc})") from exc
