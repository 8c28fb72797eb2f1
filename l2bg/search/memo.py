"""Decision memoisation: the search's memo, a plugin of :meth:`l2bg.learn.learner.Learner.run`.

A δ only matters through the discrete decision it maps to (bind target, grown slots), so every
evaluated prefix of decisions is a *node*: the JointNet after those tasks and their task records,
stored under a key that hashes the context (data, template, training recipe, seed, RSA settings)
and the decisions. :class:`Memo` plugs into the one loop over tasks, which decides every task in
order (so seeded draws replay exactly): its ``restore`` looks the child node up before the
decision is carried out (a hit costs a JSON read and, the first time in a process, hashing the
node's files to check its seal; the task is not trained), its ``after_apply`` saves the node; the
parent's JointNet is loaded only when a task must be scored or trained. Its ``provide_scores``
keeps conflict scores per node, task and candidate set. Nodes and scores live on disk (shared by
trials, workers and machines, under file locks) or in memory. On disk they are sealed
(:func:`l2bg.base.fileio.seal`: ``node.json`` holds the sha256 of itself, with the outcomes, and
of the JointNet's files; a scores file of itself): a node or scores file that does not match is
moved aside (renamed, never deleted) and computed again, with one warning.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from l2bg.base.errors import L2BGError
from l2bg.base.fileio import atomic_dir, read_sealed, seal, set_aside, sweep_stale_temps, write_json
from l2bg.base.locks import FileLocks, worker_id
from l2bg.learn.plugins import Plugin, Restored, Run
from l2bg.learn.step import CandidateScore, Decision, SequenceState, TaskRecord, timer

if TYPE_CHECKING:  # pragma: no cover
    from l2bg.learn.experiment import Experiment
    from l2bg.learn.learner import Learner, RunResult
    from l2bg.learn.record import RunRecord
    from l2bg.learn.step import StepContext
    from l2bg.net.jointnet import JointNet

__all__ = ["MEMO_FORMAT", "Memo", "MemoStore", "Outcome", "sha"]

MEMO_FORMAT = 5  # 3: sealed nodes and scores (checksums); 4: scores keyed by similarity measure;
# 5: RSA conflicts stored as the dissimilarities themselves (not 1 - (1 - d))


def sha(obj: Any, n: int = 20) -> str:
    """Short content hash of a JSON-serialisable object (keys of memo nodes and studies)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


@dataclass
class Outcome:
    """One evaluated grow sequence: its run record (as ``Learner.run`` builds it, plus ``order``,
    ``decisions`` and ``memo``), its typed task records, its node key, where its JointNet lies
    (None for an in-memory memo) and the memo counters."""

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

    def load_net(self, key: str, device: Any, template: Any = None) -> JointNet:
        """The JointNet of node ``key``; ``template``: the user template it was made from."""
        from l2bg.net.jointnet import JointNet

        if self.root is None:
            return copy.deepcopy(self._nets[key])
        return JointNet.load(self.node_dir(key), map_location=device, template=template)

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


