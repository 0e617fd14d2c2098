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
as a fallback), and the wrong-answer cells, which are left out. That notebook runs in a temporary
folder under ``pytest --nbval-lax --nbval-current-env`` in quick mode. An
exercise passes iff its check cell(s) pass. Editing or deleting a check cell changes nothing; an
answer with a syntax error, an exception or an endless loop fails its exercise and grading goes on
with the next cell; a missing answer or a file that is not a notebook is reported.

nbval runs every cell of a notebook in one kernel and keeps going after a failing cell. The grader
watches the run through public interfaces only: its own IPython startup file in the kernels' profile
records the kernel's pid and, through IPython's ``pre_run_cell`` / ``post_run_cell`` events, when each
cell starts and how it ends (the exception's name and value); a small pytest plugin
(``scripts/grade_plugin.py``) records nbval's verdict on each cell. The grader interrupts (SIGINT) an
answer or check cell after ``--answer-timeout`` seconds and any other cell after ``--cell-timeout``,
so nbval's own timeout is only a far-off backstop; it stops a run whose cell ignores the interrupt
or whose kernel is gone (its pid no longer exists). If an answer kills the kernel or ignores the
interrupt, the notebook is graded again with that answer removed, so it costs only its own exercise.

Every run is started in the sandbox of ``scripts/sandbox.py`` (bubblewrap where it works: no network,
the file system read-only but for the run's folder, a private /tmp and HOME, its own PID namespace;
everywhere: limits on memory, processes, CPU time and file size). The kernel reports its pid as it
sees it in its namespace; the grader finds the host's pid of that process before it signals it.

Answers that could fake a passing check are flagged in the report with their lines: those that reach
into the kernel or the interpreter (``get_ipython``, ``builtins``, ``sys.modules``, exits, nbval
markers) and those that patch what the checks rely on (an assignment to an attribute of an imported
module or class, such as ``torch.allclose = ...``, or ``setattr`` on one).

Written to ``--out`` (never into the submissions folder): ``grades.csv`` (one row per student and
exercise), ``totals.csv`` (one row per student), ``grades.md`` (both as tables, plus problems with
files), ``junit/<student>__<chapter>.xml`` (pytest's JUnit XML, one test case per cell; ``.pass2.xml`` and
so on for the passes after an answer stopped the kernel; the grader writes the report itself for a
run that pytest did not finish) and
``logs/<student>__<chapter>.log`` (pytest's output with full tracebacks). Reports are written
atomically (``utils.files.atomic_write``).
"""

from __future__ import annotations

import argparse
import ast
import builtins
import copy
import csv
import json
import os
import queue
import re
import secrets
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

if __package__ in (None, ""):  # run as `python scripts/grade.py`: make the `scripts` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import notebook_tags as tags  # noqa: E402
from scripts import sandbox  # noqa: E402
from utils.files import atomic_write  # noqa: E402

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
# Seconds. Chapter cells train models: the same limit as `make test`, generous for a busy machine.
DEFAULT_CELL_TIMEOUT = 900
# Answer and check cells get a shorter limit, so an endless loop costs minutes, not a quarter of an
# hour; the slowest answer in the course (exercise 8.1 trains two small models) takes seconds to two
# minutes in quick mode, depending on how busy the machine is.
DEFAULT_ANSWER_TIMEOUT = 300
# Beyond a cell's limit plus this grace the grader assumes the cell ignores the interrupt and stops
# the run; a kernel whose pid has gone for this long between cells also stops it.
WATCHDOG_GRACE = 30
# nbval's own timeout is the cell timeout plus the grace plus this: a backstop that the watchdog always
# beats, so nbval never reaches a timeout of its own (after one it would mark later cells xfail).
NBVAL_BACKSTOP = 600
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
KERNEL_START_FAILED = "the kernel did not start: "
KERNEL_START_ATTEMPTS = 3  # concurrent kernels can race for the same TCP ports: try again
QUARANTINE = 'raise RuntimeError("answer not run again by the grader: it stopped the kernel in an earlier pass")'


# ---------------------------------------------------------------------------------------------
# Inside the kernel: an IPython startup file in the grading kernels' own profile (public IPython
# API). It records the kernel's pid, then when each graded cell starts and how it ends, one JSON
# line per event, appended and flushed at once, so that the grader can watch progress and keep
# partial results when it has to stop the run. The grader appends a last line to every code cell,
# a comment naming the cell's number and a token of this run (cells nbval skips, or code nbval
# runs by itself, cannot shift the count); the events file comes from the environment.
# ---------------------------------------------------------------------------------------------

EVENTS_VARIABLE = "GRADE_KERNEL_EVENTS"
TOKEN_VARIABLE = "GRADE_CELL_TOKEN"
KERNEL_STARTUP = '''\
# Written by scripts/grade.py into the grading kernels' IPython profile; not part of the course.
def _grade_py_install():
    import json
    import os
    import re
    import time

    path, token = os.environ.get("GRADE_KERNEL_EVENTS"), os.environ.get("GRADE_CELL_TOKEN")
    if not path or not token:
        return
    marker = re.compile(r"^# grade\\.py: cell (\\d+) " + re.escape(token) + r"$", re.MULTILINE)

    def write(**event):
        with open(path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(event) + "\\n")

    def number(raw_cell):
        found = marker.findall(raw_cell or "")
        return int(found[-1]) if found else None

    def started(info):
        cell = number(info.raw_cell)
        if cell is not None:
            write(event="start", cell=cell, time=time.time())

    def finished(result):
        cell = number(result.info.raw_cell)
        if cell is None:
            return
        error = result.error_before_exec or result.error_in_exec
        if error is None:
            write(event="result", cell=cell, passed=True)
        else:
            try:
                value = str(error)
            except Exception:  # an exception whose __str__ fails still fails its cell
                value = ""
            write(event="result", cell=cell, passed=False, ename=type(error).__name__, evalue=value)

    shell = get_ipython()  # noqa: F821 (IPython runs startup files in the user namespace)
    shell.events.register("pre_run_cell", started)
    shell.events.register("post_run_cell", finished)
    write(event="kernel", pid=os.getpid())


_grade_py_install()
del _grade_py_install
'''


def cell_marker(number: int, token: str) -> str:
    """The last line the grader appends to code cell ``number`` (see KERNEL_STARTUP)."""
    return f"# grade.py: cell {number} {token}"


# ---------------------------------------------------------------------------------------------
# Answers that could fake a passing check: flagged for a human to read (they are still graded)
# ---------------------------------------------------------------------------------------------

# Names that reach into the kernel or the interpreter, wherever an answer uses them.
KERNEL_NAMES = {
    "get_ipython": "get_ipython", "__builtins__": "builtins", "builtins": "builtins",
    "__import__": "__import__", "exec": "exec", "eval": "eval", "exit": "exit", "quit": "quit",
}  # fmt: skip
KERNEL_ATTRIBUTES = {
    "sys.modules": "sys.modules", "os._exit": "os._exit", "sys.exit": "sys.exit",
    "sys.settrace": "sys.settrace", "sys.setprofile": "sys.setprofile",
}  # fmt: skip
KERNEL_ATTRIBUTE_NAMES = {
    "input_transformers_cleanup": "input_transformers", "input_transformers_post": "input_transformers",
    "ast_transformers": "ast_transformers", "__setattr__": "__setattr__", "__dict__": "__dict__",
}  # fmt: skip
# A comment nbval obeys (NBVAL_SKIP, NBVAL_RAISES_EXCEPTION, ...): never needed in an answer.
NBVAL_MARKER = re.compile(r"^\s*#\s*NBVAL_\w*", re.MULTILINE)
# When an answer is not Python (a syntax error), its text is searched for the same names.
SUSPICIOUS_TEXT = re.compile(
    r"get_ipython|__builtins__|\bbuiltins\b|sys\.modules|input_transformers|ast_transformers|"
    r"os\._exit|sys\.exit|sys\.settrace|__import__|\bsetattr\b"
)


def _python(source: str) -> str:
    """A cell's source as Python (IPython magics and shell escapes become calls, lines kept)."""
    from IPython.core.inputtransformer2 import TransformerManager  # nbval's kernels need IPython anyway

    return TransformerManager().transform_cell(source)


# Python's own line breaks (a form feed or U+2028 inside a line is no break for it, as it is for str.splitlines).
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def source_lines(source: str) -> list[str]:
    """A cell's lines as Python numbers them."""
    return _LINE_BREAK.split(source)


def _parse(source: str) -> ast.Module | None:
    """The cell's syntax tree, its line numbers those of ``source``.

    Plain Python is parsed as it is. A cell with IPython syntax (magics, shell escapes) is parsed as
    IPython transforms it, which drops leading blank lines: its line numbers are shifted back."""
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError):
        pass
    try:
        tree = ast.parse(_python(source))
    except (SyntaxError, ValueError):
        return None
    lines = source_lines(source)
    blank = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    return ast.increment_lineno(tree, blank) if blank else tree


def _dotted(node) -> str | None:
    """``torch.nn.Module`` for an attribute chain on a plain name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _root(node):
    """The expression under attributes and subscripts: ``torch`` for ``torch.nn.__dict__["x"]``."""
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node


def imported_names(tree: ast.Module | None, known: set[str] = frozenset()) -> tuple[set[str], set[str]]:
    """(names bound to modules or imported objects, names of classes defined) in a parsed cell.

    A plain alias of either, or of a ``known`` name (``F = torch.nn.functional``), counts as the same."""
    imported, classes = set(), set()
    if tree is None:
        return imported, classes
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name != "*":
                    imported.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ClassDef):
            classes.add(node.name)
    for node in ast.walk(tree):  # aliases, after every import is known
        if isinstance(node, ast.Assign) and isinstance(_root(node.value), ast.Name):
            if _root(node.value).id in imported | classes | known:
                imported.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return imported, classes


def protected_names(nb) -> set[str]:
    """What an answer in this reference chapter must not patch: everything the chapter imports, the
    classes it defines and Python's built-ins (their attributes are what the checks call)."""
    names = set(dir(builtins))
    for cell in nb.cells:
        if cell.cell_type == "code":
            imported, classes = imported_names(_parse(cell.source))
            names |= imported | classes
    return names


def suspicious_lines(source: str, protected: set[str]) -> list[tuple[int, str, str]]:
    """[(line number, what it does, e.g. "patches torch.allclose" or "uses get_ipython", line)] of an
    answer, in line order. The answer's own imports count as protected; its own classes do not."""
    lines = source_lines(source)
    found: dict[tuple[int, str], None] = {}

    def flag(line: int, what: str) -> None:
        if 1 <= line <= len(lines):
            found.setdefault((line, what), None)

    for match in NBVAL_MARKER.finditer(source):
        flag(source.count("\n", 0, match.start()) + 1, "uses NBVAL_")
    tree = _parse(source)
    if tree is None:  # not Python: the kernel reports the syntax error; still show what it names
        for number, line in enumerate(lines, start=1):
            for name in sorted(set(SUSPICIOUS_TEXT.findall(line))):
                flag(number, f"uses {name}")
        return [(line, what, lines[line - 1].strip()) for line, what in sorted(found)]

    own_imports, _ = imported_names(tree, protected)
    guarded = protected | own_imports

    def patched(target) -> str | None:
        """What an assignment target (or deletion) changes when that is a protected object."""
        if isinstance(target, ast.Attribute):
            dotted = _dotted(target)
            root = _root(target)
            if dotted and dotted.split(".")[0] in guarded:
                return dotted
            if not isinstance(root, ast.Name):  # __import__("torch").allclose = ..., type(x).f = ...
                return ast.unparse(target)
        elif isinstance(target, ast.Subscript):  # torch.__dict__["allclose"] = ..., vars(torch)[...]
            root = _root(target)
            if isinstance(root, ast.Name) and root.id in guarded and isinstance(target.value, ast.Attribute):
                return ast.unparse(target)
            if isinstance(root, ast.Call):
                return ast.unparse(target)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                what = patched(element)
                if what:
                    return what
        elif isinstance(target, ast.Starred):
            return patched(target.value)
        return None

    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        # Magic lines become get_ipython() calls: only a get_ipython the student wrote counts.
        if isinstance(node, ast.Name) and node.id in KERNEL_NAMES:
            if 1 <= line <= len(lines) and node.id in lines[line - 1]:
                flag(line, f"uses {KERNEL_NAMES[node.id]}")
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted in KERNEL_ATTRIBUTES:
                flag(line, f"uses {KERNEL_ATTRIBUTES[dotted]}")
            if node.attr in KERNEL_ATTRIBUTE_NAMES:
                flag(line, f"uses {KERNEL_ATTRIBUTE_NAMES[node.attr]}")
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete, ast.For, ast.AsyncFor)):
            targets = {
                ast.Assign: lambda n: n.targets, ast.Delete: lambda n: n.targets,
                ast.For: lambda n: [n.target], ast.AsyncFor: lambda n: [n.target],
            }.get(type(node), lambda n: [n.target])(node)  # fmt: skip
            for target in targets:
                what = patched(target)
                if what:
                    flag(line, f"patches {what}")
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            what = patched(node.optional_vars)
            if what:
                flag(node.optional_vars.lineno, f"patches {what}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr"):
            if node.args:
                first = node.args[0]
                root = _root(first)
                if not isinstance(root, ast.Name) or root.id in guarded:
                    flag(line, f"patches {ast.unparse(first)} ({node.func.id})")
    return [(line, what, lines[line - 1].strip()) for line, what in sorted(found)]


