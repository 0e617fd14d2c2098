"""pytest plugin of ``scripts/grade.py``: nbval's verdict on every cell, as JSON lines.

The grader loads it into each of its nbval runs (``-p scripts.grade_plugin --grade-results FILE``).
It uses pytest's public hook API only: the collected items in order (nbval collects one test per
code cell, in notebook order, so the n-th item is code cell n) and each test report's ``outcome``
and ``when``. Why a cell failed is recorded inside the kernel by the grader's IPython hooks, not
read from nbval; pytest's own text of a failure goes to the grader's log.

One line per finished cell, appended and flushed at once, so that a run the grader has to stop
still leaves the verdicts of the cells that finished.
"""

from __future__ import annotations

import json

_results_path: str | None = None
_cell_of: dict[str, int] = {}  # pytest node id -> code cell number


def pytest_addoption(parser):
    parser.addoption(
        "--grade-results", default=None, help="scripts/grade.py: write each cell's outcome (JSON lines) here"
    )


def pytest_configure(config):
    global _results_path
    _results_path = config.getoption("grade_results")


def pytest_collection_modifyitems(session, config, items):
    _cell_of.clear()
    _cell_of.update({item.nodeid: number for number, item in enumerate(items)})


def pytest_runtest_logreport(report):
    # The "call" phase is the cell's run; a failed or skipped "setup" means it never ran (the kernel
    # did not start, or a skip marker).
    if not _results_path or report.nodeid not in _cell_of:
        return
    if report.when != "call" and not (report.when == "setup" and report.outcome != "passed"):
        return
    event = {"cell": _cell_of[report.nodeid], "outcome": report.outcome, "when": report.when}
    with open(_results_path, "a", encoding="utf-8") as stream:
        stream.write(json.dumps(event) + "\n")
