"""pytest set-up of the benchmark suites (``pytest benchmarks`` collects ``bench_*.py``): the
harness session, its options, the ``record`` fixture and the table at the end of the run."""

from __future__ import annotations

import os

import harness
import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("l2bg benchmarks")
    group.addoption("--bench-full", action="store_true",
                    help="run the heavy rows too (as L2BG_BENCH_FULL=1)")  # fmt: skip
    group.addoption("--bench-out", default=None,
                    help="directory of bench.csv/bench.json (default benchmarks/results, "
                         "or $L2BG_BENCH_OUT)")  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--bench-full", default=False):
        os.environ["L2BG_BENCH_FULL"] = "1"
        harness.FULL = True
    harness.start_session(config.getoption("--bench-out", default=None))


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    s = harness.session()
    if not s.rows:
        return
    terminalreporter.write_sep("=", "l2bg benchmark table")
    terminalreporter.write_line(harness.format_table(s.rows, s.meta))
    terminalreporter.write_line(f"rows: {s.csv_path} and {s.json_path}")


@pytest.fixture
def record():
    """``harness.record``: append a row (see benchmarks/README.md)."""
    return harness.record
