"""The Python API keeps what the command line keeps: a Learner caches independent nets by the
CLI's rule (cache_dir, else $L2BG_CACHE_DIR, else the user cache directory; cache=False opts
out) and shows progress unless quiet (a bar on a terminal, one line per task otherwise)."""

from __future__ import annotations

import sys

import pytest

from l2bg.base.errors import ParamError
from l2bg.cli import main
from l2bg.learn.independent import IndependentCache
from l2bg.learn.learner import Learner, LogLines
from l2bg.learn.settings import Settings


@pytest.fixture(scope="module")
def built(tiny_mnist):
    return Settings("pmnist", data_root=str(tiny_mnist), tasks=2, epochs=1).build()


def _learner(built, **kw):
    return Learner(built.bench.tasks, built.template, built.train, benchmark=built.bench.name,
                   rsa_samples=10, **kw)


@pytest.mark.parametrize("case", ["env", "cache_dir", "xdg", "off", "given"])
def test_the_cache_follows_the_command_lines_rule(case, built, tmp_path, monkeypatch):
    monkeypatch.setenv("L2BG_CACHE_DIR", str(tmp_path / "env"))
    kw, want = {}, tmp_path / "env"
    if case == "cache_dir":
        kw, want = {"cache_dir": tmp_path / "mine"}, tmp_path / "mine"
    elif case == "xdg":
        monkeypatch.delenv("L2BG_CACHE_DIR")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        want = tmp_path / "xdg" / "l2bg"
    elif case == "off":
        kw, want = {"cache": False}, None
    elif case == "given":
        kw, want = {"cache": IndependentCache(tmp_path / "own")}, tmp_path / "own"
    assert _learner(built, quiet=True, **kw).cache.root == want


def test_a_cache_that_is_not_one_is_refused(built):
    with pytest.raises(ParamError, match="cache must be an IndependentCache"):
        _learner(built, cache="yes")


def test_a_script_reuses_what_l2bg_run_cached(built, tiny_mnist, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    assert main(["run", "--benchmark", "pmnist", "--data-root", str(tiny_mnist), "--tasks", "2",
                 "--epochs", "1", "--strategy", "shared", "--rsa-samples", "10", "--cache-dir",
                 str(cache), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    monkeypatch.setenv("L2BG_CACHE_DIR", str(cache))
    record = _learner(built, quiet=True).run("shared").record
    assert record["cache"] == {"hits": 2, "misses": 0}


@pytest.mark.parametrize("quiet, tty, lines", [(False, False, 2), (True, False, 0),
                                               (False, True, 0)])
def test_progress_is_one_line_per_task_without_a_terminal(quiet, tty, lines, built,
                                                          monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty, raising=False)
    learner = _learner(built, cache=False, quiet=quiet)
    assert sum(isinstance(h, LogLines) for h in learner.plugins) == (lines > 0)
    learner.run("shared")
    out = capsys.readouterr().out
    assert len([ln for ln in out.splitlines() if "] task " in ln]) == lines
