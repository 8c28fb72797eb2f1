"""The command line starts fast: ``l2bg --help`` and ``l2bg --version`` import no torch (each
command's options, whose registries need torch, are built only when that command is named), every
command keeps its one-line summary, a named command gets all its options; tests use a private
cache, never the user's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import l2bg
from l2bg.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def imported(*args: str) -> tuple[set[str], subprocess.CompletedProcess]:
    """The modules ``python -X importtime -m l2bg ARGS`` imported, and the process."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "l2bg", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    names = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
             if line.startswith("import time:") and "|" in line}
    return names, proc


@pytest.mark.parametrize("args", [["--help"], ["--version"]])
def test_help_and_version_import_no_torch(args):
    names, proc = imported(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "l2bg.cli" in names  # the measurement sees our imports
    heavy = sorted(n for n in names if n.split(".")[0] in ("torch", "optuna", "matplotlib",
                                                             "triton", "scipy"))
    assert not heavy, heavy[:5]
    if args == ["--version"]:
        assert proc.stdout.strip() == f"l2bg {l2bg.__version__}"
    else:
        assert all(name in proc.stdout for name in COMMANDS)


def test_listed_commands_keep_their_summaries_and_named_ones_their_options(capsys):
    """``l2bg --help`` lists every command with the summary of its full parser; a named command
    is built in full (its options parse)."""
    def summaries(parser):
        sub = next(a for a in parser._actions if a.dest == "command")
        return {c.dest: c.help for c in sub._choices_actions}

    full = build_parser()
    assert summaries(build_parser("")) == summaries(full)
    assert all(summaries(full).values())
    for name in COMMANDS:
        sub = next(a for a in full._actions if a.dest == "command").choices[name]
        own = build_parser(name)
        own_sub = next(a for a in own._actions if a.dest == "command").choices[name]
        assert ({a.dest for a in own_sub._actions} == {a.dest for a in sub._actions})
    args = build_parser("rsa").parse_args(["rsa", "x", "--out", "o", "--rdm", "euclidean"])
    assert args.rdm == "euclidean"


def test_unknown_command_is_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2 and "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_tests_use_a_private_cache(private_cache_dir):
    """conftest points $L2BG_CACHE_DIR at a directory of this session: runs and searches that
    name no cache (and subprocesses) never touch the user's."""
    from l2bg.learn.settings import resolve_cache_dir

    assert resolve_cache_dir(None) == private_cache_dir
    assert Path(os.environ["L2BG_CACHE_DIR"]) == private_cache_dir
    assert Path.home() / ".cache" not in private_cache_dir.parents