def describe_suspicious(findings: list[tuple[int, str, str]]) -> str:
    """One note for a flagged answer: what it does, with each offending line."""
    whats = list(dict.fromkeys(what for _, what, _ in findings))
    uses = [w.removeprefix("uses ") for w in whats if w.startswith("uses ")]
    patches = [w.removeprefix("patches ") for w in whats if w.startswith("patches ")]
    parts = ([f"uses {', '.join(uses)}"] if uses else []) + ([f"patches {', '.join(patches)}"] if patches else [])
    shown = list(dict.fromkeys((line, text) for line, _, text in findings))
    where = "; ".join(f"line {line}: `{text[:120]}`" for line, text in shown)
    return f"answer {' and '.join(parts)} ({where}): read it before trusting the result"


# ---------------------------------------------------------------------------------------------
# Reading the reference chapters and the submissions
# ---------------------------------------------------------------------------------------------


@dataclass
class Chapter:
    name: str  # file stem, e.g. "05_bottleneck"
    path: Path
    nb: object  # without its wrong-answer cells: they are never graded nor run
    exercises: list[tags.Exercise]
    protected: set[str] = field(default_factory=set)  # names an answer must not patch


def load_chapters(reference: Path) -> dict[str, Chapter]:
    """The reference chapters that have code exercises, by name."""
    chapters = {}
    for path in tags.chapter_notebooks(reference):
        nb = tags.without_wrong_answers(tags.read_notebook(path))
        exercises = tags.find_exercises(nb)
        if exercises:
            chapters[path.stem] = Chapter(path.stem, path, nb, exercises, protected_names(nb))
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
                findings = suspicious_lines(source, chapter.protected)
                if findings:
                    plan.flagged[exercise.tag] = describe_suspicious(findings)
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
    cell_timeout: float  # every cell (the grader interrupts the kernel; nbval's timeout is far beyond)
    answer_timeout: float  # answer and check cells (the grader interrupts the kernel)
    watchdog_grace: float
    out: Path
    work: Path
    env: dict
    limits: sandbox.Limits = field(default_factory=sandbox.Limits)


