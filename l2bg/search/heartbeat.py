"""Liveness of running trials: a killed worker's trial is failed and its parameters retried.

One mechanism per storage kind:

* storages with Optuna heartbeats (RDB: PostgreSQL, MySQL, SQLite) use them: a thread records the
  trial's heartbeat, ``optuna.storages.fail_stale_trials`` fails trials whose heartbeat is older
  than the grace period (``--lease-seconds``) and the storage's stale-trial callback re-enqueues
  their parameters;
* storages without (the journal file) use our lease: the trial's user attributes ``worker``
  (``host:pid:start``) and ``lease_until``, refreshed every lease/4 seconds; a RUNNING trial whose
  lease expired is failed and re-enqueued by :func:`reap_stale_trials`.

Either way :func:`reap_stale_trials` also fails at once a RUNNING trial whose ``worker`` on this
host is gone, and, after the lease, one that never recorded a worker (killed right after
``ask``). A worker whose own trial was failed that way while it was paused past its lease finds
it :func:`taken_over` when it resumes and drops its result: the retry stands in for it.

Every trial records its ``worker`` either way (shown in trials.csv).
"""

from __future__ import annotations

import copy
import threading
import time
import warnings
from typing import Any

from l2bg.base.locks import worker_dead, worker_id

__all__ = ["Liveness", "give_back", "has_heartbeat", "reap_stale_trials", "register_worker",
           "retry_callback", "taken_over"]


def has_heartbeat(storage: Any) -> bool:
    """Whether ``storage`` has Optuna heartbeats enabled (public API: the heartbeat interval)."""
    get = getattr(storage, "get_heartbeat_interval", None)
    return callable(get) and get() is not None


def retry_callback(max_retry: int) -> Any:
    """Optuna's RetryHeartbeatStaleTrialCallback, but the re-enqueued trial does not inherit
    the dead worker's lease."""
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


class Liveness:
    """Keeps a running trial alive (heartbeat or lease, by storage kind) until stopped."""

    def __init__(self, trial: Any, storage: Any, lease_s: float) -> None:
        self.trial, self.storage, self.lease_s = trial, storage, lease_s
        self.heartbeat = has_heartbeat(storage)
        if self.heartbeat:
            self.period = float(storage.get_heartbeat_interval())
            # Optuna has no public trial id on a Trial (ask/tell outside study.optimize); the
            # heartbeat API of the storage takes it, so this one private attribute is read.
            self._trial_id = trial._trial_id
        else:
            self.period = max(0.2, lease_s / 4)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="l2bg-liveness")

    def _beat(self) -> None:
        if self.heartbeat:
            self.storage.record_heartbeat(self._trial_id)
        else:
            self.trial.set_user_attr("lease_until", time.time() + self.lease_s)

    def start(self) -> Liveness:
        if self.heartbeat:  # a heartbeat first: a trial killed before it is reaped by its age
            self._beat()
            self.trial.set_user_attr("worker", worker_id())
        else:
            self.trial.set_user_attr("worker", worker_id())
            self.trial.set_user_attr("lease_trial", self.trial.number)
            self._beat()
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self._beat()
            except Exception:  # noqa: BLE001 - a missed refresh is retried next period
                pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def reap_stale_trials(study: Any, storage: Any, lease_s: float, max_retry: int = 3
                      ) -> list[int]:
    """Fail every RUNNING trial that is no longer alive and re-enqueue its parameters; returns
    the numbers of the trials failed here (heartbeat storages also fail stale heartbeats, and
    report those through their callback). Safe to run from many workers: only the one whose
    FAIL lands re-enqueues."""
    import optuna
    from optuna.trial import TrialState

    heartbeat = has_heartbeat(storage)
    if heartbeat:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)
    now = time.time()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = t.datetime_start.timestamp() if t.datetime_start else now
        if heartbeat:  # a live one beats (Optuna judged the beats above) and names its worker
            worker = t.user_attrs.get("worker")
            stale = worker_dead(worker) or (worker is None and now - started > lease_s)
        else:
            own = t.user_attrs.get("lease_trial") == t.number
            until = t.user_attrs.get("lease_until") if own else None
            stale = (worker_dead(t.user_attrs.get("worker") if own else None)
                     or (until is not None and until < now)
                     or (until is None and now - started > lease_s))
        if stale and give_back(study, t.number, max_retry):
            failed.append(t.number)
    return failed


def give_back(study: Any, number: int, max_retry: int) -> bool:
    """Fail RUNNING trial ``number`` and re-enqueue its parameters; False (nothing done) when
    it finished meanwhile or another worker failed it first."""
    from optuna.trial import TrialState

    try:
        study.tell(number, state=TrialState.FAIL)
    except Exception:  # noqa: BLE001 - finished meanwhile, or failed by another worker
        return False
    retry_callback(max_retry)(study, trial_by_number(study, number))
    return True


def register_worker(study: Any) -> int:
    """Record this worker in the study (user attribute ``worker:<host:pid:start>``) and return
    its rank by registration time: the sampler of rank k is seeded with seed + 1000·k, so the
    first worker of a fresh study reproduces a single-process run and later workers (other
    processes, machines or a resumed run) do not repeat its random start-up points."""
    me = f"worker:{worker_id()}"
    study.set_user_attr(me, time.time())
    regs = sorted((v, k) for k, v in study.user_attrs.items() if k.startswith("worker:"))
    return [k for _, k in regs].index(me)


def taken_over(study: Any, trial: Any) -> bool:
    """Whether this worker's ``trial`` was finished by another worker (failed as stale while
    this one was paused past its lease, then retried)."""
    from optuna.trial import TrialState

    try:
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    except Exception:  # noqa: BLE001 - the storage failed: the caller's error says more
        return False
    return all(t.number != trial.number for t in running)


def trial_by_number(study: Any, number: int) -> Any:
    for t in study.get_trials(deepcopy=True):
        if t.number == number:
            return t
    raise KeyError(number)
