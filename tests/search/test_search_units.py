"""The search over units: granularity and grow mode as dimensions of the space, the grow
sequence notation of grown channel groups and adapters, and its bad input."""

import csv
import json

import pytest

from l2bg.search.format import format_sequence
from l2bg.search.space import SearchSpace

TASKS = ("a", "b", "c")
CHOICES = (("granularity", ("layer", "group:4")),)


def test_granularity_and_grow_mode_are_dimensions():
    space = SearchSpace("shared-delta", TASKS, choices=CHOICES, grow_modes=("copy", "adapt"))
    dists = space.distributions()
    assert list(dists["granularity"].choices) == ["layer", "group:4"]
    assert list(dists["grow_mode"].choices) == ["copy", "adapt"]
    params = {"delta": 0.4, "granularity": "group:4", "grow_mode": "adapt"}
    order, steps = space.decode(params)
    assert order == [0, 1, 2] and [s.mode for s in steps] == ["adapt", "adapt"]
    assert space.strategy_options(params) == {"granularity": "group:4"}
    base, _ = space.baseline_params(grow_all=False)
    assert base["grow_mode"] == "copy" and base["granularity"] == "layer"
    assert space.signature()["grow_modes"] == ["copy", "adapt"]
    assert "grow_modes" not in SearchSpace("shared-delta", TASKS).signature()
    _, steps = SearchSpace("shared-delta", TASKS).decode({"delta": 0.4})
    assert [s.mode for s in steps] == [None, None]  # the run's grow mode


def test_bad_grow_modes_are_refused():
    from l2bg.base.errors import ParamError

    with pytest.raises(ParamError, match="grow modes"):
        SearchSpace("shared-delta", TASKS, grow_modes=("clone",))


@pytest.mark.parametrize("g, text", [
    ({"task": "b", "bind_to": "a", "delta": 0.5, "grown_slots": ["fc1"],
      "grown_groups": {"fc2": [0, 3]}, "num_groups": 4, "grow_mode": "adapt"},
     "a b<a[fc1,fc2[0,3]]~adapt@0.5"),
    ({"task": "b", "bind_to": "a", "delta": 0.5, "grown_slots": ["fc1"]}, "a b<a[fc1]@0.5"),
    ({"task": "b", "bind_to": "a", "delta": 0.0, "grown_slots": []}, "a b<a[-]@0"),
])
def test_sequence_notation_of_groups_and_adapters(g, text):
    assert format_sequence([{"task": "a", "bind_to": None}, g]) == text


BASE = ["--benchmark", "pmnist", "--tasks", "3", "--epochs", "1", "--rsa-samples", "20",
        "--threads", "1", "--quiet"]


def search(argv):
    from l2bg.cli import main

    return main(["search", *argv])


@pytest.mark.slow
def test_a_search_chooses_granularity_and_grow_mode_per_trial(tmp_path, tiny_mnist):
    out = tmp_path / "s"
    assert search([*BASE, "--data-root", str(tiny_mnist), "--trials", "6", "--sampler",
                   "random", "--search-granularity", "layer,group:2", "--search-grow-mode",
                   "--cache-dir", str(tmp_path / "c"), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["COMPLETE"] * 6
    seen = set()
    for r in rows:
        params = json.loads(r["search_params"])
        seen.add((params["granularity"], params["grow_mode"]))
        rec = json.loads((out / "trials" / r["number"] / "results.json").read_text())
        grouped = params["granularity"] == "group:2"
        assert ("granularity=group:2" in r["strategy_options"]) is grouped
        for t in rec["tasks"][1:]:
            assert t.get("grow_mode", "copy") == (params["grow_mode"] if t["grown_slots"]
                                                  or t.get("grown_groups") else "copy")
            assert not t.get("grown_groups") or grouped
            if t.get("grown_groups"):
                assert "[" in r["grow_sequence"].split("<", 2)[1]
    assert len(seen) >= 2


@pytest.mark.parametrize("extra, match", [
    (["--search-granularity", "group:0"], "--search-granularity 'group:0' is not"),
    (["--search-granularity", "layer,group:2", "--granularity", "group:2"],
     "--granularity fixes what --search-granularity searches"),
    (["--search-grow-mode", "--grow-mode", "adapt"],
     "--grow-mode fixes what --search-grow-mode searches"),
    (["--search-granularity", "group:2", "--strategy", "random", "--space", "order"],
     "not random"),
])
def test_bad_unit_search_input_is_one_line(extra, match, tmp_path, capsys):
    args = [a for a in BASE if a != "--quiet"]
    assert search([*args, "--trials", "2", "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("l2bg: error:") and match in err and "\n" not in err


@pytest.mark.parametrize("choices, modes, label", [
    ((("granularity", ("group:4", "layer")),), None, "full"),
    ((("granularity", ("group:4", "group:8")),), None, "delta=1"),
    ((), ("adapt", "copy"), "full"),
    ((), ("adapt",), "delta=1"),
    ((("granularity", ("layer",)),), ("adapt", "copy"), "full"),
])
def test_grow_all_baseline_is_full_only_for_whole_layers_by_copy(choices, modes, label):
    """δ = 1 is the strategy ``full`` only when it grows whole layers by copy: a searched
    granularity or grow mode takes ``layer``/``copy`` when it can, else the label is delta=1;
    δ = 0 grows nothing, so it is ``shared`` whatever they are."""
    space = SearchSpace("bind", TASKS, choices=choices, grow_modes=modes)
    params, got = space.baseline_params(grow_all=True)
    assert got == label
    if label == "full":
        assert params.get("granularity", "layer") == "layer"
        assert params.get("grow_mode", "copy") == "copy"
    _, shared = space.baseline_params(grow_all=False)
    assert shared == "shared"  # nothing grows at δ = 0, whatever the granularity or mode