# The slot of the grading thread (0 .. --jobs - 1): a run started by root gets the user id of its slot.
_SLOT = threading.local()


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


def _kernel_pid(events: list[dict]) -> int | None:
    pids = [e["pid"] for e in events if e.get("event") == "kernel"]
    return pids[-1] if pids else None


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs. A kernel that exited stays a zombie until the pytest run
    that started it reaps it: that counts as gone."""
    try:
        import psutil  # a dependency of ipykernel
    except ImportError:  # pragma: no cover
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


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


@dataclass
class RunFiles:
    """What one nbval run writes besides its notebook: the kernel's events and nbval's verdicts."""

    kernel_events: Path
    verdicts: Path
    kernel_host_pid: int | None = None  # the kernel's pid outside the sandbox's PID namespace, once known


# Runs in progress, so that an interrupted grader (Ctrl-C, SIGTERM) can stop them: each runs in a
# session of its own (so that it can be stopped without stopping the grader) and would outlive it.
_RUNNING: dict[subprocess.Popen, RunFiles] = {}
_STOPPING = threading.Event()


def stop_all_runs() -> None:
    _STOPPING.set()
    for process, files in list(_RUNNING.items()):
        pid = files.kernel_host_pid  # never the pid the kernel sees inside its namespace
        _stop(process, {pid} if pid else set())


def run_nbval(
    plan: Plan, run_dir: Path, name: str, options: Options, log, junit_name: str | None = None
) -> dict[int, dict]:
    """Run the plan's notebook under nbval; {code cell number: result}.

    A result is ``{"cell", "passed", "message", "kind"}``; kind is "" or "stopped" (the kernel died
    in this cell, or the grader stopped the run in it) or "dead" (not run: the kernel was gone)."""
    for attempt in range(KERNEL_START_ATTEMPTS):
        outcome = _run_once(plan, run_dir, name, options, log, junit_name)
        first = outcome.get(0, {})
        if not first.get("message", "").startswith(KERNEL_START_FAILED) or _STOPPING.is_set():
            break
        log.write(f"=== the kernel did not start; trying again ({attempt + 2} of {KERNEL_START_ATTEMPTS})\n")
        log.flush()
        time.sleep(1 + attempt)
    return outcome


def marked_notebook(nb, token: str):
    """A copy of ``nb`` whose code cells end with their number (see KERNEL_STARTUP)."""
    marked = copy.deepcopy(nb)
    number = 0
    for cell in marked.cells:
        if cell.cell_type == "code":
            separator = "\n" if cell.source and not cell.source.endswith("\n") else ""
            cell.source = f"{cell.source}{separator}{cell_marker(number, token)}"
            number += 1
    return marked


def _run_once(plan: Plan, run_dir: Path, name: str, options: Options, log, junit_name: str | None) -> dict[int, dict]:
    if _STOPPING.is_set():
        return {}
    run_dir.mkdir(parents=True, exist_ok=True)
    notebook = run_dir / f"{name}.ipynb"
    token = secrets.token_hex(8)
    nbformat.write(marked_notebook(plan.nb, token), str(notebook))
    files = RunFiles(run_dir / "kernel-events.jsonl", run_dir / "nbval-verdicts.jsonl")
    run_junit = run_dir / "junit.xml"  # the run writes only into its own folder; copied to --out after
    for path in (files.kernel_events, files.verdicts, run_junit):
        path.unlink(missing_ok=True)
    (run_dir / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")  # ignore any outer config
    # The run's own copy of the kernels' IPython profile: inside the sandbox only this folder is visible.
    profile = run_dir / ".ipython"
    shutil.rmtree(profile, ignore_errors=True)
    shutil.copytree(options.env["IPYTHONDIR"], profile)
    junit = options.out / "junit" / f"{junit_name or name}.xml"
    backstop = options.cell_timeout + options.watchdog_grace + NBVAL_BACKSTOP
    command = [
        sys.executable, "-m", "pytest", notebook.name,
        "-c", "pytest.ini", "--rootdir", ".", "-p", "no:cacheprovider",
        "-p", "scripts.grade_plugin", "--grade-results", str(files.verdicts),
        "--nbval-kernel-startup-timeout=180",  # a busy machine can take a minute to start a kernel
        "--nbval-lax", "--nbval-current-env", f"--nbval-cell-timeout={backstop:g}",
        f"--junitxml={run_junit}", "--color=no", "-q",
    ]  # fmt: skip
    env = dict(options.env, **{EVENTS_VARIABLE: str(files.kernel_events), TOKEN_VARIABLE: token})
    env["IPYTHONDIR"] = str(profile)
    slot = getattr(_SLOT, "value", 0)
    process = subprocess.Popen(
        sandbox.sandboxed(command, run_dir, options.limits, slot),
        cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    _RUNNING[process] = files
    try:
        watch = _watch(process, files, plan, options)
    finally:
        _RUNNING.pop(process, None)
    outcome = _outcome(_read_events(files.kernel_events), _read_events(files.verdicts), watch, len(plan.code_cells))
    # pytest exits with 0 or 1 when it ran every cell. Stopped by the grader it writes no report, or one
    # that lacks the cell that stopped it: the grader's own record says more.
    if process.returncode in (0, 1) and run_junit.is_file():
        with atomic_write(junit, "wb") as stream:
            stream.write(run_junit.read_bytes())
    else:
        write_junit(junit, notebook.name, outcome)
    return outcome


def write_junit(path: Path, notebook_name: str, outcome: dict[int, dict]) -> None:
    """A JUnit XML report of a run that pytest could not report in full: one test case per cell that ran.

    Cells are named as nbval names them ("Cell 4"), so both kinds of report read the same."""
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
    with atomic_write(path, "wb") as stream:
        ElementTree.ElementTree(suites).write(stream, encoding="utf-8", xml_declaration=True)


@dataclass
class Watch:
    """What the grader did to a run, and what it saw."""

    interrupted: dict[int, float] = field(default_factory=dict)  # cell -> the limit it ran past
    stuck: tuple[int, str] | None = None  # the cell the run was stopped in, and why
    kernel_pid: int | None = None  # the kernel's pid on the host (outside the sandbox's PID namespace)
    gone_between_cells: bool = False  # the kernel disappeared while no cell was running


def _watch(process: subprocess.Popen, files: RunFiles, plan: Plan, options: Options) -> Watch:
    """Wait for a run, enforcing the timeouts and stopping it when its kernel is gone."""
    answer_limit = min(options.answer_timeout, options.cell_timeout)
    watch = Watch()
    gone_since = None
    namespaced = sandbox.kind() == "bwrap"  # the kernel reports its pid inside its own PID namespace
    while process.poll() is None:
        time.sleep(0.5)
        events = _read_events(files.kernel_events)
        inner = _kernel_pid(events)
        if inner is None:
            continue  # the kernel is still starting (nbval's startup timeout covers it)
        if watch.kernel_pid is None:
            watch.kernel_pid = sandbox.host_pid(process.pid, inner) if namespaced else inner
            files.kernel_host_pid = watch.kernel_pid
        pid = watch.kernel_pid
        if pid is None:
            continue  # not found yet among the sandbox's processes
        alive = _alive(pid)
        if not alive:
            events = _read_events(files.kernel_events)  # the cell may have finished just before the kernel went
        starts = [e for e in events if e.get("event") == "start"]
        results = [e for e in events if e.get("event") == "result"]
        finished = {e["cell"] for e in results}
        running = starts[-1] if starts and starts[-1]["cell"] not in finished else None
        now = time.time()
        if running is None:
            # Between cells (or in nbval's teardown, which stops the kernel and exits at once).
            if alive:
                gone_since = None
                last = max((e["time"] for e in starts), default=now)
                if len(finished) < len(plan.code_cells) and now - last > options.cell_timeout + options.watchdog_grace:
                    _stop(process, {pid})  # nbval sent no cell for longer than any cell may take
                    watch.stuck = (max(finished, default=-1) + 1, "not run: the kernel never started this cell")
                continue
            gone_since = gone_since or now
            if now - gone_since > options.watchdog_grace:
                _stop(process, {pid})
                watch.gone_between_cells = True
            continue
        cell, elapsed = running["cell"], now - running["time"]
        limit = answer_limit if cell in plan.answer_cells else options.cell_timeout
        if not alive:
            _stop(process, {pid})
            watch.stuck = (cell, "the kernel died in this cell (os._exit, a crash or too little memory?)")
        elif elapsed > limit + options.watchdog_grace:
            _stop(process, {pid})
            watch.stuck = (
                cell,
                f"no result after {limit:g} s, even after an interrupt (an endless loop that ignores it); "
                "the grader stopped the run",
            )
        elif elapsed > limit and cell not in watch.interrupted:
            watch.interrupted[cell] = limit  # a KeyboardInterrupt in the cell, as at nbval's own timeout
            try:
                os.kill(pid, signal.SIGINT)
            except (ProcessLookupError, PermissionError):
                pass
    return watch


def error_line(ename: str, evalue: str) -> str:
    """``"ValueError: oops"``: an exception's name and the first line of its value."""
    text = ANSI.sub("", evalue or "").strip()
    line = text.splitlines()[0].strip() if text else ""
    # IPython names a cell after a temporary file, e.g. "(3591466789.py, line 2)"; keep the line.
    line = re.sub(r"\((?:[^()]*[\\/])?\d+\.py, line (\d+)\)", r"(line \1)", line)
    return f"{ename}: {line}" if line else ename


