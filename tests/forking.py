"""Run a function in a forked copy of the test process: a fresh process in milliseconds (torch,
optuna and l2bg are already imported), which may kill itself (fault injection) or drop to
another user (permission tests) without touching the test process."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

NOBODY = 65534


@dataclass
class Child:
    code: int | None  # exit status, None when killed by a signal
    signal: int | None  # the signal that killed it
    output: str  # stdout and stderr

    @property
    def killed(self) -> bool:
        return self.signal == signal.SIGKILL


def forked(fn: Callable[[], int | None], *, uid: int | None = None, umask: int | None = None,
           timeout: float = 300.0) -> Child:
    """Run ``fn`` in a child process; its return value is the exit status."""
    return _wait(*_start(fn, uid, umask), timeout)


def forked_all(fns: list[Callable[[], int | None]], *, timeout: float = 300.0) -> list[Child]:
    """Run every ``fn`` in a child process of its own, all at once (ranks of a process group);
    a child still running ``timeout`` seconds after the start is killed and reported hung."""
    started = [_start(fn, None, None) for fn in fns]
    deadline = time.monotonic() + timeout
    try:
        return [_wait(pid, log, max(0.0, deadline - time.monotonic())) for pid, log in started]
    except AssertionError:  # one hung: the others must not outlive the test either
        for pid, _ in started:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        raise


def _start(fn: Callable[[], int | None], uid: int | None, umask: int | None) -> tuple[int, str]:
    fd, log = tempfile.mkstemp(prefix="l2bg-child-", suffix=".log")
    os.close(fd)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            out = os.open(log, os.O_WRONLY | os.O_TRUNC)
            os.dup2(out, 1)
            os.dup2(out, 2)
            sys.stdout = sys.stderr = open(out, "w", buffering=1, closefd=False)  # noqa: SIM115
            if umask is not None:
                os.umask(umask)
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            result = fn()
            code = 0 if result is None else int(result)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - reported through the log
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
            finally:
                os._exit(code)
    return pid, log


def _wait(pid: int, log: str, timeout: float) -> Child:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child hung for {timeout}s")
        time.sleep(0.005)
    with open(log, errors="replace") as f:
        text = f.read()
    os.unlink(log)
    if os.WIFSIGNALED(status):
        return Child(None, os.WTERMSIG(status), text)
    return Child(os.WEXITSTATUS(status), None, text)
