"""The publish protocol of l2bg.outdir (issue 22, items 1, 2 and 22): a command killed at each
step of publishing leaves a directory that the next command judges right. A finished command's
outputs are never taken for a dead command's partial outputs; an unfinished command's outputs
are removed; nothing the user wrote is touched. The counts are printed (``-s``)."""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from forking import forked
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l2bg.base import crashpoints as faults
from l2bg.base.errors import L2BGError
from l2bg.base.outdir import OutDir
from l2bg.cli import main
from l2bg.cli.run import CLAIM, OUTPUTS, STAGING
from l2bg.rsa.layers import OUTPUTS as RSA_OUTPUTS

TALLY: Counter = Counter()
DONE = ".l2bg-run.done"


@pytest.fixture(scope="module", autouse=True)
def counts():
    yield
    print(f"\npublish faults: {dict(TALLY)}")


@pytest.fixture
def run_argv(tiny_mnist):
    torch.set_num_threads(1)

    def make(out):
        return ["run", "--benchmark", "pmnist", "--data-root", str(tiny_mnist), "--tasks", "2",
                "--strategy", "full", "--epochs", "1", "--batch-size", "32", "--rsa-samples",
                "10", "--no-cache", "--quiet", "--out", str(out)]
    return make


@pytest.fixture
def rsa_argv(tmp_path):
    src = tmp_path / "acts"
    src.mkdir()
    g = np.random.default_rng(0)
    for name in ("a", "b"):
        np.save(src / f"{name}.npy", g.standard_normal((8, 5)).astype(np.float32))

    def make(out):
        return ["rsa", str(src), "--device", "cpu", "--quiet", "--out", str(out)]
    return make


def _user(out: Path) -> dict[Path, bytes]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "notes.txt").write_text("the user's notes")
    return {out / "notes.txt": b"the user's notes"}


def _contents(out: Path, names) -> dict[str, bytes]:
    return {n: (out / n).read_bytes() for n in names if (out / n).exists()}


def _steps(argv, out, outputs):
    """The fault points of publishing, counted in a clean run: (kind, k) before each link
    (``write``) and after each link and after the staging directory is retired
    (``publish``)."""
    faults.arm(None)
    assert main(argv(out)) == 0
    c = faults.counts()
    faults.arm(None)
    n = len(outputs)
    assert c["publish"] == n + 1  # one per output, one after the retirement
    before = [("write", c["write"] - n + 1 + i) for i in range(n)]
    after = [("publish", i + 1) for i in range(n + 1)]
    steps = [s for pair in zip(before, after, strict=False) for s in pair] + [after[-1]]
    return steps, _contents(out, outputs)


def _ref_weights(out: Path):
    from safetensors.torch import load_file

    return load_file(str(out / "jointnet.safetensors"))


@pytest.mark.parametrize("command", ["run", "rsa"])
def test_a_command_killed_at_each_publish_step(tmp_path, command, run_argv, rsa_argv):
    argv, outputs, prefix = ((run_argv, OUTPUTS, ".l2bg-run") if command == "run"
                             else (rsa_argv, RSA_OUTPUTS, ".l2bg-rsa"))
    steps, ref = _steps(argv, tmp_path / "ref", outputs)
    marker = len(outputs)  # publish:k for k >= marker comes after the marker's link
    for i, (kind, k) in enumerate(steps):
        out = tmp_path / f"o{i}"
        user = _user(out)
        args = argv(out)
        child = forked(lambda a=args, kind=kind, k=k: (faults.arm(kind, k), main(a))[1])
        assert child.killed, (kind, k, child.output)
        TALLY[f"{command} killed"] += 1
        finished = kind == "publish" and k >= marker
        published = _contents(out, outputs)
        rerun = forked(lambda a=args: main(a))
        losses = []
        if finished:  # the dead command had finished: its outputs are kept, the rerun refuses
            [line] = rerun.output.strip().splitlines()
            if rerun.code != 2 or f"already holds {', '.join(outputs)}" not in line:
                losses.append(f"rerun: {rerun.code} {line}")
            if _contents(out, outputs) != published or set(published) != set(outputs):
                losses.append("a finished command's outputs changed")
        elif rerun.code != 0:
            losses.append(f"rerun failed: {rerun.output}")
        got = _contents(out, outputs)
        if command == "rsa" and json.loads(got["similarity.json"])["values"] != json.loads(
                ref["similarity.json"])["values"]:
            losses.append("similarity differs")
        if command == "run":
            w, r = _ref_weights(out), _ref_weights(tmp_path / "ref")
            if w.keys() != r.keys() or not all(torch.equal(w[x], r[x]) for x in w):
                losses.append("the JointNet differs")
        left = sorted(p.name for p in out.iterdir())
        if left != sorted([*outputs, "notes.txt"]):
            losses.append(f"--out holds {left}")
        if any(p.read_bytes() != b for p, b in user.items()):
            losses.append("a user file changed")
        assert not any(p.name.startswith(prefix) for p in out.iterdir())
        TALLY["losses"] += len(losses)
        assert not losses, (kind, k, losses)
    TALLY[f"{command} steps"] = len(steps)


def test_a_finished_runs_results_survive_a_dead_claim(tmp_path, run_argv, capsys):
    """Item 1: killed after results.json was published, before its staging directory was
    removed (its claim names a dead process): the next run says the directory already holds
    results.json and leaves the results as they are."""
    out = tmp_path / "out"
    child = forked(lambda: (faults.arm("publish", len(OUTPUTS)), main(run_argv(out)))[1])
    assert child.killed and (out / STAGING).is_dir()
    (out / CLAIM).write_text(json.dumps({"worker": f"{socket.gethostname()}:999999:1"}))
    before = _contents(out, OUTPUTS)
    assert set(before) == set(OUTPUTS)
    assert main(run_argv(out)) == 2
    err = capsys.readouterr().err.strip()
    assert f"already holds {', '.join(OUTPUTS)}" in err
    assert "\n" not in err and _contents(out, OUTPUTS) == before
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)


