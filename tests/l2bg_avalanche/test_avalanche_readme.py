"""The README's Avalanche snippets run as pasted where Avalanche is installed (``make
test-vision``), with the same runner and shortened training as tests/test_readme.py."""

from __future__ import annotations

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("avalanche")

from test_readme import run_snippet, snippets, uses_avalanche  # noqa: E402

AVALANCHE = [code for _, code in snippets() if uses_avalanche(code)]


def test_the_readme_has_an_avalanche_snippet():
    assert AVALANCHE


@pytest.mark.parametrize("code", AVALANCHE)
def test_avalanche_snippet_runs_as_pasted(code, tmp_path):
    proc = run_snippet(code, tmp_path)
    assert "stream accuracy" in proc.stdout and "grow sequence" in proc.stdout
    assert "Top1_Acc_Exp/eval_phase/test_stream/Task002" in proc.stdout  # Avalanche's logger