class Memo(Plugin):
    """The memo as a plugin of ``Learner.run`` on ``experiment`` (the learner's): a run with it
    gives the record the run gives without it (timings and cache counters aside), training only
    the decisions no node holds yet.

    ``memo_dir=None`` keeps nodes in memory (one process); a directory shares them between
    trials, workers and machines (``<memo_dir>/memo/<context>/``: runs with the same data,
    template, training recipe, seed and RSA sample count share nodes, whatever the strategy,
    rules or similarity measure, since a node depends only on its decisions; conflict scores are
    kept per similarity measure). :attr:`stats` counts the last run's hits and misses;
    :meth:`outcome` turns its result into the search's :class:`Outcome`.
    """

    name = "memo"

    def __init__(self, experiment: Experiment, *, memo_dir: str | Path | None = None,
                 locks: FileLocks | None = None) -> None:
        from l2bg.data import task_fingerprint

        self.experiment = ex = experiment
        self.locks = locks if locks is not None else ex.cache.locks
        self.context = sha({"format": MEMO_FORMAT, "benchmark": ex.benchmark,
                            "tasks": [[t.name, task_fingerprint(t)] for t in ex.tasks],
                            "seed": ex.seed, "template": ex.template.to_dict(),
                            "train": ex.config.to_dict(), "rsa_samples": ex.rsa_samples,
                            **_growth(ex)})
        root = Path(memo_dir) / "memo" / self.context if memo_dir is not None else None
        self.store = MemoStore(root, self.locks.lease_s)
        self.stats: dict[str, Any] = {}
        self._run: Run | None = None
        self._held = ExitStack()  # the lock of the node being computed
        self._pending: tuple[str, float] | None = None
        self._leading = True

    @classmethod
    def attach(cls, learner: Learner, *, memo_dir: str | Path | None = None,
               locks: FileLocks | None = None) -> Memo:
        """A memo of ``learner``'s experiment, put first among its plugins."""
        memo = cls(learner.experiment, memo_dir=memo_dir, locks=locks)
        learner.plugins.insert(0, memo)
        return memo

    def node_key(self, decisions: Sequence[Decision]) -> str:
        return sha([self.context, [d.key for d in decisions]])

    # ------------------------------------------------------------------ the extension points
    def before_run(self, run: Run) -> None:
        self._run = None
        if run.experiment is not self.experiment:
            raise L2BGError("this memo was made for another experiment; make a Memo with the "
                            "learner's experiment (learner.experiment)")
        self._run, self._pending, self._leading = run, None, True
        self.stats = dict(memo_hits=0, memo_misses=0, prefix_len=0, full_hit=False,
                          scores_hits=0, scores_misses=0, indep_trained=0, node_loads=0,
                          lock_waits=0)
        self._counts0 = (self.locks.waits, self.experiment.cache.misses)

    def provide_scores(self, ctx: StepContext, candidates: Sequence[str], similarity: str,
                       compute: Callable[[], Any]) -> tuple[dict[str, CandidateScore], str | None]:
        """Scores kept with the parent node: computed once (activations of both nets, RSA)."""
        key = self.node_key(self._run.decisions)
        what: list[Any] = [similarity, list(candidates)]
        if ctx.num_groups is not None:  # scores per unit; per slot keep their former name
            what.append(ctx.num_groups)
        name = f"{key}-{ctx.task}-{sha(what, 10)}"
        found = self.store.read_scores(name)
        if found is not None:
            self.stats["scores_hits"] += 1
            return _scores_from_json(found)
        self.stats["scores_misses"] += 1
        scores, backend = compute()
        self.store.write_scores(name, {"scores": {c: s.to_json() for c, s in scores.items()},
                                       "rsa_backend": backend})
        return scores, backend

    def restore(self, prefix: Sequence[Decision], decision: Decision) -> Restored | None:
        """The stored node of ``prefix + [decision]``; when there is none, its lock is held
        until :meth:`after_apply` saves it (or the run ends)."""
        child = self.node_key([*prefix, decision])
        hit = self.store.exists(child)
        if not hit:
            self._held.enter_context(self.store.lock(self.locks, child))
            hit = self.store.exists(child, repair=True)
            if not hit:
                self._pending = (child, time.perf_counter())
                self._leading = False
                return None
            self._held.close()
        self.stats["memo_hits"] += 1
        self.stats["prefix_len"] += int(self._leading)
        outcome = self.store.read_meta(child)["outcomes"][-1]
        return Restored(TaskRecord.from_outcome(decision, outcome), partial(self._load, child))

    def after_apply(self, ctx: StepContext, record: TaskRecord, state: SequenceState) -> None:
        if self._pending is None:
            return
        child, t0 = self._pending
        self._pending = None
        try:
            self.store.save(child, {
                "format": MEMO_FORMAT, "context": self.context,
                "decisions": [r.decision.key for r in state.records],
                "outcomes": [r.outcome_json() for r in state.records],
                "step_s": time.perf_counter() - t0, "worker": worker_id(),
                "created": time.time()}, state.net)
        finally:
            self._held.close()
        self.stats["memo_misses"] += 1

    def after_task(self, ctx: StepContext, record: TaskRecord, elapsed_s: float) -> None:
        if self._pending is not None:  # another plugin restored the task: nothing to save
            self._pending = None
            self._held.close()

    def after_run(self, run: Run, result: RunResult | None) -> None:
        self._held.close()
        self._pending = None
        if self._run is not run:  # the run stopped before this memo's before_run passed
            return
        s = self.stats
        s["full_hit"] = s["memo_hits"] == len(run.order)
        s["lock_waits"] = self.locks.waits - self._counts0[0]
        s["indep_trained"] = self.experiment.cache.misses - self._counts0[1]

    # ------------------------------------------------------------------ helpers
    def _load(self, key: str) -> JointNet:
        self.stats["node_loads"] += 1
        with timer(self._run.timings, "memo_load"):
            tpl = self.experiment.template
            return self.store.load_net(key, self.experiment.device,
                                       tpl if tpl.is_user else None)

    def outcome(self, result: RunResult) -> Outcome:
        """The search's view of a run with this memo: its record (plus ``order``,
        ``decisions`` and the ``memo`` counters), the node of its whole sequence."""
        run = self._run
        decisions = [r.decision for r in result.records]
        key = self.node_key(decisions)
        record = result.record
        record.order = self.experiment.names(run.order)  # decisions: from the task records
        record.memo = dict(self.stats)
        return Outcome(record=record, records=result.records, order=run.order, key=key,
                       net_dir=self.store.node_dir(key), stats=dict(self.stats))


def _growth(ex: Experiment) -> dict[str, Any]:
    """The growth options of the memo's context, only where they differ from the defaults, so
    that the memo of a run with default options keeps its key (docs/design.md, "Units")."""
    options = ex.growth_options()
    return {"growth": options} if options else {}


def _scores_from_json(obj: Mapping[str, Any]) -> tuple[dict[str, CandidateScore], str | None]:
    try:
        return ({c: CandidateScore.from_json(s) for c, s in obj["scores"].items()},
                obj.get("rsa_backend"))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise L2BGError(f"a stored conflict-score entry is malformed ({exc})") from exc
