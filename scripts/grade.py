#!/usr/bin/env python3
"""Grade submitted exercise notebooks with nbval and write a grade report.

    python scripts/grade.py --submissions SUBMISSIONS --out grades     # what `make grade` runs

Submissions, either layout (both may be mixed in one folder):

    SUBMISSIONS/<student>/<chapter>.ipynb        one folder per student (any file name that
                                                 contains the chapter's name, e.g. "05_bottleneck
                                                 (1).ipynb", works; so does a student copy renamed
                                                 at will, which carries its chapter in its metadata)
    SUBMISSIONS/<student>__<chapter>.ipynb       flat: student and chapter in the file name

How a notebook is graded. The grader never runs the submitted notebook itself. For each student and
chapter it assembles a graded notebook from the instructor's reference chapter (``--reference``,
default ``book/``): every cell comes from the reference, check cells included, except the solution
cells, whose source is the student's cell with the same exercise tag (``ex-N-k``; the same cell id
as a fallback). That notebook runs in a temporary folder under
``pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=CELL_TIMEOUT`` in quick mode. An
exercise passes iff its check cell(s) pass. Editing or deleting a check cell changes nothing; an
answer with a syntax error, an exception or an endless loop fails its exercise and grading goes on
with the next cell; a missing answer or a file that is not a notebook is reported.

nbval runs every cell of a notebook in one kernel and keeps going after a failing cell. After a
timeout it interrupts the kernel and marks every later cell "xfail"; this script's pytest hooks
(loaded into that pytest run with ``-p grade``) undo that so later cells are graded normally, and
record each cell's result. The grader watches those records: it interrupts an answer or check cell
after ``--answer-timeout`` seconds (shorter than the chapter cells' limit), and stops a run whose
cell ignores the interrupt. If an answer kills the kernel or ignores the interrupt, the notebook is
graded again with that answer removed, so it costs only its own exercise.

Written to ``--out`` (never into the submissions folder): ``grades.csv`` (one row per student and
exercise), ``totals.csv`` (one row per student), ``grades.md`` (both as tables, plus problems with
files), ``junit/<student>__<chapter>.xml`` (pytest's JUnit XML, one test case per cell; ``.pass2.xml`` and
so on for the passes after an answer stopped the kernel; the grader writes the report itself for a
run that pytest did not finish) and
``logs/<student>__<chapter>.log`` (pytest's output with full tracebacks).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import nbformat

import notebook_tags as tags  # the scripts folder is on sys.path: this script's own folder

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
# Seconds. Chapter cells train models: the same limit as `make test`, generous for a busy machine.
DEFAULT_CELL_TIMEOUT = 900
# Answer and check cells get a shorter limit, so an endless loop costs minutes, not a quarter of an
# hour; the slowest answer in the course (exercise 8.1 trains two small models) takes seconds to two
# minutes in quick mode, depending on how busy the machine is.
DEFAULT_ANSWER_TIMEOUT = 300
# nbval waits 5 s for output after interrupting a timed-out cell; beyond this grace the grader
# assumes the cell ignores interrupts (nbval may then never return) and stops the run.
WATCHDOG_GRACE = 30
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Answers that reach into the kernel or the interpreter could fake a passing check: flag them for a
# human to read (they are still graded).
SUSPICIOUS = re.compile(
    r"get_ipython|__builtins__|\bbuiltins\b|sys\.modules|input_transformers|ast_transformers|"
    r"os\._exit|sys\.exit|sys\.settrace|NBVAL_"
)
KERNEL_START_FAILED = "the kernel did not start: "
KERNEL_START_ATTEMPTS = 3  # concurrent kernels can race for the same TCP ports: try again
QUARANTINE = 'raise RuntimeError("answer not run again by the grader: it stopped the kernel in an earlier pass")'


# ---------------------------------------------------------------------------------------------
# pytest plugin: loaded into the nbval run with `-p grade --grade-results FILE`. One JSON line per
# event, appended and flushed at once, so that the grader can watch progress and keep partial
# results when it has to stop the run.
# ---------------------------------------------------------------------------------------------


def pytest_addoption(parser):
    parser.addoption("--grade-results", default=None, help="scripts/grade.py: write per-cell results (JSON lines) here")


def _record(config, **event) -> None:
    path = config.getoption("grade_results", None)
    if path:
        with open(path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(event) + "\n")


def _kernel_pid(item) -> int | None:
    kernel = getattr(item.parent, "kernel", None)
    process = getattr(getattr(getattr(kernel, "km", None), "provisioner", None), "process", None)
    return getattr(process, "pid", None)


def _failure_message(item, excinfo) -> tuple[str, str]:
    """(first line of the failure, kind): kind is "" or "stopped" (nbval stopped the kernel in this
    cell) or "dead" (the kernel was already gone when this cell started)."""
    timeout = item.config.getoption("nbval_cell_timeout", None)
    text = ANSI.sub("", str(excinfo.value)).strip()
    first = text.splitlines()[0] if text else type(excinfo.value).__name__
    if "Kernel dead" in first:
        return "not run: the kernel had stopped in an earlier cell", "dead"
    if "Failed to interrupt kernel" in first or "waiting for output" in first:
        why = "an endless loop that ignores it, or a dead kernel"
        return f"no result after {timeout:g} s, even after an interrupt ({why})", "stopped"
    if excinfo.typename == "Skipped":
        return "skipped", ""
    errors = [o for o in (getattr(item, "test_outputs", None) or []) if o.get("output_type") == "error"]
    if errors:
        ename = str(errors[-1].get("ename", "Error"))
        evalue = ANSI.sub("", str(errors[-1].get("evalue", ""))).strip()
        if ename == "KeyboardInterrupt" and first.startswith("Timeout"):
            return f"timed out after {timeout:g} s (endless loop?)", ""
        line = evalue.splitlines()[0].strip() if evalue else ""
        # IPython names a cell after a temporary file, e.g. "(3591466789.py, line 2)"; keep the line.
        line = re.sub(r"\((?:[^()]*[\\/])?\d+\.py, line (\d+)\)", r"(line \1)", line)
        return (f"{ename}: {line}" if line else ename), ""
    return first, ""


try:  # the hooks need pytest; the grader itself does not import it
    import pytest

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(item):
        if not hasattr(item, "cell_num"):
            return
        # nbval marks every cell after a timeout as xfail ("expected to fail"), which hides whether
        # a later check passed; the kernel was interrupted and is usable, so grade normally.
        if getattr(item.parent, "timed_out", False):
            item.parent.timed_out = False
        _record(item.config, event="start", cell=item.cell_num, time=time.time())

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(item, call):
        report = yield
        if hasattr(item, "cell_num") and (call.when == "call" or (call.when == "setup" and call.excinfo)):
            pid = _kernel_pid(item)
            if pid and getattr(item.parent, "_graded_kernel", None) != pid:
                item.parent._graded_kernel = pid
                _record(item.config, event="kernel", pid=pid)
            if call.excinfo is None:
                _record(item.config, event="result", cell=item.cell_num, passed=True, message="", kind="")
            else:
                message, kind = _failure_message(item, call.excinfo)
                if call.when == "setup":
                    message, kind = KERNEL_START_FAILED + message, "stopped"
                _record(item.config, event="result", cell=item.cell_num, passed=False, message=message, kind=kind)
        return report

except ImportError:  # pragma: no cover
    pass


# ---------------------------------------------------------------------------------------------
# Reading the reference chapters and the submissions
# ---------------------------------------------------------------------------------------------


@dataclass
class Chapter:
    name: str  # file stem, e.g. "05_bottleneck"
    path: Path
    nb: object
    exercises: list[tags.Exercise]


def load_chapters(reference: Path) -> dict[str, Chapter]:
    """The reference chapters that have code exercises, by name."""
    chapters = {}
    for path in tags.chapter_notebooks(reference):
        nb = tags.read_notebook(path)
        exercises = tags.find_exercises(nb)
        if exercises:
            chapters[path.stem] = Chapter(path.stem, path, nb, exercises)
    return chapters


class NotANotebook(Exception):
    """A submitted file that cannot be graded as a notebook; the message says why."""


def read_submission(path: Path):
    """A submitted notebook, or NotANotebook saying why it is not one. Never trusts the file."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise NotANotebook("not a notebook: the file is not UTF-8 text") from None
    except OSError as error:
        raise NotANotebook(f"cannot read the file: {error.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise NotANotebook(f"not a notebook: invalid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(data, dict) or "nbformat" not in data:
        raise NotANotebook("not a notebook: JSON without an 'nbformat' field")
    if data.get("nbformat") != 4:
        version = f"{data.get('nbformat')}.{data.get('nbformat_minor', '?')}"
        raise NotANotebook(f"unsupported notebook format {version}: expected nbformat 4 (what Jupyter and Colab save)")
    cells = data.get("cells")
    if not isinstance(cells, list) or not all(isinstance(c, dict) and {"cell_type", "source"} <= set(c) for c in cells):
        raise NotANotebook("not a notebook: its 'cells' list is missing or malformed")
    try:
        return nbformat.reads(text, as_version=4)  # joins multi-line sources into strings
    except Exception as error:  # noqa: BLE001  (any parse failure is the file's fault)
        raise NotANotebook(f"not a notebook: {first_line(str(error))}") from None


def first_line(text: str) -> str:
    lines = ANSI.sub("", text).strip().splitlines()
    return lines[0].strip() if lines else ""


def chapter_of(stem: str, nb, chapters: dict[str, Chapter]) -> str | None:
    """Which chapter a submitted file answers: its metadata, else its name."""
    if nb is not None:
        meta = nb.metadata.get(tags.METADATA_KEY)
        if isinstance(meta, dict) and meta.get("chapter"):
            # A student copy knows its chapter; one the reference lacks is not guessed from the name.
            return meta["chapter"] if meta["chapter"] in chapters else None
    if stem in chapters:
        return stem
    inside = [name for name in chapters if name in stem]
    if len(inside) == 1:
        return inside[0]
    number = re.match(r"\D*?(\d\d)(?!\d)", stem)  # "03.ipynb", "03_mine.ipynb", "ch03.ipynb"
    if number:
        same = [name for name in chapters if name.startswith(number.group(1) + "_")]
        if len(same) == 1:
            return same[0]
    return None


@dataclass
class Submission:
    student: str
    chapter: str
    path: Path
    nb: object | None  # None when the file is not a notebook
    problem: str | None  # why it is not a notebook


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def discover(folder: Path, chapters: dict[str, Chapter]):
    """(students, {(student, chapter): Submission}, problems): what the folder holds."""
    students: set[str] = set()
    found: dict[tuple[str, str], Submission] = {}
    problems: list[str] = []

    def add(student: str, path: Path, stem: str) -> None:
        students.add(student)
        try:
            nb, problem = read_submission(path), None
        except NotANotebook as error:
            nb, problem = None, str(error)
        chapter = chapter_of(stem, nb, chapters)
        where = path.relative_to(folder)
        if chapter is None:
            known = ", ".join(chapters)
            problems.append(f"{student}: `{where}` matches no chapter with exercises ({known}); not graded")
            return
        submission = Submission(student, chapter, path, nb, problem)
        previous = found.get((student, chapter))
        if previous is not None:
            exact = path.stem == chapter and previous.path.stem != chapter  # the file named after the chapter wins
            keep, drop = (submission, previous) if exact else (previous, submission)
            problems.append(
                f"{student}: several files for {chapter}: graded `{keep.path.relative_to(folder)}`, "
                f"ignored `{drop.path.relative_to(folder)}`"
            )
            submission = keep
        found[(student, chapter)] = submission

    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            files = sorted(p for p in entry.rglob("*.ipynb") if p.is_file() and not _hidden(p, folder))
            students.add(entry.name)
            if not files:
                problems.append(f"{entry.name}: no .ipynb file in `{entry.name}/`")
            for path in files:
                add(entry.name, path, path.stem)
        elif entry.suffix == ".ipynb":
            student, separator, stem = entry.stem.partition("__")
            if separator and student and stem:
                add(student, entry, stem)
            else:
                problems.append(
                    f"`{entry.name}`: cannot tell whose it is; name it <student>__<chapter>.ipynb "
                    "or put it in a folder named after the student; not graded"
                )
    return sorted(students), found, problems


# ---------------------------------------------------------------------------------------------
# Assembling the graded notebook
# ---------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """A graded notebook and what each of its code cells is."""

    nb: object
    code_cells: list[int]  # code cell number (nbval's "Cell N") -> index in nb.cells
    answer_cells: set[int] = field(default_factory=set)  # code cell numbers under the answer timeout
    missing: set[str] = field(default_factory=set)  # exercises without an answer in the submission
    flagged: dict[str, str] = field(default_factory=dict)  # exercise -> what looks suspicious

    def code_number(self, cell_index: int) -> int:
        return self.code_cells.index(cell_index)


def student_answers(chapter: Chapter, student_nb) -> dict[int, str]:
    """The student's source for each reference solution cell (by index); absent when missing.

    A cell tagged ``solution`` and ``ex-N-k`` answers exercise N.k; when the student deleted the
    tags, the cell with the reference cell's id does. Several tagged cells (a student who split an
    answer into copies of the answer cell) are joined in order, untouched stubs left out.
    """
    answers: dict[int, str] = {}
    student_cells = [c for c in student_nb.cells if c.get("cell_type") == "code"]
    by_id = {c.get("id"): c for c in student_cells if c.get("id")}
    for exercise in chapter.exercises:
        tagged = []
        for cell in student_cells:
            try:
                if tags.is_solution(cell) and tags.exercise_tag(cell) == exercise.tag:
                    tagged.append(cell)
            except tags.ContractError:  # a student cell with two exercise tags answers neither
                continue
        if len(exercise.solutions) == 1:
            written = [c for c in tagged if tags.stub_line(exercise.tag) not in c.source] or tagged
            if written:
                answers[exercise.solutions[0]] = "\n\n".join(c.source for c in written)
                continue
        elif len(tagged) == len(exercise.solutions):
            answers.update({index: cell.source for index, cell in zip(exercise.solutions, tagged)})
            continue
        for index in exercise.solutions:  # fall back on cell ids
            cell = by_id.get(chapter.nb.cells[index].get("id"))
            if cell is not None:
                answers[index] = cell.source
    return answers


def assemble(chapter: Chapter, student_nb, quarantined: set[int]) -> Plan:
    """The reference chapter with the student's answers in its solution cells."""
    nb = copy.deepcopy(chapter.nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    plan = Plan(nb, [i for i, c in enumerate(nb.cells) if c.cell_type == "code"])
    plan.answer_cells = {plan.code_number(i) for e in chapter.exercises for i in e.solutions + e.checks}
    answers = student_answers(chapter, student_nb)
    for exercise in chapter.exercises:
        for index in exercise.solutions:
            if index in quarantined:
                source = QUARANTINE
            elif index in answers:
                source = answers[index]
                suspicious = sorted(set(SUSPICIOUS.findall(source)))
                if suspicious:
                    uses = ", ".join(suspicious)
                    plan.flagged[exercise.tag] = f"answer uses {uses}: read it before trusting the result"
            else:
                plan.missing.add(exercise.tag)
                source = f'raise NotImplementedError("no answer to exercise {exercise.label} in the submission")'
            nb.cells[index].source = source
    return plan


# ---------------------------------------------------------------------------------------------
# Running nbval
# ---------------------------------------------------------------------------------------------


@dataclass
class Options:
    cell_timeout: float  # every cell (nbval's --nbval-cell-timeout)
    answer_timeout: float  # answer and check cells (the grader interrupts the kernel)
    watchdog_grace: float
    out: Path
    work: Path
    env: dict


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "student"


def _read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a killed run
            continue
    return events


def _stop(process: subprocess.Popen, kernel_pids: set[int]) -> None:
    """Stop a stuck pytest run: ask politely (its teardown stops the kernel), then kill."""
    for sig, wait in ((signal.SIGINT, 15), (signal.SIGKILL, 5)):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    for pid in kernel_pids:  # the kernel runs in its own session: killpg does not reach it
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# Runs in progress, so that an interrupted grader (Ctrl-C, SIGTERM) can stop them: each runs in a
# session of its own (so that it can be stopped without stopping the grader) and would outlive it.
_RUNNING: dict[subprocess.Popen, Path] = {}
_STOPPING = threading.Event()


def stop_all_runs() -> None:
    _STOPPING.set()
    for process, results in list(_RUNNING.items()):
        _stop(process, {e["pid"] for e in _read_events(results) if e.get("event") == "kernel"})


def run_nbval(
    plan: Plan, run_dir: Path, name: str, options: Options, log, junit_name: str | None = None
) -> dict[int, dict]:
    """Run the plan's notebook under nbval; {code cell number: result event}."""
    for attempt in range(KERNEL_START_ATTEMPTS):
        outcome = _run_once(plan, run_dir, name, options, log, junit_name)
        first = outcome.get(0, {})
        if not first.get("message", "").startswith(KERNEL_START_FAILED) or _STOPPING.is_set():
            break
        log.write(f"=== the kernel did not start; trying again ({attempt + 2} of {KERNEL_START_ATTEMPTS})\n")
        log.flush()
        time.sleep(1 + attempt)
    return outcome


def _run_once(plan: Plan, run_dir: Path, name: str, options: Options, log, junit_name: str | None) -> dict[int, dict]:
    if _STOPPING.is_set():
        return {}
    run_dir.mkdir(parents=True, exist_ok=True)
    notebook = run_dir / f"{name}.ipynb"
    nbformat.write(plan.nb, str(notebook))
    results = run_dir / "results.jsonl"
    results.unlink(missing_ok=True)
    (run_dir / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")  # ignore any outer config
    junit = options.out / "junit" / f"{junit_name or name}.xml"
    command = [
        sys.executable, "-m", "pytest", notebook.name,
        "-c", "pytest.ini", "--rootdir", ".", "-p", "no:cacheprovider", "-p", "grade",
        "--nbval-kernel-startup-timeout=180",  # a busy machine can take a minute to start a kernel
        "--grade-results", str(results), "--nbval-lax", "--nbval-current-env",
        f"--nbval-cell-timeout={options.cell_timeout:g}", f"--junitxml={junit}", "--color=no", "-q",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=run_dir, env=options.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    _RUNNING[process] = results
    try:
        outcome = _watch(process, results, plan, options)
    finally:
        _RUNNING.pop(process, None)
    # pytest exits with 0 or 1 when it ran every cell. Stopped by the grader, or broken by a dead kernel,
    # it writes no report or one that lacks the cell that stopped it: the grader's own events say more.
    if process.returncode not in (0, 1) or not junit.exists():
        write_junit(junit, notebook.name, outcome)
    return outcome


def write_junit(path: Path, notebook_name: str, outcome: dict[int, dict]) -> None:
    """A JUnit XML report of a run that pytest could not report in full: one test case per cell that ran.

    Cells are named as nbval names them ("Cell 4"), so both kinds of report read the same.
    Written to a temporary file, then renamed.
    """
    failures = sum(not r["passed"] for r in outcome.values())
    suites = ElementTree.Element("testsuites", name="grade.py")
    suite = ElementTree.SubElement(
        suites, "testsuite", name="grade.py", errors="0", failures=str(failures), skipped="0", tests=str(len(outcome))
    )
    properties = ElementTree.SubElement(suite, "properties")
    ElementTree.SubElement(properties, "property", name="written_by", value="scripts/grade.py: pytest did not finish this run")
    for cell in sorted(outcome):
        case = ElementTree.SubElement(suite, "testcase", classname=notebook_name, name=f"Cell {cell}")
        if not outcome[cell]["passed"]:
            failure = ElementTree.SubElement(case, "failure", message=outcome[cell]["message"])
            failure.text = outcome[cell]["message"]
    tmp = path.with_name(f".{path.name}.tmp")
    ElementTree.ElementTree(suites).write(tmp, encoding="utf-8", xml_declaration=True)
    os.replace(tmp, path)


def _watch(process: subprocess.Popen, results: Path, plan: Plan, options: Options) -> dict[int, dict]:
    """Wait for a run, enforcing the answer timeout; {code cell number: result event}."""
    answer_limit = min(options.answer_timeout, options.cell_timeout)
    stuck: tuple[int, str] | None = None
    interrupted: set[int] = set()
    while process.poll() is None:
        time.sleep(0.5)
        events = _read_events(results)
        started = [e for e in events if e.get("event") == "start"]
        finished = {e["cell"] for e in events if e.get("event") == "result"}
        if not started or started[-1]["cell"] in finished:
            continue
        cell, elapsed = started[-1]["cell"], time.time() - started[-1]["time"]
        pids = {e["pid"] for e in events if e.get("event") == "kernel"}
        limit = answer_limit if cell in plan.answer_cells else options.cell_timeout
        if limit < options.cell_timeout and elapsed > limit and cell not in interrupted:
            # What nbval does at its own timeout: interrupt the kernel (KeyboardInterrupt in the cell).
            interrupted.add(cell)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGINT)
                except (ProcessLookupError, PermissionError):
                    pass
        if elapsed > limit + options.watchdog_grace:
            _stop(process, pids)
            message = (
                f"no result after {limit:g} s, even after an interrupt (an endless loop that ignores it, "
                "or a dead kernel); the grader stopped the run"
            )
            stuck = (cell, message)
    events = _read_events(results)
    outcome = {e["cell"]: e for e in events if e.get("event") == "result"}
    for cell in interrupted:
        if cell in outcome and outcome[cell]["message"] == "KeyboardInterrupt":
            outcome[cell]["message"] = f"timed out after {answer_limit:g} s (endless loop?)"
    if stuck is not None:
        outcome[stuck[0]] = {"cell": stuck[0], "passed": False, "message": stuck[1], "kind": "stopped"}
    return outcome


def runner_environment(work: Path, parallel: bool = False) -> dict:
    """Environment of the nbval runs: quick mode, this plugin importable, a clean IPython profile."""
    env = dict(os.environ)
    env["RESNET_MODE"] = "quick"  # grading always runs the chapters at quick scale
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPTS), env.get("PYTHONPATH")]))  # for `-p grade`
    env.pop("PYTEST_ADDOPTS", None)
    if parallel:
        env.setdefault("OMP_NUM_THREADS", "1")  # parallel kernels must not fight over the cores
    # A fresh IPython profile for the kernels: no personal startup files, no history (nothing written
    # to ~/.ipython, no database shared by parallel kernels), tracebacks without colour codes.
    profile = work / ".ipython" / "profile_default"
    profile.mkdir(parents=True, exist_ok=True)
    config = 'c.InteractiveShell.colors = "nocolor"\nc.HistoryManager.enabled = False\n'
    (profile / "ipython_kernel_config.py").write_text(config, encoding="utf-8")
    env["IPYTHONDIR"] = str(work / ".ipython")
    return env


