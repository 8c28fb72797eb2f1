"""Searches that share an --out, and workers that die (issue 14, item 6; issue 22, items 6 and 7,
killed and stopped workers); one-line errors of the search command (item 9)."""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import wait_for as _wait_for

from l2bg.base.errors import L2BGError
from l2bg.base.fileio import atomic_write
from l2bg.cli import main as l2bg_main

ROOT = Path(__file__).resolve().parents[2]


def test_concurrent_writers_of_one_file_never_collide(tmp_path):
    """Unique temporary names: many writers of one path each leave a whole file, none fails."""
    target = tmp_path / "pareto.json"
    errors, contents = [], [f"writer {k} " * 2000 for k in range(8)]

    def write(text):
        try:
            for _ in range(25):
                atomic_write(target, text)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)
    threads = [threading.Thread(target=write, args=(c,)) for c in contents]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and target.read_text() in contents
    assert [p.name for p in tmp_path.iterdir()] == ["pareto.json"]  # no temporary left


def test_two_searches_writing_reports_into_one_out(tmp_path):
    """Two processes rewriting every report of one --out at once (the issue's crash)."""
    optuna = pytest.importorskip("optuna")
    from l2bg.search.report import write_report
    from l2bg.search.storage import open_storage

    storage = open_storage(f"journal:{tmp_path / 'study.journal'}")
    study = optuna.create_study(storage=storage, study_name="s",
                                directions=["maximize", "minimize"])
    for k in range(3):
        t = study.ask()
        for key, v in {"gain": float(k), "params": 100 + k, "params_ratio": 1.0 - k / 10,
                       "avg_val_acc": 0.5}.items():
            t.set_user_attr(key, v)
        study.tell(t, [float(k), 100.0 + k])
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for _ in range(4):
                    write_report(study, tmp_path, "journal")
            except BaseException:  # noqa: BLE001 - the exit code says it
                code = 1
            os._exit(code)
        pids.append(pid)
    assert [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids] == [0, 0]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["hypervolume.png", "pareto.json", "pareto.png", "study.journal",
                     "trials.csv"]
    assert json.loads((tmp_path / "pareto.json").read_text())["trials"]["complete"] == 3


def _children(pid):
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(d))
    return kids


def _study_at(url):
    import optuna

    if url.startswith("journal:"):
        url = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(url[len("journal:"):]))
    return optuna.load_study(study_name="s", storage=url)


def _running(url):
    """The RUNNING trials that hold all their parameters and name their worker."""
    if not Path(url.removeprefix("journal:").removeprefix("sqlite:///")).exists():
        return []  # not created yet (and not to be created here)
    try:
        trials = _study_at(url).trials
    except Exception:  # noqa: BLE001 - not created yet
        return []
    return [t for t in trials if t.state.name == "RUNNING" and len(t.params) == 2
            and "worker" in t.user_attrs]


def _search(tmp_path, tiny_mnist, url, *extra):
    """A 2-worker search of the smallest kind on storage ``url``, each trial held for 1.5 s
    (while alive)."""
    args = [sys.executable, "-m", "l2bg.search", "--benchmark", "pmnist", "--data-root",
            str(tiny_mnist), "--tasks", "3", "--epochs", "1", "--rsa-samples", "10",
            "--threads", "1", "--quiet", "--no-baselines", "--sampler", "random", "--space",
            "per-task-delta", "--study-name", "s", "--cache-dir", str(tmp_path / "c"),
            "--out", str(tmp_path / "o"), "--workers", "2", *extra]
    if not url.startswith("journal:"):  # else the default, journal:OUT/study.journal
        args += ["--storage", url]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT),
               L2BG_SEARCH_TRIAL_DELAY="1.5")
    return subprocess.Popen(args, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)


def _signal_workers(proc, url, how_many, sig):
    """Send ``sig`` to the last ``how_many`` workers once both run a trial; their pids."""
    _wait_for(lambda: len(_running(url)) == 2, 120, "both workers running a trial")
    kids = [w for w in sorted(_children(proc.pid))
            if b"spawn_main" in Path(f"/proc/{w}/cmdline").read_bytes()]  # not the tracker
    assert len(kids) == 2, kids
    for w in kids[-how_many:]:
        os.kill(w, sig)
    return kids[-how_many:]


