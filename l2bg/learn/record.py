"""The run record (``results.json``) and the task record: typed, versioned, one upgrade path.

* :class:`Decision` (with its :class:`CandidateScore` per bind candidate): where a task bound and
  what grew.
* :class:`TaskRecord`: a decision carried out (accuracy rows, sizes, losses, the independent net).
* :class:`RunRecord`: a learned task stream, what ``Learner.run`` returns as ``.record`` and what
  ``l2bg run``, ``l2bg explain``, the search and the benchmark scripts read and write.

``RunRecord.to_json`` gives results.json key for key (order included) as every l2bg since 0.1
wrote it, plus ``environment`` (:class:`l2bg.learn.environment.Environment`) and
``record_version``. ``RunRecord.from_json`` reads any results.json: :func:`upgrade` brings a file
of an older version to the current one (the only place that knows older layouts), then the typed
record is built; a file of a newer version is refused with one line. Reading back what
``to_json`` wrote gives the same JSON. Key by key: docs/design.md §4.2.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from l2bg.base.errors import L2BGError
from l2bg.conflict import scores as conflict
from l2bg.conflict.units import format_units
from l2bg.learn import metrics
from l2bg.learn.environment import Environment
from l2bg.learn.recordfile import RECORD_VERSION, check_record, upgrade

__all__ = ["RECORD_VERSION", "SEED_KEYS", "CandidateScore", "Decision", "Environment",
           "RunRecord", "TaskRecord", "check_record", "over_seeds", "upgrade"]


@dataclass(frozen=True)
class CandidateScore:
    """Conflict of the new task with one bind candidate: C per unit and the task score ‖C‖₂.
    ``units`` None: one unit per expandable slot (granularity ``layer``); else the ``(slot,
    group)`` of each entry of ``layers`` (:mod:`l2bg.conflict.units`, group None: whole)."""

    layers: tuple[float, ...]
    score: float
    units: tuple[tuple[int, int | None], ...] | None = None

    @classmethod
    def of(cls, layers: Sequence[float],
           units: Sequence[Sequence[int | None]] | None = None) -> CandidateScore:
        layers = tuple(float(c) for c in layers)
        if units is not None:
            units = tuple((int(s), None if g is None else int(g)) for s, g in units)
            if len(units) != len(layers):
                raise L2BGError(f"{len(layers)} conflict scores for {len(units)} units")
        return cls(layers, conflict.task_score(layers), units)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"layers": list(self.layers), "score": self.score}
        if self.units is not None:
            out["units"] = [list(u) for u in self.units]
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> CandidateScore:
        units = obj.get("units")
        return cls(tuple(float(c) for c in obj["layers"]), float(obj["score"]),
                   None if units is None else tuple((int(s), None if g is None else int(g))
                                                    for s, g in units))


@dataclass(frozen=True)
class Decision:
    """Where a task binds and what grows. ``bind_to=None``: the task-net is the task's own
    independent net (first task, or strategy ``independent``). ``slots``: template slot indices,
    sorted. ``delta``: the grow coefficient that chose the slots (None when none did).
    ``conflict``: the scores of every bind candidate that was scored. ``reason``: why, in words.
    ``rules``: what decided, ``{"bind": rule, "grow": rule, "similarity": measure}`` (None for a
    part that was forced or a strategy without the conflict model). ``groups``: ``{slot:
    channel groups}`` grown of slots cut into ``num_groups`` groups (granularity ``group:G``;
    a slot is in ``slots`` or in ``groups``, not both). ``mode``: how the units grow, ``copy``
    or ``adapt`` (docs/design.md, "Units"). ``copied``: the whole ``slots`` (sorted) grown by
    copy under mode ``adapt`` because no adapter fits them (a pooling slot; set from the template
    by :meth:`l2bg.learn.step.BindGrowStep.decide`, a function of slots, mode and template, so
    not part of :attr:`key`). Two decisions with the same :attr:`key` give the
    same network, whatever δ or rules led to them."""

    task: str
    bind_to: str | None
    slots: tuple[int, ...] = ()
    delta: float | None = None
    conflict: Mapping[str, CandidateScore] = field(default_factory=dict)
    reason: str = ""
    rsa_backend: str | None = None
    rules: Mapping[str, str | None] | None = None
    groups: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    num_groups: int | None = None
    mode: str = "copy"
    copied: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.copied and (self.mode != "adapt" or not set(self.copied) <= set(self.slots)
                            or list(self.copied) != sorted(set(self.copied))):
            raise L2BGError(f"slots {list(self.copied)} grown by copy under mode {self.mode!r}: "
                            f"give sorted, distinct grown slots of {list(self.slots)} under "
                            "mode 'adapt'")
        both = sorted(set(self.slots) & set(self.groups))
        if both:
            raise L2BGError(f"slots {both} are grown whole and by groups; give one of the two")
        if self.groups and self.num_groups is None:
            raise L2BGError("grown channel groups need num_groups, the G they were cut by")

    @property
    def key(self) -> list[Any]:
        """The identity of the network this decision builds (JSON): task, bind target, slots,
        and (only when there are any) grown groups and a grow mode other than ``copy``."""
        key: list[Any] = [self.task, self.bind_to, list(self.slots)]
        if self.groups:
            key.append({"groups": {str(s): list(g) for s, g in self.groups.items()},
                        "num_groups": self.num_groups})
        if self.mode != "copy":
            key.append({"mode": self.mode})
        return key

    def grown_names(self, slot_names: Sequence[str]) -> list[str]:
        """What grew, in the search's notation: whole slots by name, then each slot's grown
        channel groups as ``fc2[0,3]`` (:func:`l2bg.conflict.units.format_units`)."""
        return format_units([slot_names[s] for s in self.slots],
                            {slot_names[s]: g for s, g in self.groups.items()})

    @property
    def grows(self) -> bool:
        """Whether anything grows (whole slots or groups)."""
        return bool(self.slots or self.groups)


@dataclass
class TaskRecord:
    """A decision carried out: the task's row of the accuracy matrix (validation and test), the
    JointNet's size after it, the training losses, and its independent net's accuracies.
    ``position``: the task's place in the learning order (by default read from the rows). Read
    back from a results.json, ``independent_n_val`` and ``independent_params`` are None (the
    file does not hold them)."""

    decision: Decision
    val_row: list[float | None]
    test_row: list[float | None]
    params: int | None
    independent_val_acc: float | None
    independent_test_acc: float | None
    independent_n_val: int | None
    independent_params: int | None
    independent_cached: bool | None
    train_loss: list[float] | None = None
    position: int = -1

    def __post_init__(self) -> None:
        if self.position < 0:
            self.position = sum(v is not None for v in self.val_row) - 1

    @property
    def val_acc(self) -> float | None:
        return self.val_row[self.position]

    @property
    def test_acc(self) -> float | None:
        return self.test_row[self.position]

    def to_json(self, slot_names: Sequence[str]) -> dict[str, Any]:
        """The task's entry of ``results.json`` (grown slots by name)."""
        d = self.decision
        out: dict[str, Any] = {
            "name": d.task, "bind_to": d.bind_to,
            "grown_slots": [slot_names[s] for s in d.slots], "delta": d.delta,
            "conflict": {c: s.to_json() for c, s in d.conflict.items()},
            "rules": None if d.rules is None else dict(d.rules),
            "reason": d.reason,
            **_growth_json(d, slot_names),
            "independent_val_acc": self.independent_val_acc,
            "independent_test_acc": self.independent_test_acc,
            "independent_cached": self.independent_cached,
        }
        if self.train_loss is not None:
            out["train_loss"] = list(self.train_loss)
        out.update(val_acc=self.val_acc, test_acc=self.test_acc, params=self.params)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], slot_names: Sequence[str], position: int,
                  val_row: list[float | None], test_row: list[float | None]) -> TaskRecord:
        """A task entry of a results.json of the current version (see :func:`upgrade`), with
        its rows of the two accuracy matrices."""
        index = {s: i for i, s in enumerate(slot_names)}
        d = Decision(task=obj["name"], bind_to=obj["bind_to"],
                     slots=tuple(s if isinstance(s, int) else index[s]
                                 for s in obj["grown_slots"]), delta=obj["delta"],
                     conflict={c: CandidateScore.from_json(s)
                               for c, s in (obj.get("conflict") or {}).items()},
                     reason=obj.get("reason") or "", rules=obj.get("rules"),
                     groups={index[s]: tuple(int(g) for g in gs)
                             for s, gs in (obj.get("grown_groups") or {}).items()},
                     num_groups=obj.get("num_groups"), mode=obj.get("grow_mode") or "copy",
                     copied=tuple(sorted({index[s] for s in obj.get("grown_by_copy") or ()})))
        loss = obj.get("train_loss")
        return cls(decision=d, val_row=list(val_row), test_row=list(test_row),
                   params=obj.get("params"),
                   independent_val_acc=obj.get("independent_val_acc"),
                   independent_test_acc=obj.get("independent_test_acc"),
                   independent_n_val=None, independent_params=None,
                   independent_cached=obj.get("independent_cached"),
                   train_loss=None if loss is None else list(loss), position=position)

    def outcome_json(self) -> dict[str, Any]:
        """Everything but the decision (what a memo node stores for the step)."""
        return {"val_row": self.val_row, "test_row": self.test_row, "params": self.params,
                "independent_val_acc": self.independent_val_acc,
                "independent_test_acc": self.independent_test_acc,
                "independent_n_val": self.independent_n_val,
                "independent_params": self.independent_params,
                "independent_cached": self.independent_cached, "train_loss": self.train_loss}

    @classmethod
    def from_outcome(cls, decision: Decision, obj: Mapping[str, Any]) -> TaskRecord:
        return cls(decision=decision, val_row=list(obj["val_row"]),
                   test_row=list(obj["test_row"]), params=int(obj["params"]),
                   independent_val_acc=float(obj["independent_val_acc"]),
                   independent_test_acc=float(obj["independent_test_acc"]),
                   independent_n_val=int(obj["independent_n_val"]),
                   independent_params=int(obj["independent_params"]),
                   independent_cached=bool(obj["independent_cached"]),
                   train_loss=None if obj["train_loss"] is None else list(obj["train_loss"]))