@pytest.mark.parametrize("name", [STAGING, DONE])
@pytest.mark.parametrize("kind", ["symlink", "file", "dangling"])
def test_a_staging_name_that_l2bg_did_not_make_is_one_line(tmp_path, run_argv, capsys, name,
                                                           kind, monkeypatch):
    """Item 22: .l2bg-run.staging (or .done) that is a symbolic link or a file is named, not
    followed, not removed."""
    import l2bg.learn.learner

    out, theirs = tmp_path / "out", tmp_path / "theirs"
    user = _user(out)
    theirs.mkdir()
    (theirs / "results.json").write_text("theirs")
    os.link(theirs / "results.json", out / "results.json")  # the same file as "staging"'s
    user[out / "results.json"] = b"theirs"
    if kind == "symlink":
        os.symlink(theirs, out / name)
    elif kind == "dangling":
        os.symlink(tmp_path / "nowhere", out / name)
    else:
        (out / name).write_text("a file")
    monkeypatch.setattr(l2bg.learn.learner.Learner, "run", lambda *a, **k: 1 / 0)  # no work
    assert main(run_argv(out)) == 2
    err = capsys.readouterr().err.strip()
    assert name in err and ("symbolic link" in err or "a file" in err) and "\n" not in err
    assert os.path.lexists(out / name) and (theirs / "results.json").read_text() == "theirs"
    assert all(p.read_bytes() == b for p, b in user.items())
    assert not (out / CLAIM).exists()


@pytest.mark.parametrize("held", RSA_OUTPUTS)
def test_rsa_never_replaces_the_users_similarity_files(tmp_path, rsa_argv, capsys, held,
                                                       monkeypatch):
    """Item 2: each of similarity.csv, .png and .json of the user's is refused up front."""
    import l2bg.rsa.layers

    out = tmp_path / "out"
    user = _user(out)
    (out / held).write_bytes(b"the user's own")
    user[out / held] = b"the user's own"
    monkeypatch.setattr(l2bg.rsa.layers, "layer_similarity", lambda *a, **k: 1 / 0)
    assert main(rsa_argv(out)) == 2
    err = capsys.readouterr().err.strip()
    assert f"already holds {held}" in err and "\n" not in err
    assert all(p.read_bytes() == b for p, b in user.items())
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in user)


# ----------------------------------------------------------------------------- property

NAMES = ("a.bin", "b.bin", "m.json")  # m.json: the marker


@st.composite
def dead_states(draw):
    """What a dead command (or the user) may have left: per output, nothing / the user's own
    file / a file published from staging; a staging directory (or not), its marker published or
    not; a done directory."""
    staged = draw(st.booleans())
    states = {n: draw(st.sampled_from(["none", "user"] + (["published", "staged"] if staged
                                                          else []))) for n in NAMES}
    return staged, states, draw(st.booleans())


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(dead_states())
def test_recovery_keeps_every_file_it_did_not_write(tmp_path_factory, state):
    """Property: whatever a dead command left, entering OutDir removes only files that are the
    same files as in the dead command's staging directory, and only when its marker was not
    published; then it refuses a directory holding any output, or stages a fresh run."""
    staged, states, done = state
    out = tmp_path_factory.mktemp("o")
    staging, kept = out / ".l2bg-t.staging", {}
    if staged:
        staging.mkdir()
    for n, s in states.items():
        if s == "user":
            (out / n).write_text(f"user {n}")
            kept[n] = f"user {n}"
        elif s in ("published", "staged"):
            (staging / n).write_text(f"staged {n}")
            if s == "published":
                os.link(staging / n, out / n)
    if done:
        (out / ".l2bg-t.done").mkdir()
        (out / ".l2bg-t.done" / "x").write_text("old")
    finished = states["m.json"] == "published"
    if finished:  # a finished command's outputs are its user's now
        kept |= {n: f"staged {n}" for n, s in states.items() if s == "published"}
    try:
        with OutDir(out, NAMES, "t") as target:
            assert not any(os.path.lexists(out / n) for n in NAMES)
            for n in NAMES:
                (target.staging / n).write_text(f"new {n}")
            target.publish()
        refused = False
    except L2BGError as exc:
        assert "already holds" in str(exc)
        refused = True
    for n, text in kept.items():
        assert (out / n).read_text() == text, (state, n)
    assert refused == bool(kept)
    assert not os.path.lexists(staging) and not os.path.lexists(out / ".l2bg-t.done")
    assert not os.path.lexists(out / ".l2bg-t.lock")


def test_a_live_commands_staging_is_never_touched(tmp_path, run_argv, capsys):
    """A second run refused by the claim leaves the first one's staging and outputs alone."""
    from l2bg.base.locks import FileLocks

    out = tmp_path / "out"
    (out / STAGING).mkdir(parents=True)
    (out / STAGING / "results.json").write_text("being written")
    os.link(out / STAGING / "results.json", out / "results.json")
    with FileLocks().hold(out / CLAIM):
        assert main(run_argv(out)) == 2
    assert "in use by another l2bg run" in capsys.readouterr().err
    assert (out / STAGING / "results.json").read_text() == "being written"
    assert (out / "results.json").read_text() == "being written"
