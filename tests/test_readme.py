"""The README's Python snippets run as pasted, each on its own in a fresh interpreter, and each
says what it costs. Training is shortened here (one epoch on 256 samples per net, through the
real ``fit``) so that the file stays fast; everything else runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

#: run before a snippet: the real training, shortened
SHORT_TRAINING = """
import l2bg.learn.independent, l2bg.learn.step, l2bg.learn.training as training
_fit = training.fit
def fit(net, task, x, y, config, progress=None, **kw):
    return _fit(net, task, x[:256], y[:256], config.replace(epochs=1), progress, **kw)
for _m in (training, l2bg.learn.independent, l2bg.learn.step):
    _m.fit = fit
"""


def snippets() -> list[tuple[str, str]]:
    """(the text since the previous snippet, the snippet) of every ```python block."""
    text = README.read_text()
    out, last = [], 0
    for m in re.finditer(r"```python\n(.*?)```", text, re.S):
        out.append((text[last:m.start()], m.group(1)))
        last = m.end()
    return out


def test_the_readme_has_python_snippets():
    assert len(snippets()) >= 3


@pytest.mark.parametrize("index", range(len(snippets())))
def test_each_snippet_says_what_it_costs(index):
    before, code = snippets()[index]
    said = before[-800:] + code
    assert re.search(r"\b(\d+ s|seconds?)\b", said), code[:80]
    if "Learner(" in code:
        assert re.search(r"epochs? (per task|each)", said), code[:80]


def uses_avalanche(code: str) -> bool:
    """An Avalanche snippet: it runs where Avalanche is installed (``make test-vision``,
    tests/l2bg_avalanche/test_avalanche_readme.py), not here."""
    return re.search(r"^\s*(from|import) avalanche\b", code, re.M) is not None


def run_snippet(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``code`` as pasted in a fresh interpreter, training shortened (SHORT_TRAINING)."""
    script = tmp_path / "snippet.py"
    script.write_text(code)
    runner = SHORT_TRAINING + f"\nexec(compile(open({str(script)!r}).read(), 'snippet', 'exec'))\n"
    env = {**os.environ, "L2BG_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", runner], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.mark.parametrize("index", range(len(snippets())))
def test_each_snippet_runs_as_pasted_on_its_own(index, tmp_path):
    _, code = snippets()[index]
    if uses_avalanche(code):
        pytest.skip("an Avalanche snippet: run by tests/l2bg_avalanche/test_avalanche_readme.py")
    proc = run_snippet(code, tmp_path)
    if "Learner(" in code:
        # progress without a terminal: one line per task; the cache of the command line
        assert re.search(r"\] task 3 pmnist-2: ", proc.stdout), proc.stdout[-2000:]
        assert any((tmp_path / "cache").iterdir())
