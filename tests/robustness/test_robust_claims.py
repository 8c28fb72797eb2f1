"""The output-claim rule and full disks (issue 22, items 3, 4, 8-11, 15, 20, 21 and the empty
``--storage``): every command checks its destination before the work, never writes through a
file it did not write, and a full disk is one line that names the file, with no temporary left
and a rerun that resumes. A full disk is a small tmpfs where root may mount one, and an injected
ENOSPC (always). The counts are printed (``-s``)."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line
from forking import forked
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from l2bg.base import crashpoints as faults
from l2bg.base.errors import L2BGError, L2BGWarning
from l2bg.base.fileio import atomic_write
from l2bg.cli import main
from l2bg.search.report import OUTPUTS as REPORT_OUTPUTS

TALLY: Counter = Counter()
NOSPACE = os.strerror(errno.ENOSPC)


@pytest.fixture(scope="module", autouse=True)
def counts():
    yield
    print(f"\nclaims and full disks: {dict(TALLY)}")




# ----------------------------------------------------------------------------- full disks


class Disk:
    """A directory on a full disk: ``tmpfs`` (a 256 KiB tmpfs, filled to ``leave`` bytes) or
    ``injected`` (writes under it raise ENOSPC once ``leave`` bytes were written)."""

    def __init__(self, root: Path, mode: str) -> None:
        self.root, self.mode, self.leave = root, mode, 0

    def fill(self, leave: int = 0) -> None:
        self.leave = leave
        if self.mode == "tmpfs":
            st_ = os.statvfs(self.root)
            free = st_.f_bavail * st_.f_frsize
            with open(self.root / ".filler", "wb") as f:
                f.write(b"\0" * max(0, free - leave))

    def free(self) -> None:
        """Make room again."""
        if self.mode == "tmpfs":
            (self.root / ".filler").unlink(missing_ok=True)
            subprocess.run(["mount", "-o", "remount,size=64m", str(self.root)], check=True)
        self.leave = None

    def under(self, path) -> bool:
        return os.path.abspath(path).startswith(str(self.root))

    def inject(self, monkeypatch) -> None:
        """Injected mode: ENOSPC for os.write on files under the root past ``leave`` bytes, and
        for safetensors' writer (which reports it as a SafetensorError, os error 28)."""
        if self.mode != "injected":
            return
        import safetensors.torch
        from safetensors import SafetensorError

        real_write, real_save = os.write, safetensors.torch.save_file
        written = [0]

        def write(fd, data):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            if self.leave is None or not self.under(target):
                return real_write(fd, data)
            room = self.leave - written[0]
            if room <= 0:
                raise OSError(errno.ENOSPC, NOSPACE)
            n = real_write(fd, bytes(memoryview(data)[:room]))
            written[0] += n
            return n

        def save_file(tensors, filename, metadata=None):
            if self.leave is not None and self.under(filename):
                Path(filename).write_bytes(b"\0" * 10)
                raise SafetensorError("Error while serializing: I/O error: No space left on "
                                      "device (os error 28)")
            return real_save(tensors, filename, metadata)
        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(safetensors.torch, "save_file", save_file)

    def temporaries(self) -> list[str]:
        return sorted(str(p) for p in self.root.rglob("*") if p.name.endswith(".tmp")
                      or ".l2bg-" in p.name)


def _mount(path: Path) -> bool:
    if os.geteuid() != 0:
        return False
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)],
                           capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


@pytest.fixture(params=["tmpfs", "injected"])
def disk(request, tmp_path):
    root = tmp_path / "disk"
    root.mkdir()
    if request.param == "tmpfs" and not _mount(root):
        pytest.skip("cannot mount a tmpfs here (needs root); the injected ENOSPC covers it")
    yield Disk(root, request.param)
    if request.param == "tmpfs":
        subprocess.run(["umount", "-l", str(root)], check=False)


def _safetensors(p):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(100_000)}, str(p))


def _savefig(p):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(30, 30))
    FigureCanvasAgg(fig)
    fig.add_subplot().imshow(np.random.default_rng(0).random((400, 400)))
    fig.savefig(p, format="png", dpi=100)