def _outcome(kernel_events: list[dict], verdicts: list[dict], watch: Watch, cells: int) -> dict[int, dict]:
    """{code cell number: result} from nbval's verdicts, the kernel's record and the watchdog, for a
    notebook of ``cells`` code cells."""
    results = {e["cell"]: e for e in kernel_events if e.get("event") == "result"}
    started = {e["cell"] for e in kernel_events if e.get("event") == "start"}
    pid = _kernel_pid(kernel_events)
    # The host's pid of the kernel (the events hold the one it sees in its sandbox); unknown: it is gone.
    kernel_gone = pid is not None and (watch.kernel_pid is None or not _alive(watch.kernel_pid))

    def failure(cell: int) -> tuple[str, str]:
        result = results.get(cell)
        if result is None:
            if pid is None:
                return KERNEL_START_FAILED + "no cell ran (see the log)", "stopped"
            if cell in started:
                return "no result: the kernel stopped in this cell (see the log)", "stopped"
            if kernel_gone:
                return "not run: the kernel had stopped in an earlier cell", "dead"
            return "not run by nbval (see the log)", ""
        if result["passed"]:
            return "nbval failed the cell although it ran without an error (see the log)", ""
        if result.get("ename") == "KeyboardInterrupt" and cell in watch.interrupted:
            return f"timed out after {watch.interrupted[cell]:g} s (endless loop?)", ""
        return error_line(result.get("ename", "Error"), result.get("evalue", "")), ""

    def entry(cell: int, passed: bool, message: str = "", kind: str = "") -> dict:
        return {"cell": cell, "passed": passed, "message": message, "kind": kind}

    outcome: dict[int, dict] = {}
    for verdict in verdicts:
        cell = verdict["cell"]
        if verdict["outcome"] == "passed":
            outcome[cell] = entry(cell, True)
        elif verdict["outcome"] == "skipped":
            outcome[cell] = entry(cell, False, "skipped")
        else:
            outcome[cell] = entry(cell, False, *failure(cell))
    for cell, result in results.items():  # finished in the kernel; the run stopped before nbval said so
        if cell not in outcome:
            outcome[cell] = entry(cell, True) if result["passed"] else entry(cell, False, *failure(cell))
    if watch.stuck is not None:
        cell, message = watch.stuck
        outcome[cell] = entry(cell, False, message, "stopped")
    if watch.gone_between_cells and max(outcome, default=-1) + 1 < cells:
        cell = max(outcome, default=-1) + 1
        outcome[cell] = entry(cell, False, "not run: the kernel had stopped in an earlier cell", "dead")
    return outcome


