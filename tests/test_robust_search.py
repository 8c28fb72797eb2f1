"""Searches that share an --out, and workers that die (issue 14, item 6); one-line errors of the
search command (item 9)."""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from test_search import _wait_for

from l2bg.errors import L2BGError
from l2bg.fileio import atomic_write
from l2bg.search import main

ROOT = Path(__file__).resolve().parents[1]


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


def _running(out):
    import optuna

    try:
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))
        study = optuna.load_study(study_name="s", storage=storage)
    except Exception:  # noqa: BLE001 - not created yet
        return []
    return [t for t in study.trials if t.state.name == "RUNNING" and len(t.params) == 2]


@pytest.mark.slow
def test_a_killed_worker_still_gets_its_report(tmp_path, tiny_mnist):
    out = tmp_path / "o"
    args = [sys.executable, "-m", "l2bg.search", "--benchmark", "pmnist", "--data-root",
            str(tiny_mnist), "--tasks", "3", "--epochs", "1", "--rsa-samples", "10",
            "--threads", "1", "--quiet", "--no-baselines", "--sampler", "random", "--space",
            "per-task-delta", "--study-name", "s", "--cache-dir", str(tmp_path / "c"),
            "--out", str(out), "--workers", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT),
               L2BG_SEARCH_TRIAL_DELAY="1.5")

    def kill_workers_mid_trial(proc, how_many):
        _wait_for(lambda: len(_running(out)) == 2, 120, "both workers running a trial")
        kids = [w for w in sorted(_children(proc.pid))
                if b"spawn_main" in Path(f"/proc/{w}/cmdline").read_bytes()]  # not the tracker
        assert len(kids) == 2, kids
        for w in kids[-how_many:]:
            os.kill(w, signal.SIGKILL)
        return kids[-how_many:]

    # one worker killed: the other completes every trial; the parent writes the report and
    # names the dead worker in one warning line
    proc = subprocess.Popen([*args, "--trials", "4"], env=env, cwd=ROOT, stderr=subprocess.PIPE,
                            text=True)
    killed = kill_workers_mid_trial(proc, 1)
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
    proc = subprocess.Popen([*args, "--trials", "8"], env=env, cwd=ROOT, stderr=subprocess.PIPE,
                            text=True)
    kill_workers_mid_trial(proc, 2)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    [line] = [x for x in err.splitlines() if x.startswith("l2bg:")]
    assert line.startswith("l2bg: error: search worker") and "rerun the same command" in line
    assert json.loads((out / "pareto.json").read_text())["trials"]["complete"] >= 4


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
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("l2bg: error:") and match in err and "\n" not in err
    assert (tmp_path / "afile").read_text() == "x"


def test_report_of_a_hand_edited_search_json_is_one_line(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    for meta in ([1, 2], {"storage": 5, "study_name": "s"}, {"storage": "journal:study.journal"},
                 {"storage": "journal:study.journal", "study_name": ["s"]}, "text"):
        (out / "search.json").write_text(json.dumps(meta))
        assert main(["--report", str(out)]) == 2, meta
        err = capsys.readouterr().err.strip()
        assert err.startswith("l2bg: error:") and "search.json" in err and "\n" not in err
    with pytest.raises(L2BGError):
        from l2bg.search.report import report_dir
        report_dir(out)
