"""The search journal survives a write cut short (issue 14, item 1): a damaged tail is set aside
(backup + one warning) under Optuna's own journal lock, after re-reading the tail."""

import threading
import time

import pytest

from l2bg.base.errors import L2BGError, L2BGWarning
from l2bg.search.journal import open_journal, repair_tail
from l2bg.search.storage import open_storage

optuna = pytest.importorskip("optuna")


def _journal(path, trials=2):
    storage = open_storage(f"journal:{path}")
    study = optuna.create_study(storage=storage, study_name="s",
                                directions=["maximize", "minimize"])
    for k in range(trials):
        t = study.ask()
        t.suggest_float("delta", 0, 1)
        t.set_user_attr("k", k)
        study.tell(t, [float(k), 10.0 - k])
    return {t.number: (t.values, t.params) for t in study.trials}


def _trials(path):
    study = optuna.load_study(study_name="s", storage=open_storage(f"journal:{path}"))
    return {t.number: (t.values, t.params) for t in study.trials}


def _backups(path):
    return sorted(path.parent.glob(f"{path.name}.damaged-*"))


DAMAGE = {
    "torn record": lambda good: good + b'{"op_code":5,"worker_id":"w","tri',
    "truncated last line": lambda good: good[:-7],
    "garbage line": lambda good: good + b"\x00\x00\x00\n",
    "not a record": lambda good: good + b'[1, 2]\n',
    "blank line": lambda good: good + b"\n",
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_tail_is_set_aside_with_a_backup(tmp_path, damage):
    path = tmp_path / "study.journal"
    want = _journal(path)
    good = path.read_bytes()
    broken = DAMAGE[damage](good)
    path.write_bytes(broken)
    with pytest.warns(L2BGWarning, match="set them aside") as rec:
        got = _trials(path)
    assert len(rec) == 1
    [backup] = _backups(path)
    assert backup.read_bytes() == broken  # the whole journal as it was
    kept = path.read_bytes()
    if damage == "truncated last line":  # the record cut short is lost, every earlier one kept
        assert good.startswith(kept) and kept.count(b"\n") == good.count(b"\n") - 1
        assert set(got) == set(want)
    else:
        assert kept == good and got == want
    # appending works again and a later open needs no repair
    study = optuna.load_study(study_name="s", storage=open_storage(f"journal:{path}"))
    study.enqueue_trial({"delta": 0.5})
    assert len(_trials(path)) == len(got) + 1 and len(_backups(path)) == 1


def test_a_good_journal_is_left_alone(tmp_path, recwarn):
    path = tmp_path / "study.journal"
    _journal(path)
    before = path.read_bytes()
    assert repair_tail(path) is None and _trials(path)
    assert path.read_bytes() == before and not _backups(path)
    assert not [w for w in recwarn if issubclass(w.category, L2BGWarning)]


def test_repair_waits_for_the_lock_and_rereads_the_tail(tmp_path):
    """A tail that looks torn because a writer is mid-append is not cut: the repair takes the
    journal lock, and once it has it the record is whole."""
    from optuna.storages.journal import JournalFileSymlinkLock

    path = tmp_path / "study.journal"
    _journal(path)
    good = path.read_bytes()
    record = b'{"op_code":0,"worker_id":"w","study_name":"t","directions":[1]}\n'
    writer = JournalFileSymlinkLock(str(path))
    writer.acquire()
    with open(path, "ab") as f:
        f.write(record[:20])
    done = []
    th = threading.Thread(target=lambda: done.append(repair_tail(path, JournalFileSymlinkLock(
        str(path)))))
    th.start()
    time.sleep(0.3)
    assert th.is_alive()  # blocked on the writer's lock
    with open(path, "ab") as f:
        f.write(record[20:])
    writer.release()
    th.join(10)
    assert done == [None] and path.read_bytes() == good + record and not _backups(path)


def test_a_live_worker_never_appends_after_a_torn_line(tmp_path):
    """Another worker died mid-append while this one runs: its next append sets the torn
    fragment aside first, so its own record stays readable."""
    path = tmp_path / "study.journal"
    _journal(path)
    storage = open_journal(path, lease_s=3)
    study = optuna.load_study(study_name="s", storage=storage)
    with open(path, "ab") as f:
        f.write(b'{"op_code":4,"worker_id":"dead","trial_id":0,"par')
    with pytest.warns(L2BGWarning, match="set them aside"):
        study.set_user_attr("after", 1)
    assert optuna.load_study(study_name="s", storage=open_storage(
        f"journal:{path}")).user_attrs["after"] == 1
    assert len(_backups(path)) == 1


def test_damage_inside_the_journal_is_one_line(tmp_path):
    path = tmp_path / "study.journal"
    _journal(path)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[3] = b'{"op_code": 4, "broken\n'
    path.write_bytes(b"".join(lines))
    with pytest.raises(L2BGError, match="line 4") as exc:
        _trials(path)
    assert "\n" not in str(exc.value) and not _backups(path)


def test_a_file_that_is_no_journal_is_refused_not_cut(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"my notes\nmore notes\n")
    with pytest.raises(L2BGError, match="not an Optuna journal"):
        open_storage(f"journal:{path}")
    assert path.read_bytes() == b"my notes\nmore notes\n"
