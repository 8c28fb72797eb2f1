"""What a search trial keeps of its run record: its Optuna user attributes, typed.

A trial stores a projection of its :class:`l2bg.learn.record.RunRecord` (metrics, sizes, grow
sequence, the independent nets' accuracies), the memo counters, and where its JointNet lies, as
user attributes: what optuna-dashboard shows and what the reports (``pareto.json``,
``trials.csv``, the plots) read. :meth:`TrialAttrs.of` builds them from an evaluated sequence,
:meth:`TrialAttrs.to_attrs` gives the attribute names and values stored since l2bg 0.1, and
:meth:`TrialAttrs.read` reads them back from a trial of any state (what a trial lacks is None).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from l2bg.search.memo import Outcome

__all__ = ["TrialAttrs"]


@dataclass
class TrialAttrs:
    """The user attributes of one trial (every field None where the trial has none)."""

    gain: float | None = None
    gain_raw: float | None = None
    avg_val_acc: float | None = None
    avg_test_acc: float | None = None
    bwt: float | None = None
    fwt: float | None = None
    params: int | None = None
    params_independent: int | None = None
    params_ratio: float | None = None
    order: list[str] | None = None
    strategy: str | None = None
    strategy_options: dict[str, Any] | None = None
    grow_sequence: list[dict[str, Any]] | None = None
    decisions_key: str | None = None
    net_dir: str | None = None
    wall_s: float | None = None
    independent_val_acc: list[float] | None = None
    independent_test_acc: list[float] | None = None
    environment: dict[str, Any] | None = None
    # memo counters (l2bg.search.memo.MemoRunner.run's stats)
    memo_hits: int | None = None
    memo_misses: int | None = None
    memo_prefix_len: int | None = None
    memo_full_hit: bool | None = None
    memo_scores_hits: int | None = None
    memo_scores_misses: int | None = None
    indep_trained: int | None = None
    memo_node_loads: int | None = None
    memo_lock_waits: int | None = None
    # set by the study around the run
    baseline: str | None = None
    initial: str | None = None
    retry_of: int | None = None
    worker: str | None = None

    @classmethod
    def of(cls, outcome: Outcome) -> TrialAttrs:
        """The attributes of an evaluated grow sequence."""
        r = outcome.record
        stats = {f"memo_{k}" if not k.startswith(("memo", "indep")) else k: v
                 for k, v in outcome.stats.items()}
        return cls(
            gain=r.gain, gain_raw=r.gain_raw, avg_val_acc=r.avg_val_acc,
            avg_test_acc=r.avg_test_acc, bwt=r.bwt, fwt=r.fwt, params=r.params,
            params_independent=r.params_independent, params_ratio=r.params_ratio,
            order=r.order, strategy=r.strategy, strategy_options=r.strategy_options,
            grow_sequence=r.grow_sequence(), decisions_key=outcome.key,
            net_dir=None if outcome.net_dir is None else str(outcome.net_dir),
            wall_s=round(r.wall_time_s, 4),
            independent_val_acc=[t.independent_val_acc for t in r.tasks],
            independent_test_acc=[t.independent_test_acc for t in r.tasks],
            environment=None if r.environment is None else r.environment.to_json(),
            **{k: v for k, v in stats.items() if k in _NAMES})

    def to_attrs(self) -> dict[str, Any]:
        """The attributes a trial stores for its run (the labels are set by the study)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _LABELS}

    @classmethod
    def read(cls, attrs: Mapping[str, Any]) -> TrialAttrs:
        """A trial's attributes (``trial.user_attrs``); names this version does not know (the
        lease of the heartbeat, for one) are not part of them."""
        return cls(**{k: attrs.get(k) for k in _NAMES})


_NAMES = frozenset(f.name for f in fields(TrialAttrs))
_LABELS = frozenset({"baseline", "initial", "retry_of", "worker"})