def _partial_then_enospc(p):  # what a writer does that fills the disk itself
    with open(p, "wb") as f:
        f.write(b"x" * 100)
    raise OSError(errno.ENOSPC, NOSPACE, str(p))


CONTENTS = {"bytes": b"\1" * 400_000, "text": "t" * 400_000, "safetensors": _safetensors,
            "savefig": _savefig, "writer": _partial_then_enospc}


@pytest.mark.parametrize("content", list(CONTENTS))
def test_atomic_write_on_a_full_disk_is_one_line_and_leaves_no_temporary(disk, content,
                                                                         monkeypatch):
    """Item 9: closes once (no EBADF masking ENOSPC), one L2BGError naming the path, the
    temporary deleted, an existing file untouched."""
    if content == "savefig" and disk.mode == "injected":
        pytest.skip("matplotlib writes through its own file object: the tmpfs covers it")
    target = disk.root / "out.bin"
    target.write_bytes(b"old")
    disk.fill()
    disk.inject(monkeypatch)
    with pytest.raises(L2BGError) as info:
        atomic_write(target, CONTENTS[content])
    msg = str(info.value)
    assert msg.startswith(f"cannot write {target}: {NOSPACE}") and "\n" not in msg
    assert not disk.temporaries() and target.read_bytes() == b"old"
    TALLY["full disk: atomic_write"] += 1


def test_a_writer_refused_another_file_names_that_file(tmp_path):
    """A writer that cannot read a file of its own (matplotlib's fonts, for another user) is
    one line naming that file, not only the one being written; nothing is left behind."""
    font = tmp_path / "fonts" / "DejaVuSans.ttf"

    def drawing(p):
        Path(p).write_bytes(b"half")
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(font))
    target = tmp_path / "out" / "acc_matrix.png"
    with pytest.raises(L2BGError) as info:
        atomic_write(target, drawing)
    msg = str(info.value)
    assert msg.startswith(f"cannot write {target}: ") and f"on {font}" in msg and "\n" not in msg
    assert list((tmp_path / "out").iterdir()) == []


def test_a_writer_that_fails_otherwise_keeps_its_error_and_leaves_nothing(tmp_path):
    def bad(p):
        Path(p).write_text("half")
        raise ValueError("not a disk problem")
    with pytest.raises(ValueError, match="not a disk problem"):
        atomic_write(tmp_path / "x", bad)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def run_argv(tiny_mnist):
    torch.set_num_threads(1)

    def make(out, *extra):
        return ["run", "--benchmark", "pmnist", "--data-root", str(tiny_mnist), "--tasks", "2",
                "--strategy", "full", "--epochs", "1", "--batch-size", "32", "--rsa-samples",
                "10", "--quiet", "--out", str(out), *extra]
    return make


@pytest.mark.parametrize("where, leave", [("out", 16384), ("out", 0), ("cache", 16384)])
def test_a_run_on_a_full_disk_is_one_line_and_resumes(disk, where, leave, run_argv, tmp_path,
                                                      capsys, monkeypatch):
    """Item 10: --out or the cache on a full disk (with room for the claim's lock, or none):
    one line, nothing half-written left, and the same command succeeds at once when there is
    room."""
    out = disk.root / "out" if where == "out" else tmp_path / "out"
    cache = disk.root / "cache" if where == "cache" else tmp_path / "cache"
    argv = run_argv(out, "--cache-dir", str(cache))
    disk.fill(leave=leave)
    with monkeypatch.context() as m:
        disk.inject(m)
        assert main(argv) == 2
    one_line(capsys, "cannot write", NOSPACE, str(disk.root))
    assert not disk.temporaries() and not out.exists()
    disk.free()
    assert main(argv) == 0
    assert json.loads((out / "results.json").read_text())["strategy"] == "full"
    TALLY["full disk: run"] += 1