def runner_environment(work: Path, parallel: bool = False) -> dict:
    """Environment of the nbval runs: quick mode, the plugin importable, a clean IPython profile
    with the grader's startup file."""
    env = dict(os.environ)
    env["RESNET_MODE"] = "quick"  # grading always runs the chapters at quick scale
    # The data folder by name: inside the sandbox HOME is a private, empty folder (the data is read-only
    # there; utils.data reads a read-only copy without a lock). Nothing is written into the runs' code.
    from utils import config  # here: the grader's own imports stay light

    env[config.DATA_VARIABLE] = str(Path(env.get(config.DATA_VARIABLE) or config.DEFAULT_DATA_DIR).expanduser().resolve())
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # the course is read-only to the runs
    # `-p scripts.grade_plugin`: the repository on the path (the runs start in a temporary folder).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("PYTEST_ADDOPTS", None)
    for variable in (EVENTS_VARIABLE, TOKEN_VARIABLE):
        env.pop(variable, None)
    if parallel:
        env.setdefault("OMP_NUM_THREADS", "1")  # parallel kernels must not fight over the cores
    # A fresh IPython profile for the kernels: no personal startup files, no history (nothing written
    # to ~/.ipython, no database shared by parallel kernels), tracebacks without colour codes; and the
    # grader's own startup file, which records each cell's outcome.
    profile = work / ".ipython" / "profile_default"
    (profile / "startup").mkdir(parents=True, exist_ok=True)
    config = 'c.InteractiveShell.colors = "nocolor"\nc.HistoryManager.enabled = False\n'
    (profile / "ipython_kernel_config.py").write_text(config, encoding="utf-8")
    (profile / "startup" / "00-grade-py.py").write_text(KERNEL_STARTUP, encoding="utf-8")
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
    flagged: dict[str, str] = {}  # from the first pass, which has every answer
    merged: dict[int, dict] = {}
    start = 0
    log_path = options.out / "logs" / f"{name}.log"
    with open(log_path, "w", encoding="utf-8") as log:
        for attempt in range(len(solutions) + 1):
            if attempt and _STOPPING.is_set():
                break
            plan = assemble(chapter, submission.nb, quarantined)
            flagged = flagged or plan.flagged
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
        note = flagged.get(exercise.tag, "")
        rows.append(Row(student, chapter.name, exercise.label, exercise.title, passed, message, note))

    graded = {i for e in chapter.exercises for i in e.solutions + e.checks}
    notes = []
    broken = [
        (plan.code_cells[n], r["message"])
        for n, r in sorted(merged.items())
        if not r["passed"] and plan.code_cells[n] not in graded
    ]
    for exercise in chapter.exercises:  # answers that could fake a pass: with their lines, for a human
        if exercise.tag in flagged:
            notes.append(f"{student}, {chapter.name}, exercise {exercise.label}: {flagged[exercise.tag]}")
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

    with atomic_write(out / "grades.csv", "w") as stream:
        writer = csv.writer(stream)
        writer.writerow(["student", "chapter", "exercise", "title", "result", "message", "note"])
        for r in rows:
            result = "pass" if r.passed else "fail"
            writer.writerow([r.student, r.chapter, r.exercise, r.title, result, r.message, r.note])
    with atomic_write(out / "totals.csv", "w") as stream:
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
    with atomic_write(out / "grades.md", "w") as stream:
        stream.write("\n".join(lines) + "\n")
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
    defaults = sandbox.Limits()
    parser.add_argument(
        "--memory-limit", type=float, default=defaults.memory_gb,
        help="GB of address space per process of a graded run (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--process-limit", type=int, default=defaults.processes,
        help="processes and threads of a graded run (default: %(default)s)",
    )  # fmt: skip
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

    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: expected a whole number of notebooks graded at once, 1 or more")
    try:
        limits = sandbox.Limits(memory_gb=args.memory_limit, processes=args.process_limit)
    except ValueError as error:
        parser.error(str(error))
    protection = sandbox.describe(limits)
    print(f"sandbox: {protection}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="grade-"))
    env = runner_environment(work, parallel=args.jobs > 1)
    options = Options(
        args.cell_timeout, args.answer_timeout, args.watchdog_grace, args.out.resolve(), work, env, limits
    )
    slots = queue.Queue()
    for slot in range(args.jobs):
        slots.put(slot)

    tasks = [(s, chapters[c], found.get((s, c))) for s in students for c in selected]

    def run(task):
        student, chapter, submission = task
        _SLOT.value = slots.get()
        try:
            rows, notes, seconds = grade_submission(student, chapter, submission, options)
        finally:
            slots.put(_SLOT.value)
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
        "reference check cell passes with the student's answer cell in place of the solution. "
        f"Sandbox: {protection}."
    )
    totals = write_reports(args.out, rows, problems, notes, header)
    for student, passed, total, percent in totals:
        print(f"{student}: {passed}/{total} ({percent}%)")
    print(f"report: {args.out / 'grades.md'}, {args.out / 'grades.csv'}, {args.out / 'totals.csv'}")
    return 0 if students and selected else 1


if __name__ == "__main__":
    sys.exit(main())
