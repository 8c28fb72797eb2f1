"""``l2bg run --out`` never deletes or overwrites a file it did not write, and claims the
directory atomically (issue 14, items 2 and 9)."""

import json
import os
import shutil
import socket
import tempfile

import pytest
import torch
from conftest import write_tiny_mnist
from forking import NOBODY, forked

import l2bg.learn.independent  # noqa: F401 - imported before fit is patched (it binds fit)
import l2bg.learn.step  # noqa: F401
from l2bg.cli import main
from l2bg.cli.run import CLAIM, OUTPUTS, STAGING


@pytest.fixture
def argv(tiny_mnist):
    def make(out, *extra):
        return ["run", "--benchmark", "pmnist", "--data-root", str(tiny_mnist), "--tasks", "3",
                "--strategy", "full", "--epochs", "1", "--batch-size", "32", "--rsa-samples",
                "10", "--no-cache", "--quiet", "--out", str(out), *extra]
    torch.set_num_threads(1)
    return make


def _user_files(out):
    out.mkdir(parents=True, exist_ok=True)
    (out / "notes.txt").write_text("my notes")
    (out / "old").mkdir(exist_ok=True)
    (out / "old" / "jointnet.json").write_text("{}")
    return {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}


def _left(out, user):
    """Everything in ``out`` besides the user's own files."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if p.is_file() and p not in user)


def _no_training(monkeypatch):
    import l2bg.learn.training

    def fail(*a, **k):
        raise AssertionError("trained before the check")
    monkeypatch.setattr(l2bg.learn.training, "fit", fail)
    monkeypatch.setattr("l2bg.learn.independent.fit", fail)
    monkeypatch.setattr("l2bg.learn.step.fit", fail, raising=False)


def test_a_run_into_a_directory_with_other_files_keeps_them(tmp_path, argv, capsys):
    out = tmp_path / "out"
    user = _user_files(out)
    assert main(argv(out)) == 0
    assert all(p.read_bytes() == b for p, b in user.items())
    assert _left(out, user) == sorted(OUTPUTS)  # no claim or staging left behind
    assert json.loads((out / "results.json").read_text())["strategy"] == "full"


@pytest.mark.parametrize("held", OUTPUTS)
def test_an_out_holding_an_output_is_refused_before_any_work(tmp_path, argv, capsys, held,
                                                              monkeypatch):
    out = tmp_path / "out"
    user = _user_files(out)
    (out / held).write_text("the user's own")
    user[out / held] = b"the user's own"
    _no_training(monkeypatch)
    assert main(argv(out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("l2bg: error:") and held in err and "\n" not in err
    assert all(p.read_bytes() == b for p, b in user.items()) and not _left(out, user)


@pytest.mark.parametrize("stage", ["training", "publishing"])
def test_an_interrupted_run_removes_only_what_it_wrote(tmp_path, argv, capsys, monkeypatch,
                                                       stage):
    import l2bg.base.outdir

    out = tmp_path / "out"
    user = _user_files(out)
    if stage == "training":
        import l2bg.learn.training

        real = l2bg.learn.training.fit
        calls = []

        def fit(*a, **k):
            calls.append(1)
            if len(calls) % 3 == 0:
                raise KeyboardInterrupt
            return real(*a, **k)
        for where in ("l2bg.learn.training", "l2bg.learn.independent", "l2bg.learn.step"):
            monkeypatch.setattr(f"{where}.fit", fit, raising=False)
    else:  # after jointnet.* are published, before results.json
        real_link = l2bg.base.outdir.link_new

        def link(src, dst):
            if os.path.basename(dst) == "results.json":
                raise KeyboardInterrupt
            real_link(src, dst)
        monkeypatch.setattr(l2bg.base.outdir, "link_new", link)
    assert main(argv(out)) == 130
    assert all(p.read_bytes() == b for p, b in user.items())
    assert _left(out, user) == [] and not (out / STAGING).exists()
    # a directory the run created itself is removed again
    fresh = tmp_path / "fresh"
    assert main(argv(fresh)) == 130 and not fresh.exists()


def test_two_runs_racing_on_one_out_exactly_one_proceeds(tmp_path, argv):
    out = tmp_path / "out"
    user = _user_files(out)
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            fd = os.open(str(tmp_path / f"err-{os.getpid()}"), os.O_WRONLY | os.O_CREAT)
            os.dup2(fd, 2)
            import sys
            sys.stderr = open(fd, "w", closefd=False)  # noqa: SIM115
            code = main(argv(out))
            sys.stderr.flush()
            os._exit(code)
        pids.append(pid)
    codes = sorted(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids)
    errs = [(tmp_path / f"err-{p}").read_text().strip() for p in pids]
    assert codes == [0, 2]
    [err] = [e for e in errs if e]
    assert "in use by another l2bg run" in err and "\n" not in err
    assert _left(out, user) == sorted(OUTPUTS)
    assert all(p.read_bytes() == b for p, b in user.items())


def test_a_killed_runs_claim_is_taken_over(tmp_path, argv):
    """A run SIGKILLed after publishing jointnet.*: its claim names a dead process, its staging
    directory still holds the published files; the next run removes exactly those and runs."""
    out = tmp_path / "out"
    user = _user_files(out)
    staging = out / STAGING
    staging.mkdir()
    for name in ("jointnet.json", "jointnet.safetensors"):
        (staging / name).write_text("dead run's")
        os.link(staging / name, out / name)
    (out / CLAIM).write_text(json.dumps({"worker": f"{socket.gethostname()}:999999:1"}))
    assert main(argv(out)) == 0
    assert _left(out, user) == sorted(OUTPUTS)
    assert (out / "jointnet.json").read_text() != "dead run's"
    assert all(p.read_bytes() == b for p, b in user.items())


def test_an_out_that_is_a_file_is_one_line_before_any_work(tmp_path, argv, capsys, monkeypatch):
    f = tmp_path / "afile"
    f.write_text("x")
    _no_training(monkeypatch)
    assert main(argv(f)) == 2
    err = capsys.readouterr().err.strip()
    assert "is a file" in err and "\n" not in err and f.read_text() == "x"


@pytest.fixture
def public_dir():
    d = tempfile.mkdtemp(prefix="l2bg-public-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


def _as_nobody(argv_list, monkeypatch):
    _no_training(monkeypatch)
    child = forked(lambda: main(argv_list), uid=NOBODY)
    assert child.code == 2, child.output
    [line] = child.output.strip().splitlines()
    assert line.startswith("l2bg: error:")
    return line


@as_root
def test_an_unwritable_out_is_one_line_before_any_work(public_dir, argv, monkeypatch):
    data = write_tiny_mnist(os.path.join(public_dir, "data"))
    out = os.path.join(public_dir, "theirs")
    os.mkdir(out, 0o755)  # root's, not writable by nobody
    args = argv(out)
    args[args.index("--data-root") + 1] = str(data)
    line = _as_nobody(args, monkeypatch)
    assert line.startswith("l2bg: error: --out") and "not writable" in line
    assert os.listdir(out) == []


@as_root
@pytest.mark.parametrize("mode", [0o700, 0o711])
def test_an_unreadable_data_root_is_one_line(public_dir, argv, monkeypatch, mode):
    data = write_tiny_mnist(os.path.join(public_dir, "data"))
    os.chmod(data, mode)  # 0700: cannot enter; 0711: cannot list
    args = argv(os.path.join(public_dir, "out"))
    args[args.index("--data-root") + 1] = str(data)
    line = _as_nobody(args, monkeypatch)
    assert str(data) in line and ("cannot be read" in line or "Permission denied" in line)


@as_root
def test_a_cache_owned_by_another_user(public_dir, argv, monkeypatch):
    """Its entries follow the umask (0644), so another user reads them; a miss, which must
    write, is one line naming the cache before that net is trained."""
    cache = os.path.join(public_dir, "cache")
    data = write_tiny_mnist(os.path.join(public_dir, "data"))

    def args(out, *extra):
        a = [*argv(out)[:-4], "--cache-dir", cache, "--quiet", "--out", out, *extra]
        a[a.index("--data-root") + 1] = str(data)
        return a
    assert main(args(os.path.join(public_dir, "o1"))) == 0  # root fills it
    os.mkdir(os.path.join(public_dir, "mine"))
    os.chmod(os.path.join(public_dir, "mine"), 0o777)
    # no acc_matrix.png for the other user: CI's clone (and so matplotlib's font files) lies in a
    # directory only root may enter, and matplotlib reopens its fonts after a fork
    with monkeypatch.context() as m:
        m.setattr("l2bg.base.figures.have_matplotlib", lambda: False)
        ok = forked(lambda: main(args(os.path.join(public_dir, "mine", "o2"))), uid=NOBODY)
    assert ok.code == 0, ok.output
    line = _as_nobody(args(os.path.join(public_dir, "mine", "o3"), "--seed", "1"), monkeypatch)
    assert cache in line and "Permission denied" in line and "--cache-dir" in line


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_output_follows_the_umask(tmp_path, argv, umask, tiny_mnist):
    """run outputs, cache entries and search outputs all get 0666 & ~umask (0777 for dirs)."""
    cache = tmp_path / "cache"
    run_out, search_out = tmp_path / "run", tmp_path / "search"

    def both():
        code = main([*argv(run_out)[:-4], "--cache-dir", str(cache), "--quiet", "--out",
                     str(run_out)])
        return code or main(
            ["search", "--benchmark", "pmnist", "--data-root", str(tiny_mnist), "--tasks", "2",
             "--epochs", "1", "--rsa-samples", "10", "--trials", "1", "--sampler", "random",
             "--cache-dir", str(cache), "--out", str(search_out), "--threads", "1", "--quiet"])
    child = forked(both, umask=umask)
    assert child.code == 0, child.output
    want_f, want_d = 0o666 & ~umask, 0o777 & ~umask
    files = [p for d in (run_out, search_out, cache) for p in d.rglob("*")]
    assert {p.name for p in files} >= {*OUTPUTS, "pareto.json", "search.json", "trials.csv",
                                       "pareto.png", "study.journal", "meta.json", "node.json"}
    for p in files:
        mode = p.stat().st_mode & 0o777
        if p.name == "study.journal":  # Optuna creates it with open(): the umask applies too
            assert mode == want_f, p
        else:
            assert mode == (want_d if p.is_dir() else want_f), (p, oct(mode))