def _search_argv(data, out, journal, trials=3):
    return ["search", "--benchmark", "pmnist", "--data-root", str(data), "--tasks", "2",
            "--epochs", "1", "--rsa-samples", "10", "--trials", str(trials), "--sampler",
            "random", "--no-baselines", "--threads", "1", "--quiet", "--study-name", "s",
            "--cache-dir", str(out.parent / "cache"), "--out", str(out), "--storage",
            f"journal:{journal}"]


def test_a_search_whose_journal_fills_the_disk_is_one_line_and_resumes(disk, tiny_mnist,
                                                                      tmp_path):
    """Item 11: the append that hits the full disk is cut back (only whole records stay), the
    search stops with one line, and the same command resumes to every trial once there is
    room."""
    from l2bg.search.journal import _tail_damaged

    journal = disk.root / "study.journal"
    argv = _search_argv(tiny_mnist, tmp_path / "out", journal)
    disk.fill(leave=8192)

    def full():
        from _pytest.monkeypatch import MonkeyPatch

        disk.inject(MonkeyPatch())  # in the forked child only
        return main(argv)
    child = forked(full)
    assert child.code == 2, child.output
    [line] = child.output.strip().splitlines()
    assert line.startswith(f"l2bg: error: cannot write {journal}: {NOSPACE}")
    assert "resume" in line
    assert journal.stat().st_size > 0 and not _tail_damaged(journal)
    disk.free()
    rerun = forked(lambda: main(argv))
    assert rerun.code == 0, rerun.output
    rows = (tmp_path / "out" / "trials.csv").read_text().splitlines()
    assert sum(",COMPLETE," in r for r in rows) == 3
    assert not list(disk.root.glob("study.journal.damaged-*"))  # nothing torn to set aside
    TALLY["full disk: search journal"] += 1


# ----------------------------------------------------------------------------- empty values


@pytest.mark.parametrize("case", ["run --cache-dir", "search --cache-dir", "run --out",
                                  "search --out", "rsa --out", "search --storage"])