def _trial_of(url, pid):
    [t] = [t for t in _running(url) if t.user_attrs["worker"].split(":")[-2] == str(pid)]
    return t.number


@pytest.mark.slow
def test_a_killed_worker_still_gets_its_report(tmp_path, tiny_mnist):
    out = tmp_path / "o"
    url = f"journal:{out / 'study.journal'}"
    # one worker killed: the other completes every trial; the parent writes the report and
    # names the dead worker in one warning line
    proc = _search(tmp_path, tiny_mnist, url, "--trials", "4")
    killed = _signal_workers(proc, url, 1, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    [line] = [x for x in err.splitlines() if x.startswith("l2bg:")]
    assert line.startswith("l2bg: warning: search worker") and "SIGKILL" in line
    assert f"pid {killed[0]}" in line
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] for r in rows].count("COMPLETE") == 4
    assert [r["state"] for r in rows].count("FAIL") == 1
    # every worker killed: fewer trials than asked; still a report, and one error line
    (out / "pareto.json").unlink()
    proc = _search(tmp_path, tiny_mnist, url, "--trials", "8")
    _signal_workers(proc, url, 2, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    [line] = [x for x in err.splitlines() if x.startswith("l2bg:")]
    assert line.startswith("l2bg: error: search worker") and "rerun the same command" in line
    assert json.loads((out / "pareto.json").read_text())["trials"]["complete"] >= 4


@pytest.mark.slow
def test_a_killed_worker_on_sqlite_is_retried_and_every_trial_completes(tmp_path, tiny_mnist):
    """Issue 22 item 6: on a heartbeat storage the survivor does not stop at 3 of 4 trials; it
    fails the dead worker's trial at once (its process on this host is gone), retries it and
    completes all 4."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    proc = _search(tmp_path, tiny_mnist, url, "--trials", "4")
    [pid] = _signal_workers(proc, url, 1, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    [line] = [x for x in err.splitlines() if x.startswith("l2bg:")]
    assert line.startswith("l2bg: warning: search worker") and f"pid {pid}" in line
    trials = _study_at(url).trials
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 4 and states.count("FAIL") == 1, states
    [failed] = [t for t in trials if t.state.name == "FAIL"]
    assert failed.user_attrs["worker"].split(":")[-2] == str(pid)
    [retry] = [t for t in trials if t.user_attrs.get("retry_of") == failed.number]
    assert retry.state.name == "COMPLETE" and retry.params == failed.params


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_a_worker_stopped_past_its_lease_drops_its_trial_in_one_line(tmp_path, tiny_mnist,
                                                                      storage):
    """Issue 22 item 7: a worker paused (SIGSTOP) past its lease has its trial failed and
    retried by the other; resumed, it finds the trial taken over, drops its result with one
    warning line (no traceback) and the search completes every trial with exit 0."""
    url = (f"journal:{tmp_path / 'o' / 'study.journal'}" if storage == "journal"
           else f"sqlite:///{tmp_path / 'study.db'}")
    proc = _search(tmp_path, tiny_mnist, url, "--trials", "4", "--lease-seconds", "3")
    [pid] = _signal_workers(proc, url, 1, signal.SIGSTOP)
    try:
        number = _trial_of(url, pid)
        _wait_for(lambda: _study_at(url).trials[number].state.name == "FAIL", 120,
                  "the stopped worker's trial failed by the other")
    finally:
        os.kill(pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"l2bg: warning: [worker 1] trial {number} was failed and "
                               "retried by another worker") and "dropped" in lines[0]
    trials = _study_at(url).trials
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 4 and states.count("FAIL") == 1, states
    assert trials[number].state.name == "FAIL"
    [retry] = [t for t in trials if t.user_attrs.get("retry_of") == number]
    assert retry.state.name == "COMPLETE" and retry.params == trials[number].params


@pytest.mark.parametrize("extra, match", [
    (["--storage", "sqlite://"], "in-memory SQLite"),
    (["--storage", "sqlite:///:memory:"], "in-memory SQLite"),
    (["--out", "FILE"], "is a file"),
])
def test_search_input_faults_are_one_line(tmp_path, capsys, tiny_mnist, extra, match):
    (tmp_path / "afile").write_text("x")
    extra = [str(tmp_path / "afile") if e == "FILE" else e for e in extra]
    args = ["--benchmark", "pmnist", "--data-root", str(tiny_mnist), "--tasks", "2",
            "--trials", "1", "--cache-dir", str(tmp_path / "c"), "--quiet"]
    if "--out" not in extra:
        args += ["--out", str(tmp_path / "o")]
    assert l2bg_main(["search", *args, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("l2bg: error:") and match in err and "\n" not in err
    assert (tmp_path / "afile").read_text() == "x"


def test_report_of_a_hand_edited_search_json_is_one_line(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    for meta in ([1, 2], {"storage": 5, "study_name": "s"}, {"storage": "journal:study.journal"},
                 {"storage": "journal:study.journal", "study_name": ["s"]}, "text"):
        (out / "search.json").write_text(json.dumps(meta))
        assert l2bg_main(["search", "--report", str(out)]) == 2, meta
        err = capsys.readouterr().err.strip()
        assert err.startswith("l2bg: error:") and "search.json" in err and "\n" not in err
    with pytest.raises(L2BGError):
        from l2bg.search.report import report_dir
        report_dir(out)


@pytest.mark.parametrize("url, installed, want", [
    ("postgresql+psycopg2://u:pw@h/db", {"psycopg"},
     ["driver psycopg2 is not installed", "pip install psycopg2-binary",
      "or use postgresql+psycopg://"]),
    ("postgresql+psycopg://u:pw@h/db", {"psycopg2", "pg8000"},
     ["driver psycopg is not installed", "pip install 'psycopg[binary]'",
      "or use postgresql+psycopg2://"]),
    ("postgresql+pg8000://u:pw@h/db", set(), ["driver pg8000 is not installed",
                                              "pip install pg8000"]),
    ("mysql://u:pw@h/db", {"pymysql"}, ["driver MySQLdb is not installed",
                                        "pip install mysqlclient", "or use mysql+pymysql://"]),
])
def test_a_missing_database_driver_names_its_package_and_a_url_that_works(
        monkeypatch, url, installed, want):
    """Issue 22: the hint names the missing driver's package and suggests a URL form whose
    driver is installed, never the URL's own form."""
    optuna = pytest.importorskip("optuna")
    from l2bg.search import storage

    def no_driver(*args, **kwargs):
        raise ImportError("Failed to import DB access module for the specified storage URL.")
    monkeypatch.setattr(optuna.storages, "RDBStorage", no_driver)
    monkeypatch.setattr(storage, "_importable", lambda module: module in installed)
    with pytest.raises(L2BGError) as exc:
        storage.open_storage(url)
    msg = str(exc.value)
    assert "\n" not in msg and ":pw@" not in msg
    assert all(w in msg for w in want), msg
    assert ("or use" in msg) == bool(installed)
    assert f"use {url.split('://')[0]}://" not in msg


def test_a_psycopg2_url_without_psycopg2_is_one_line_naming_it():
    """The same, unmocked, with the drivers this environment has."""
    pytest.importorskip("optuna")
    from l2bg.search import storage

    if storage._importable("psycopg2"):
        pytest.skip("psycopg2 is installed here")
    with pytest.raises(L2BGError) as exc:
        storage.open_storage("postgresql+psycopg2://u:pw@127.0.0.1:1/db")
    msg = str(exc.value)
    assert "driver psycopg2 is not installed; pip install psycopg2-binary" in msg
    assert "use postgresql+psycopg2://" not in msg
    assert ("or use postgresql+psycopg://" in msg) == storage._importable("psycopg")