def _culprit(outcome: dict[int, dict], start: int) -> int | None:
    """The code cell that stopped the kernel, if any did at or after ``start``."""
    for number in sorted(n for n in outcome if n >= start):
        kind = outcome[number].get("kind")
        if kind == "stopped":
            return number
        if kind == "dead":
            return max(number - 1, start)  # the kernel died after the previous cell had replied
    return None


@dataclass
class Row:
    student: str
    chapter: str
    exercise: str  # "3.2"
    title: str
    passed: bool
    message: str = ""
    note: str = ""


def grade_submission(student: str, chapter: Chapter, submission: Submission | None, options: Options):
    """Rows for one student and chapter, notes, and the seconds it took."""
    begin = time.perf_counter()
    if submission is None or submission.nb is None:
        reason = submission.problem if submission else f"no notebook for {chapter.name} in the submissions"
        rows = [Row(student, chapter.name, e.label, e.title, False, reason) for e in chapter.exercises]
        return rows, [], time.perf_counter() - begin

    name = f"{_safe(student)}__{chapter.name}"
    run_dir = options.work / name
    solutions = {i for e in chapter.exercises for i in e.solutions}
    # The answer cells to blame when a cell stops the kernel: its own, or its exercise's.
    blame = {i: e.solutions for e in chapter.exercises for i in e.solutions + e.checks}
    quarantined: set[int] = set()
    merged: dict[int, dict] = {}
    start = 0
    log_path = options.out / "logs" / f"{name}.log"
    with open(log_path, "w", encoding="utf-8") as log:
        for attempt in range(len(solutions) + 1):
            if attempt and _STOPPING.is_set():
                break
            plan = assemble(chapter, submission.nb, quarantined)
            log.write(f"=== grading pass {attempt + 1}\n")
            log.flush()
            junit_name = name if attempt == 0 else f"{name}.pass{attempt + 1}"
            outcome = run_nbval(plan, run_dir, name, options, log, junit_name)
            merged.update({n: r for n, r in outcome.items() if n >= start})
            for n in [n for n in merged if n >= start and n not in outcome]:
                del merged[n]  # results of an earlier pass that this pass did not reach
            culprit = _culprit(merged, start)
            if culprit is None or plan.code_cells[culprit] not in blame or culprit + 1 >= len(plan.code_cells):
                break
            # An answer stopped the kernel: grade the later cells again without it.
            quarantined.update(blame[plan.code_cells[culprit]])
            start = culprit + 1

    rows = []
    for exercise in chapter.exercises:
        checks = [merged.get(plan.code_number(i)) for i in exercise.checks]
        answers = [merged.get(plan.code_number(i)) for i in exercise.solutions]
        passed = all(r is not None and r["passed"] for r in checks)
        message = ""
        if not passed:
            failed_answer = next((r for r in answers if r is not None and not r["passed"]), None)
            failed_check = next((r for r in checks if r is not None and not r["passed"]), None)
            if exercise.tag in plan.missing:
                message = f"no answer: the submission has no cell tagged {exercise.tag}"
            elif failed_answer is not None:
                message = "answer cell: " + failed_answer["message"]
            elif failed_check is not None:
                message = "check: " + failed_check["message"]
            else:
                message = "check not run: grading stopped before it (see the log)"
        note = plan.flagged.get(exercise.tag, "")
        rows.append(Row(student, chapter.name, exercise.label, exercise.title, passed, message, note))

    graded = {i for e in chapter.exercises for i in e.solutions + e.checks}
    notes = []
    broken = [
        (plan.code_cells[n], r["message"])
        for n, r in sorted(merged.items())
        if not r["passed"] and plan.code_cells[n] not in graded
    ]
    if broken:
        index, message = broken[0]
        more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
        notes.append(f"{student}, {chapter.name}: chapter cell {index} failed{more}: {message}")
    return rows, notes, time.perf_counter() - begin


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def write_reports(out: Path, rows: list[Row], problems: list[str], notes: list[str], header: str) -> list[tuple]:
    """grades.csv, totals.csv and grades.md; returns the totals."""
    students = sorted({r.student for r in rows})
    totals = []
    for student in students:
        mine = [r for r in rows if r.student == student]
        passed = sum(r.passed for r in mine)
        totals.append((student, passed, len(mine), round(100 * passed / len(mine)) if mine else 0))

    with open(out / "grades.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["student", "chapter", "exercise", "title", "result", "message", "note"])
        for r in rows:
            result = "pass" if r.passed else "fail"
            writer.writerow([r.student, r.chapter, r.exercise, r.title, result, r.message, r.note])
    with open(out / "totals.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["student", "passed", "exercises", "score_percent"])
        writer.writerows(totals)

    lines = ["# Exercise grades", "", header, "", "## Totals", ""]
    lines += ["| Student | Passed | Exercises | Score |", "|---|---:|---:|---:|"]
    lines += [f"| {_md(s)} | {p} | {n} | {pct}% |" for s, p, n, pct in totals]
    lines += ["", "## Exercises", ""]
    lines += ["| Student | Chapter | Exercise | Result | First line of the failure |", "|---|---|---|---|---|"]
    for r in rows:
        exercise = f"{r.exercise} {r.title}".strip()
        message = r.message + (f" ({r.note})" if r.note else "")
        result = "pass" if r.passed else "**fail**"
        lines.append(f"| {_md(r.student)} | {r.chapter} | {_md(exercise)} | {result} | {_md(message)} |")
    if problems:
        lines += ["", "## Problems with the submitted files", ""] + [f"- {_md(p)}" for p in problems]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {_md(n)}" for n in notes]
    (out / "grades.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return totals


# ---------------------------------------------------------------------------------------------


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=Path, required=True, help="folder of submitted notebooks")
    parser.add_argument("--out", type=Path, default=ROOT / "grades", help="report folder (default: grades/)")
    parser.add_argument("--reference", type=Path, default=ROOT / "book", help="instructor chapters (default: book/)")
    parser.add_argument("--chapters", nargs="*", help="chapters to grade (default: every chapter anyone submitted)")
    parser.add_argument(
        "--cell-timeout", type=float, default=DEFAULT_CELL_TIMEOUT,
        help="seconds per chapter cell (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--answer-timeout", type=float, default=DEFAULT_ANSWER_TIMEOUT,
        help="seconds per answer or check cell (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--watchdog-grace", type=float, default=WATCHDOG_GRACE,
        help="seconds past the cell timeout before a run that ignores the interrupt is stopped (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1, help="notebooks graded at once (default: 1)")
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary folder of graded notebooks")
    args = parser.parse_args(argv)

    if not args.submissions.is_dir():
        parser.error(f"--submissions {args.submissions}: not a folder")
    if _inside(args.out, args.submissions):
        parser.error("--out must not be inside the submissions folder: the grader never writes there")
    chapters = load_chapters(args.reference)
    if not chapters:
        parser.error(f"no chapter with code exercises in {args.reference}")
    if args.chapters:
        unknown = [c for c in args.chapters if c.removesuffix(".ipynb") not in chapters]
        if unknown:
            parser.error(f"unknown chapters {unknown}; chapters with exercises: {', '.join(chapters)}")

    students, found, problems = discover(args.submissions, chapters)
    selected = [c.removesuffix(".ipynb") for c in args.chapters] if args.chapters else sorted({c for _, c in found})
    if not students or not selected:
        problems.append("no gradable submission found")
    for out_dir in (args.out, args.out / "junit", args.out / "logs"):
        out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*(args.out / "junit").glob("*.xml"), *(args.out / "logs").glob("*.log")]:
        stale.unlink()  # an earlier grading's reports would read as this one's

    work = Path(tempfile.mkdtemp(prefix="grade-"))
    env = runner_environment(work, parallel=args.jobs > 1)
    options = Options(args.cell_timeout, args.answer_timeout, args.watchdog_grace, args.out.resolve(), work, env)

    tasks = [(s, chapters[c], found.get((s, c))) for s in students for c in selected]

    def run(task):
        student, chapter, submission = task
        rows, notes, seconds = grade_submission(student, chapter, submission, options)
        passed = sum(r.passed for r in rows)
        print(f"{student:>20} {chapter.name}: {passed}/{len(rows)} passed in {seconds:.1f} s", flush=True)
        return rows, notes

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    in_main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous_handler = signal.signal(signal.SIGTERM, interrupt) if in_main_thread else None
    pool = ThreadPoolExecutor(max_workers=max(1, args.jobs))
    try:
        results = list(pool.map(run, tasks))
    except KeyboardInterrupt:
        print("interrupted: stopping the runs in progress; no report written", file=sys.stderr)
        stop_all_runs()
        pool.shutdown(wait=True, cancel_futures=True)
        return 130
    finally:
        pool.shutdown(wait=True)
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)
        _STOPPING.clear()
        if args.keep_work:
            print(f"graded notebooks kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    rows = [row for task_rows, _ in results for row in task_rows]
    notes = [note for _, task_notes in results for note in task_notes]
    header = (
        f"Graded by `scripts/grade.py` against `{args.reference}` (chapters: {', '.join(selected) or 'none'}), "
        f"quick mode, timeouts {args.cell_timeout:g} s per chapter cell and "
        f"{min(args.answer_timeout, args.cell_timeout):g} s per answer or check cell. An exercise passes when the "
        "reference check cell passes with the student's answer cell in place of the solution."
    )
    totals = write_reports(args.out, rows, problems, notes, header)
    for student, passed, total, percent in totals:
        print(f"{student}: {passed}/{total} ({percent}%)")
    print(f"report: {args.out / 'grades.md'}, {args.out / 'grades.csv'}, {args.out / 'totals.csv'}")
    return 0 if students and selected else 1


if __name__ == "__main__":
    sys.exit(main())