@dataclass(eq=False)
class RunRecord(Mapping[str, Any]):
    """A learned task stream: what ran, one :class:`TaskRecord` per task in learning order, the
    metrics of docs/design.md, sizes, timings, and where it ran (:class:`Environment`).

    The accuracy matrices and the grow sequence are the task records' rows and decisions.
    ``config`` is set by ``l2bg run`` and the quality table; ``order`` and ``memo`` (with the
    ``decisions`` derived from the tasks) by a search trial. Read as a mapping (``record["gain"]``)
    it is the results.json it writes: read-only, for code written against the dict of 0.2."""

    benchmark: str
    strategy: str
    strategy_options: dict[str, Any]
    seed: int | None
    tasks: list[TaskRecord]
    slots: list[str]
    expandable_slots: list[str]
    avg_val_acc: float | None = None
    avg_test_acc: float | None = None
    bwt: float | None = None
    fwt: float | None = None
    gain: float | None = None
    gain_raw: float | None = None
    params: int | None = None
    params_independent: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    rsa_backend: str | None = None
    executor_backend: str | None = None
    cache: dict[str, int] | None = None
    wall_time_s: float | None = None
    order: list[str] | None = None
    memo: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    decathlon: dict[str, Any] | None = None  # a vdd run's decathlon_score(s) (§2.11)
    environment: Environment | None = None

    @classmethod
    def build(cls, tasks: Sequence[TaskRecord], *, benchmark: str, strategy: str,
              strategy_options: dict[str, Any], seed: int, slots: Sequence[str],
              expandable_slots: Sequence[str], timings: Mapping[str, float], wall_s: float,
              executor_backend: str | None, cache: dict[str, int],
              environment: Environment | None) -> RunRecord:
        """The record of ``tasks`` (one per learned task, in learning order): the metrics of
        docs/design.md from their accuracy rows and independent nets."""
        R_val = [r.val_row for r in tasks]
        R_test = [r.test_row for r in tasks]
        final_err = [1.0 - a for a in R_val[-1]]
        indep_err = [1.0 - r.independent_val_acc for r in tasks]
        n_val = [r.independent_n_val for r in tasks]
        backends = [r.decision.rsa_backend for r in tasks if r.decision.rsa_backend is not None]
        return cls(
            benchmark=benchmark, strategy=strategy, strategy_options=strategy_options,
            seed=seed, tasks=list(tasks), slots=list(slots),
            expandable_slots=list(expandable_slots),
            avg_val_acc=metrics.average_accuracy(R_val),
            avg_test_acc=metrics.average_accuracy(R_test),
            bwt=metrics.bwt(R_test),
            fwt=metrics.fwt(R_test, [r.independent_test_acc for r in tasks]),
            gain=metrics.gain(final_err, indep_err, n_val),
            gain_raw=metrics.gain_raw(final_err, indep_err, n_val),
            params=tasks[-1].params,
            params_independent=sum(r.independent_params for r in tasks),
            timings={k: round(v, 4) for k, v in sorted(timings.items())},
            rsa_backend=backends[-1] if backends else None,
            executor_backend=executor_backend, cache=dict(cache), wall_time_s=wall_s,
            environment=environment)

    # ------------------------------------------------------------------ derived
    @property
    def decisions(self) -> list[Decision]:
        return [t.decision for t in self.tasks]

    @property
    def acc_matrix(self) -> list[list[float | None]]:
        """R on test: row i after learning task i (§2.11)."""
        return [list(t.test_row) for t in self.tasks]

    @property
    def acc_matrix_val(self) -> list[list[float | None]]:
        return [list(t.val_row) for t in self.tasks]

    @property
    def params_ratio(self) -> float | None:
        """Parameters of the JointNet per parameter of the independent nets."""
        if not self.params_independent or self.params is None:
            return None
        return self.params / self.params_independent

    def grow_sequence(self) -> list[dict[str, Any]]:
        """``{task, bind_to, delta, grown_slots}`` per task: the grow sequence that ran (plus
        ``grown_groups``, ``num_groups``, ``grow_mode`` and ``grown_by_copy`` where a task grew
        groups or adapters)."""
        return [{"task": d.task, "bind_to": d.bind_to, "delta": d.delta,
                 "grown_slots": [self.slots[s] for s in d.slots],
                 **_growth_json(d, self.slots)} for d in self.decisions]

    def summary(self) -> dict[str, Any]:
        """The numbers a table of runs shows (accuracies and BWT in percent): what the quality
        table and ``l2bg run --seeds`` average over seeds."""
        return {"test_acc": _pct(self.avg_test_acc), "val_acc": _pct(self.avg_val_acc),
                "params_ratio": self.params_ratio, "params": self.params, "gain": self.gain,
                "bwt": _pct(self.bwt)}

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        """results.json: the keys of every earlier version in their order, then
        ``environment`` and ``record_version``."""
        out: dict[str, Any] = {
            "benchmark": self.benchmark, "strategy": self.strategy,
            "strategy_options": self.strategy_options, "seed": self.seed,
            "tasks": [t.to_json(self.slots) for t in self.tasks],
            "grow_sequence": self.grow_sequence(),
            "acc_matrix": self.acc_matrix, "acc_matrix_val": self.acc_matrix_val,
            "avg_val_acc": self.avg_val_acc, "avg_test_acc": self.avg_test_acc,
            "bwt": self.bwt, "fwt": self.fwt, "gain": self.gain, "gain_raw": self.gain_raw,
            "params": self.params, "params_independent": self.params_independent,
            "slots": list(self.slots), "expandable_slots": list(self.expandable_slots),
            "timings": dict(self.timings), "rsa_backend": self.rsa_backend,
            "executor_backend": self.executor_backend,
            "cache": None if self.cache is None else dict(self.cache),
            "wall_time_s": self.wall_time_s,
        }
        if self.order is not None:
            out.update(order=list(self.order), decisions=[d.key for d in self.decisions],
                       memo=None if self.memo is None else dict(self.memo))
        if self.config is not None:
            out["config"] = self.config
        out.update(self.decathlon or {})
        out["environment"] = None if self.environment is None else self.environment.to_json()
        out["record_version"] = RECORD_VERSION
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str = "results.json") -> RunRecord:
        """A results.json of any version (:func:`upgrade`); a malformed one is one line that
        names the first bad key (``where`` names the file)."""
        r = upgrade(obj, where)
        try:
            return cls._from_upgraded(r)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise L2BGError(f"{where}: a value of the wrong type or shape ({exc!r}); it was "
                            "edited or is not the results.json of `l2bg run`") from None

    @classmethod
    def _from_upgraded(cls, r: dict[str, Any]) -> RunRecord:
        slots = list(r.get("slots") or [])
        T = len(r["tasks"])
        rows_val, rows_test = r.get("acc_matrix_val"), r.get("acc_matrix")
        tasks = []
        for i, t in enumerate(r["tasks"]):
            own = ([None] * i + [t.get("val_acc")] + [None] * (T - i - 1),
                   [None] * i + [t.get("test_acc")] + [None] * (T - i - 1))
            tasks.append(TaskRecord.from_json(
                t, slots, i, _row(rows_val, i, T) or own[0], _row(rows_test, i, T) or own[1]))
        env = r.get("environment")
        return cls(
            benchmark=r["benchmark"], strategy=r["strategy"],
            strategy_options=r.get("strategy_options") or {}, seed=r.get("seed"), tasks=tasks,
            slots=slots, expandable_slots=list(r.get("expandable_slots") or slots),
            **{k: r.get(k) for k in ("avg_val_acc", "avg_test_acc", "bwt", "fwt", "gain",
                                     "gain_raw", "params", "params_independent", "rsa_backend",
                                     "executor_backend", "cache", "wall_time_s", "order",
                                     "memo", "config")},
            timings=r.get("timings") or {},
            decathlon={k: v for k, v in r.items() if k.startswith("decathlon_")} or None,
            environment=Environment.from_json(env) if isinstance(env, Mapping) else None)

    # ------------------------------------------------------------------ mapping (read-only)
    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())

    def keys(self):  # type: ignore[override]  # one to_json, not one per key
        return self.to_json().keys()

    def items(self):  # type: ignore[override]
        return self.to_json().items()

    def values(self):  # type: ignore[override]
        return self.to_json().values()


