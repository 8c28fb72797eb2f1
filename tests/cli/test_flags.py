"""The core names parameters, the command line names flags: one table (l2bg.cli.flags) maps
them, every message the core raises speaks parameters, and each CLI error still names the flag."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest
from conftest import one_line

from l2bg.cli import build_parser, main
from l2bg.cli.flags import FLAGS

PACKAGE = Path(__file__).resolve().parents[2] / "l2bg"
#: parameters of the Python API that no command-line option sets (valid_fraction, eval_every and
#: augment: L2BGStrategy's, l2bg.avalanche)
API_ONLY = {"cache", "template", "valid_fraction", "eval_every", "augment"}
#: figure labels of the search's report, not messages: a legend may show the flag it plots
LABELS = {"search/plots.py"}


def _options() -> set[str]:
    out: set[str] = set()

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            out.update(s for s in action.option_strings if s.startswith("--"))
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(build_parser())
    return out


def _core_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] != "cli":
            yield path, ast.parse(path.read_text(), str(path))


def _strings(tree: ast.AST):
    """Every string piece of the module's code (f-string parts included), docstrings and
    bare string statements (attribute docs) left out."""
    prose = {id(node.value) for node in ast.walk(tree)
             if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in prose):
            yield node.lineno, node.value


def test_every_flag_in_the_table_is_an_option_of_the_command_line():
    assert set(FLAGS.values()) <= _options()


def test_no_message_of_the_core_names_a_flag():
    """l2bg.base … l2bg.search word their errors with parameter names ({param}), never with a
    command-line option (a string that names one, anywhere in their code, is found)."""
    options = _options()
    found = [f"{path.relative_to(PACKAGE)}:{line}: {text!r}"
             for path, tree in _core_modules() if str(path.relative_to(PACKAGE)) not in LABELS
             for line, text in _strings(tree)
             for word in text.replace("/", " ").replace(",", " ").replace("(", " ").split()
             if word.rstrip(".;:)") in options]
    assert found == []


def test_every_parameter_the_core_names_has_a_flag():
    """The parameters of ParamErrors and of registries (the one that chooses an entry)."""
    named = set()
    for _, tree in _core_modules():
        for node in ast.walk(tree):
            name = getattr(node.func, "id", None) if isinstance(node, ast.Call) else None
            if name in ("ParamError", "Registry"):
                named.update(a.value for a in node.args[1:]
                             if isinstance(a, ast.Constant) and isinstance(a.value, str))
    assert named, "the scan found no ParamError"
    assert named - API_ONLY <= set(FLAGS), sorted(named - API_ONLY - set(FLAGS))


@pytest.mark.parametrize("argv, flag, param", [
    (["run", "--benchmark", "split-mnist", "--tasks", "6", "--strategy", "shared"],
     "pass --tasks <= 5", "num_tasks"),
    (["run", "--benchmark", "split-cifar100", "--strategy", "shared"], "--data-root DIR",
     "data_root"),
    (["run", "--benchmark", "pmnist", "--tasks", "3", "--strategy", "l2bg", "--deltas",
      "0.5,2"], "grow coefficient --deltas must be in [0, 1], got 2.0", "deltas"),
    (["run", "--benchmark", "pmnist", "--tasks", "3", "--strategy", "l2bg", "--deltas",
      "0.5"], "--deltas has 1 values; 3 tasks need 2", "deltas"),
    (["run", "--benchmark", "pmnist", "--strategy", "l2bg", "--delta", "0.5", "--deltas",
      "0.5"], "give either --delta or --deltas", "delta"),
    (["run", "--benchmark", "pmnist", "--strategy", "l2bg", "--delta", "-1"],
     "grow coefficient --delta must be in [0, 1]", "delta"),
    (["run", "--benchmark", "rotated-mnist", "--angles", "0,nan", "--strategy", "shared"],
     "--angles must be finite numbers", "angles"),
    (["run", "--benchmark", "pmnist", "--angles", "0,1", "--strategy", "shared"],
     "--angles applies to rotated-mnist", "angles"),
    (["run", "--benchmark", "pmnist", "--tasks", "2", "--strategy", "l2bg", "--delta", "0.5",
      "--rsa-samples", "100000"], "--rsa-samples 100000 exceeds", "rsa_samples"),
    (["search", "--benchmark", "pmnist", "--trials", "1", "--delta-set", "0.5,3"],
     "grow coefficient --delta-set must be in [0, 1]", "delta_set"),
    (["search", "--benchmark", "pmnist", "--trials", "1", "--workers", "0"],
     "--workers must be >= 1", "workers"),
])
def test_a_cli_error_names_the_flag(argv, flag, param, tmp_path, tiny_mnist, capsys,
                                    no_training):
    extra = [] if "split-cifar100" in argv else ["--data-root", str(tiny_mnist)]
    assert main([*argv, *extra, "--cache-dir", str(tmp_path / "c"), "--out",
                 str(tmp_path / "o"), "--quiet"]) == 2
    line = one_line(capsys, flag)
    assert param not in re.sub(r"--[a-z-]+", "", line)  # no Python name beside the flags
    assert not (tmp_path / "o").exists()
