"""Session-wide test settings: one throw-away cache, so the embedded synthetic-reid is generated once
per test session (and never into the user's own cache)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def session_cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """BENCHMARK_CACHE_DIR for the whole session (subprocesses inherit it)."""
    previous = os.environ.get("BENCHMARK_CACHE_DIR")
    path = tmp_path_factory.mktemp("benchmark-cache")
    os.environ["BENCHMARK_CACHE_DIR"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("BENCHMARK_CACHE_DIR", None)
    else:
        os.environ["BENCHMARK_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def synthetic_reid_generated(session_cache_dir):
    """synthetic-reid, generated into the session cache before any subprocess needs it (runs started
    side by side would otherwise each generate it)."""
    from benchmark.data.registry import load_dataset

    return load_dataset("synthetic-reid")


# The fault-injection suite (tests/faults/) adds one row per fault it injected; the table is printed
# at the end of the session: fault, trials, survived, lost.
FAULT_ROWS: list[dict] = []


@pytest.fixture
def fault_table() -> list[dict]:
    return FAULT_ROWS


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001
    if not FAULT_ROWS:
        return
    rows = {}
    for row in FAULT_ROWS:
        entry = rows.setdefault(row["fault"], {"trials": 0, "survived": 0, "lost": 0})
        for key in ("trials", "survived", "lost"):
            entry[key] += int(row[key])
    width = max(len(f) for f in rows)
    terminalreporter.write_sep("=", "fault injection")
    terminalreporter.write_line(f"{'fault':<{width}}  trials  survived  lost")
    for fault, entry in rows.items():
        terminalreporter.write_line(f"{fault:<{width}}  {entry['trials']:>6}  "
                                    f"{entry['survived']:>8}  {entry['lost']:>4}")