def test_an_empty_path_is_one_line_and_writes_nothing(case, tmp_path, tiny_mnist, capsys,
                                                      monkeypatch):
    """Item 15 and the note on --storage "": an empty value is refused, never read as the
    working directory (or the default)."""
    command, option = case.split()
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    common = ["--benchmark", "pmnist", "--data-root", str(tiny_mnist), "--tasks", "2",
              "--epochs", "1", "--rsa-samples", "10", "--quiet"]
    argv = {"run": ["run", *common, "--strategy", "full"],
            "search": ["search", *common, "--trials", "1", "--sampler", "random"],
            "rsa": ["rsa", str(tmp_path)]}[command]
    argv = [*argv, option, ""]
    if option != "--out":
        argv += ["--out", str(tmp_path / "out")]
    if option != "--cache-dir" and command != "rsa":
        argv += ["--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 2
    one_line(capsys, f"{option} is empty")
    assert list(work.iterdir()) == [] and not (tmp_path / "out").exists()
    TALLY["empty values refused"] += 1


# ----------------------------------------------------------------------------- search --out


def _files(out):
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def test_a_different_search_never_replaces_anothers_outputs(tmp_path, tiny_mnist, capsys):
    """Item 4: the second search is refused before any work; the first one's search.json,
    pareto.json, trials.csv and plots stay as they are; the same search resumes."""
    out = tmp_path / "out"
    base = ["search", "--benchmark", "pmnist", "--data-root", str(tiny_mnist), "--tasks", "2",
            "--epochs", "1", "--rsa-samples", "10", "--sampler", "random", "--no-baselines",
            "--threads", "1", "--quiet", "--cache-dir", str(tmp_path / "c"), "--out", str(out)]
    assert main([*base, "--trials", "1"]) == 0
    before = _files(out)
    assert set(before) >= {"search.json", *REPORT_OUTPUTS}
    for other in (["--space", "per-task-delta"], ["--study-name", "other"],
                  ["--storage", f"journal:{tmp_path / 'other.journal'}"]):
        assert main([*base, "--trials", "1", *other]) == 2
        one_line(capsys, "holds the outputs of another search", "search.json")
        assert _files(out) == before
        TALLY["search claims refused"] += 1
    assert main([*base, "--trials", "2"]) == 0  # the same search resumes and rewrites them
    assert json.loads((out / "pareto.json").read_text())["trials"]["complete"] == 2


@pytest.mark.parametrize("held", REPORT_OUTPUTS)
def test_report_files_that_no_search_wrote_are_refused(tmp_path, tiny_mnist, capsys, held):
    out = tmp_path / "out"
    out.mkdir()
    (out / held).write_bytes(b"the user's")
    assert main(_search_argv(tiny_mnist, out, tmp_path / "study.journal", 1)) == 2
    one_line(capsys, f"already holds {held}", "no search.json")
    assert _files(out) == {held: b"the user's"}


def test_a_search_refused_by_its_study_leaves_no_claim(tmp_path, tiny_mnist, capsys):
    """A study of that name made for another search: the fresh --out keeps no search.json."""
    journal = tmp_path / "shared.journal"
    assert main(_search_argv(tiny_mnist, tmp_path / "a", journal, 1)) == 0
    other = _search_argv(tiny_mnist, tmp_path / "b", journal, 1)
    other[other.index("--epochs") + 1] = "2"
    assert main(other) == 2
    one_line(capsys, "created for a different search")
    assert not (tmp_path / "b" / "search.json").exists()


def test_two_jobs_claiming_one_out_at_once_exactly_one_wins(tmp_path):
    from l2bg.base.outdir import claim_shared

    out = tmp_path / "out"
    pids = []
    for k in range(2):
        pid = os.fork()
        if pid == 0:
            try:
                claim_shared(out, "search.json", {"study_name": f"s{k}", "storage": "j"},
                             ("study_name", "storage"), REPORT_OUTPUTS)
                os._exit(0)
            except L2BGError:
                os._exit(2)
            except BaseException:  # noqa: BLE001
                os._exit(1)
        pids.append(pid)
    codes = sorted(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids)
    assert codes == [0, 2]
    assert os.listdir(out) == ["search.json"]


# ----------------------------------------------------------------------------- journal:FILE


def _open(path):
    from l2bg.search.storage import open_storage

    return open_storage(f"journal:{path}")


@pytest.mark.parametrize("text", [b"hello world", b"x", b'{"a": 1}', b"op_code", b"\xff\xfe",
                                  b'{"op_code" : 0}'])
def test_a_one_line_user_file_is_never_cut(tmp_path, text, capsys, tiny_mnist):
    """Item 3: a file without a newline that does not begin as a journal record is not a torn
    journal: refused, the file as it was, no copy needed."""
    f = tmp_path / "mine.txt"
    f.write_bytes(text)
    with pytest.raises(L2BGError, match="not an Optuna journal file"):
        _open(f)
    assert f.read_bytes() == text and sorted(os.listdir(tmp_path)) == ["mine.txt"]
    assert main(_search_argv(tiny_mnist, tmp_path / "out", f, 1)) == 2
    one_line(capsys, "not an Optuna journal file")
    assert f.read_bytes() == text and not (tmp_path / "out").exists()
    TALLY["journal: user files kept"] += 1


@pytest.mark.parametrize("torn", [b"{", b'{"op_co', b'{"op_code":0,"worker_id":"a'])
def test_a_torn_first_record_is_still_set_aside(tmp_path, torn):
    f = tmp_path / "study.journal"
    f.write_bytes(torn)
    with pytest.warns(L2BGWarning, match="not a whole record"):
        _open(f)
    assert f.read_bytes() == b""
    [backup] = tmp_path.glob("study.journal.damaged-*")
    assert backup.read_bytes() == torn


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b))
def test_a_file_without_a_record_is_cut_only_when_it_begins_as_one(tmp_path_factory, raw):
    start = b'{"op_code":'
    torn = raw.startswith(start) or start.startswith(raw)
    f = tmp_path_factory.mktemp("j") / "j"
    f.write_bytes(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", L2BGWarning)
        try:
            _open(f)
        except L2BGError as exc:
            assert not torn and "\n" not in str(exc) and f.read_bytes() == raw
            return
    assert torn and f.read_bytes() == b""


# ----------------------------------------------------------------------------- capture


class Batches:
    """Two batches; remembers whether anything was read."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(12, 4, generator=g)
        self.read = False

    def __len__(self):
        return 2

    def __iter__(self):
        self.read = True
        yield self.x[:6]
        yield self.x[6:]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


def _capture(dest, loader=None):
    from l2bg.rsa.capture import capture

    return capture(_model(), loader or Batches(), ["0", "2"], dest, progress=False)


@pytest.mark.parametrize("kind, match", [
    ("file", "already exists (a file)"), ("dangling", "which does not exist"),
    ("under a file", "is a file, not a directory"), ("empty", "is empty")])
def test_capture_checks_its_destination_before_any_batch(tmp_path, kind, match):
    """Items 20 and 21: a file, a dangling symbolic link, a path under a file: one line before
    the loader is read; nothing is created or written through."""
    (tmp_path / "afile").write_text("x")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    dest = {"file": tmp_path / "afile", "dangling": tmp_path / "dangling",
            "under a file": tmp_path / "afile" / "acts", "empty": ""}[kind]
    loader = Batches()
    with pytest.raises(L2BGError, match=re.escape(match)) as info:
        _capture(dest, loader)
    assert "\n" not in str(info.value) and not loader.read
    assert (tmp_path / "afile").read_text() == "x" and not (tmp_path / "nowhere").exists()
    TALLY["destinations refused"] += 1


@pytest.mark.parametrize("kind", ["file", "dangling", "under a file"])
def test_rsa_checks_its_out_before_any_work(tmp_path, kind, capsys, monkeypatch):
    import l2bg.rsa.layers

    _capture(tmp_path / "acts")
    (tmp_path / "afile").write_text("x")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    dest = {"file": tmp_path / "afile", "dangling": tmp_path / "dangling",
            "under a file": tmp_path / "afile" / "o"}[kind]
    monkeypatch.setattr(l2bg.rsa.layers, "layer_similarity", lambda *a, **k: 1 / 0)
    assert main(["rsa", str(tmp_path / "acts"), "--quiet", "--out", str(dest)]) == 2
    one_line(capsys, "--out")
    assert (tmp_path / "afile").read_text() == "x" and not (tmp_path / "nowhere").exists()
    TALLY["destinations refused"] += 1


@pytest.mark.parametrize("kind, k", [("dir", 1), ("write", 1)])
def test_a_killed_capture_leaves_temporaries_that_the_next_one_sweeps(tmp_path, kind, k):
    """Item 8: SIGKILLed before its directory was renamed into place (or mid-manifest): the
    next capture of that destination removes the temporary under its claim, and only that
    destination's temporaries."""
    dest = tmp_path / "acts"
    others = [tmp_path / ".acts2.abcdefgh.tmp", tmp_path / ".acts.v2.abcdefgh.tmp"]
    for o in others:
        o.mkdir()
    child = forked(lambda: (faults.arm(kind, k), _capture(dest))[1] and 0)
    assert child.killed, child.output
    left = [p for p in tmp_path.glob(".acts.*.tmp") if p not in others]
    assert len(left) == 1 and not dest.exists()
    TALLY["capture killed"] += 1
    src = _capture(dest)
    assert src.n == 12 and [p for p in tmp_path.glob(".acts.*.tmp") if p not in others] == []
    assert all(o.is_dir() for o in others)
    assert not list(tmp_path.glob("*.lock"))


def test_a_live_capture_is_not_swept(tmp_path):
    from l2bg.base.locks import FileLocks

    dest = tmp_path / "acts"
    live = tmp_path / ".acts.abcdefgh.tmp"
    live.mkdir()
    with FileLocks().hold(tmp_path / ".acts.l2bg-capture.lock"):
        with pytest.raises(L2BGError, match="being written by another process"):
            _capture(dest)
        assert live.is_dir() and not dest.exists()