#: what a table of runs averages over seeds (keys of :meth:`RunRecord.summary`)
SEED_KEYS = ("test_acc", "val_acc", "params_ratio", "gain", "bwt")


def over_seeds(summaries: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``{key}_mean`` and ``{key}_sd`` over the seeds' :meth:`RunRecord.summary` for every key
    of :data:`SEED_KEYS`: the quality table's aggregation and ``l2bg run --seeds``'."""
    out: dict[str, float] = {}
    for key in SEED_KEYS:
        out[f"{key}_mean"], out[f"{key}_sd"] = metrics.mean_sd([s[key] for s in summaries])
    return out


def _growth_json(d: Decision, slot_names: Sequence[str]) -> dict[str, Any]:
    """What a decision grew beyond whole slots by copy, for results.json: ``grown_groups``
    ``{slot name: [groups]}`` and ``num_groups`` when groups grew, ``grow_mode`` when not
    ``copy``, ``grown_by_copy`` (slot names) when mode ``adapt`` grew some slots by copy;
    nothing else (a granularity-``layer`` copy run writes the keys it always did)."""
    out: dict[str, Any] = {}
    if d.groups:
        out["grown_groups"] = {slot_names[s]: list(g) for s, g in d.groups.items()}
        out["num_groups"] = d.num_groups
    if d.mode != "copy":
        out["grow_mode"] = d.mode
    if d.copied:
        out["grown_by_copy"] = [slot_names[s] for s in d.copied]
    return out


def _pct(x: float | None) -> float | None:
    return None if x is None else 100 * x


def _row(rows: Any, i: int, T: int) -> list[float | None] | None:
    """Row i of an accuracy matrix of a file, when it has one of the right length."""
    if isinstance(rows, list) and len(rows) == T and isinstance(rows[i], list) \
            and len(rows[i]) == T:
        return rows[i]
    return None
