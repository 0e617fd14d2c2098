"""The instructor workflow: student copies (scripts/make_exercises.py) and grading (scripts/grade.py).

Most behaviour is tested on a toy book (tests/fixtures/grading/book: two pure-Python chapters that
follow the exercise contract, so a graded run takes seconds) and on submissions built from its
student copies. The real chapters (book/NN_*.ipynb with exercises) are tested where only they can
show it: their student copies fail every check, and the plausible wrong answers that each chapter
keeps beside its exercises (wrong-answer cells) fail theirs (see "Real chapters" below for how that
is kept cheap).
"""

from __future__ import annotations

import ast
import copy
import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import symtable
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import nbformat
import pytest

from scripts import grade, make_exercises, notebook_tags

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "grading"
TOY_BOOK = FIXTURES / "book"
SAMPLE_CLASS = FIXTURES / "submissions"

# A hung grader (a watchdog that failed) must fail the test, not hang CI.
pytestmark = pytest.mark.timeout(900)

TOY_EXERCISES = {"01_toy": ["1.1", "1.2", "1.3"], "02_toy": ["2.1"]}
# Correct answers to the toy exercises, written differently from the reference solutions.
TOY_RIGHT = {
    "ex-1-1": "def residual_unit(x, f):\n    out = x + f(x)\n    return relu(out)",
    "ex-1-2": (
        "def conv_output_size(size, kernel, stride, padding):\n"
        "    return -(-(size + 2 * padding - kernel + 1) // stride)"
    ),
    "ex-1-3": (
        "def lr_at(epoch, base, milestones, gamma):\n"
        "    return base * gamma ** len([m for m in milestones if m <= epoch])"
    ),
    "ex-2-1": "def conv_weights(in_channels, out_channels):\n    return KERNEL * KERNEL * in_channels * out_channels",
}


def wrong_answers_of(nb) -> dict[str, list[tuple[str, str]]]:
    """{exercise tag: [(what is wrong, source)]}, from the chapter's wrong-answer cells."""
    return {e.tag: notebook_tags.wrong_answers(nb, e) for e in notebook_tags.find_exercises(nb) if e.wrong_answers}


# Plausible wrong answers, kept beside the toy exercises like the real chapters' (one per exercise):
# ReLU before the addition, floor division by the stride, stepping one epoch late, no kernel size.
TOY_WRONG = {
    tag: answers[0][1]
    for path in notebook_tags.chapter_notebooks(TOY_BOOK)
    for tag, answers in wrong_answers_of(notebook_tags.read_notebook(path)).items()
}


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def folder_state(folder: Path) -> dict[str, tuple]:
    """Every path under a folder with its content hash and modification time."""
    state = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_file():
            state[key] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        else:
            state[key] = ("dir",)
    return state


def run_grader(submissions: Path, out: Path, *extra: str, reference: Path = TOY_BOOK):
    """Grade in-process (the nbval runs are subprocesses); returns (exit code, {(student, chapter, exercise): row})."""
    code = grade.main([
        "--submissions", str(submissions), "--out", str(out), "--reference", str(reference),
        "--watchdog-grace", "3", *extra,
    ])  # fmt: skip
    with open(out / "grades.csv", encoding="utf-8") as stream:
        rows = {(r["student"], r["chapter"], r["exercise"]): r for r in csv.DictReader(stream)}
    return code, rows


@pytest.fixture(scope="module")
def toy_copies(tmp_path_factory) -> Path:
    """The student copies of the toy book, written by the real script."""
    out = tmp_path_factory.mktemp("toy-exercises")
    assert make_exercises.main(["--book", str(TOY_BOOK), "--out", str(out)]) == 0
    return out


def answered(copies: Path, chapter: str, answers: dict[str, str], *, checks: dict[str, str | None] | None = None,
             drop_solutions: tuple[str, ...] = (), strip_tags: tuple[str, ...] = ()):
    """A submission: a student copy with answers written in (task comments kept), checks edited or
    deleted (None), solution cells deleted or stripped of their tags."""
    nb = nbformat.read(str(copies / f"{chapter}.ipynb"), as_version=4)
    checks = checks or {}
    kept = []
    for cell in nb.cells:
        tags = notebook_tags.cell_tags(cell)
        tag = notebook_tags.exercise_tag(cell)
        if notebook_tags.is_solution(cell) and tag in answers:
            cell.source = "\n".join(notebook_tags.task_lines(cell.source) + [answers[tag]])
        if notebook_tags.is_check(cell) and tag in checks:
            if checks[tag] is None:
                continue
            cell.source = checks[tag]
        if notebook_tags.is_solution(cell) and tag in drop_solutions:
            continue
        if notebook_tags.is_solution(cell) and tag in strip_tags:
            cell.metadata["tags"] = [t for t in tags if t not in ("solution", tag)]
        kept.append(cell)
    nb.cells = kept
    return nb


def write(nb, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


# ------------------------------------------------------------------------------------------------
# the tag contract and the student copies
# ------------------------------------------------------------------------------------------------


def test_stub_keeps_the_task_and_raises_naming_the_exercise():
    solution = (
        "\n# Define `f(x)`: twice x.\n#   (hint: multiply)\n\n"
        "def f(x):\n    # a comment inside the code\n    return 2 * x\n"
    )
    stub = notebook_tags.stub_source(solution, "ex-4-2")
    assert stub.splitlines() == [
        "# Define `f(x)`: twice x.",
        "#   (hint: multiply)",
        'raise NotImplementedError("Exercise 4.2 (ex-4-2): replace this line with your answer")',
    ]
    with pytest.raises(NotImplementedError, match=r"Exercise 4\.2"):
        exec(compile(stub, "<stub>", "exec"), {})


def test_a_solution_without_task_comments_is_refused():
    with pytest.raises(notebook_tags.ContractError, match="comment lines"):
        notebook_tags.stub_source("def f(x):\n    return 2 * x", "ex-1-1")


SOLVED = [("# task\nx = 1", ["solution", "ex-1-1"]), ("assert x == 1", ["check", "ex-1-1"])]
WRONG_TAGS = ["wrong-answer", "ex-1-1", "remove-cell"]


def test_wrong_answers_are_found_per_exercise():
    nb = nbformat.v4.new_notebook()
    for source, tags in [*SOLVED, ("# Wrong answer: off by one\nx = 2", WRONG_TAGS), ("x = 3", [])]:
        cell = (nbformat.v4.new_raw_cell if "wrong-answer" in tags else nbformat.v4.new_code_cell)(source)
        cell.metadata["tags"] = tags
        nb.cells.append(cell)
    (exercise,) = notebook_tags.find_exercises(nb)
    assert exercise.wrong_answers == [2]
    assert notebook_tags.wrong_answers(nb, exercise) == [("off by one", "# Wrong answer: off by one\nx = 2")]
    stripped = notebook_tags.without_wrong_answers(nb)
    assert [c.source for c in stripped.cells] == ["# task\nx = 1", "assert x == 1", "x = 3"]
    assert len(nb.cells) == 4, "the notebook itself is left untouched"


@pytest.mark.parametrize(
    "cells, problem",
    [
        ([("x = 1", ["solution"])], "no ex-N-k tag"),
        ([("# task\nx = 1", ["solution", "ex-1-1"])], "no check cell"),
        ([("assert x", ["check", "ex-1-1"])], "no solution cell"),
        ([("assert x", ["check", "ex-1-1"]), ("# task\nx = 1", ["solution", "ex-1-1"])], "before its solution"),
        ([("# task\nx = 1", ["solution", "check", "ex-1-1"])], "both"),
        ([("# task\nx = 1", ["solution", "ex-1-1", "ex-1-2"])], "several exercise tags"),
        ([*SOLVED, ("# Wrong answer: off by one\nx = 2", ["wrong-answer", "ex-1-1"])], "lacks the tags"),
        ([*SOLVED, ("x = 2", WRONG_TAGS)], "must start with a line '# Wrong answer: "),
        ([SOLVED[0], ("# Wrong answer: off by one\nx = 2", WRONG_TAGS), SOLVED[1]], "after its check cell"),
        ([*SOLVED, ("# Wrong answer: off by one\nx = 2", [*WRONG_TAGS[:1], "ex-1-2", *WRONG_TAGS[2:]])],
         "no solution and check"),
        ([*SOLVED, ("# Wrong answer: off by one\nx = 2", ["solution", *WRONG_TAGS])], "neither solution nor check"),
        ([*SOLVED, ("code: # Wrong answer: off by one\nx = 2", WRONG_TAGS)], "must be a raw cell"),
    ],
)
def test_a_broken_tag_contract_is_refused(cells, problem):
    nb = nbformat.v4.new_notebook()
    for source, tags in cells:
        # Wrong answers are raw cells; "code: " marks one written, wrongly, as a code cell.
        raw = "wrong-answer" in tags and "solution" not in tags and not source.startswith("code: ")
        source = source.removeprefix("code: ")
        cell = (nbformat.v4.new_raw_cell if raw else nbformat.v4.new_code_cell)(source)
        cell.metadata["tags"] = tags
        nb.cells.append(cell)
    with pytest.raises(notebook_tags.ContractError, match=problem):
        notebook_tags.find_exercises(nb)


@pytest.mark.parametrize("chapter", sorted(TOY_EXERCISES))
def test_student_copy_replaces_only_the_solutions(toy_copies, chapter):
    reference = nbformat.read(str(TOY_BOOK / f"{chapter}.ipynb"), as_version=4)
    student = nbformat.read(str(toy_copies / f"{chapter}.ipynb"), as_version=4)
    nbformat.validate(student)
    assert student.metadata[notebook_tags.METADATA_KEY]["chapter"] == chapter
    assert student.cells[0].id == make_exercises.NOTE_CELL_ID
    copied = {cell.id: cell for cell in student.cells[1:]}
    kept = [cell for cell in reference.cells if not notebook_tags.is_wrong_answer(cell)]
    assert len(kept) < len(reference.cells), "the toy chapters keep wrong answers beside their exercises"
    assert list(copied) == [cell.id for cell in kept], "cells (and their ids) must stay, in order, wrong answers left out"
    exercises = [e.label for e in notebook_tags.find_exercises(student)]
    assert exercises == TOY_EXERCISES[chapter]
    for wrong in (cell for cell in reference.cells if notebook_tags.is_wrong_answer(cell)):
        code = [line for line in wrong.source.splitlines()[1:] if line.strip()]
        assert not any(line in cell.source for cell in student.cells for line in code), "a wrong answer leaked"
    for original in kept:
        cell = copied[original.id]
        assert cell.metadata.get("tags") == original.metadata.get("tags"), f"tags of {original.id} changed"
        if notebook_tags.is_solution(original):
            task = notebook_tags.task_lines(original.source)
            assert task and cell.source.splitlines()[:-1] == task, "the task comments must stay"
            assert cell.source.splitlines()[-1].startswith("raise NotImplementedError(")
            assert notebook_tags.exercise_label(notebook_tags.exercise_tag(cell)) in cell.source.splitlines()[-1]
            code_lines = [line for line in original.source.splitlines() if line.strip() and not line.startswith("#")]
            assert not any(line in cell.source for line in code_lines), "no line of the solution's code may leak"
        else:
            assert cell.source == original.source, f"cell {original.id} must be copied unchanged"
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_student_copies_leave_out_the_answer_keys(tmp_path):
    """Every book chapter with a discussion exercise has answer keys; its student copy has none."""
    chapters = notebook_tags.chapter_notebooks(ROOT / "book")
    with_keys = 0
    for path in chapters:
        nb = notebook_tags.read_notebook(path)
        keys = [cell for cell in nb.cells if notebook_tags.is_answer_key(cell)]
        copy = make_exercises.student_copy(nb, path.stem)
        assert not any(notebook_tags.is_answer_key(cell) for cell in copy.cells), path.name
        for key in keys:
            body = [line for line in key.source.splitlines() if line.strip() and not line.startswith((":", "```"))]
            assert body, f"{path.name}: an empty answer key"
            # A line long enough to be the key's own sentence (a wrapped line's tail, "stage.", is not).
            distinctive = [line.strip() for line in body if len(line.strip()) >= 40]
            leaked = [line for line in distinctive if any(line in cell.source for cell in copy.cells)]
            assert not leaked, f"{path.name}: the answer key leaked into the student copy: {leaked[:2]}"
        with_keys += bool(keys)
    assert with_keys >= 1, "no chapter has an answer key: the test would prove nothing"


def test_student_copy_clears_outputs(tmp_path):
    nb = nbformat.read(str(TOY_BOOK / "01_toy.ipynb"), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.execution_count = 3
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="the answer is 42\n")]
    write(nb, tmp_path / "book" / "01_toy.ipynb")
    assert make_exercises.main(["--book", str(tmp_path / "book"), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "01_toy.ipynb").read_text(encoding="utf-8")
    assert "the answer is 42" not in text
    assert all(c.get("execution_count") is None for c in json.loads(text)["cells"] if c["cell_type"] == "code")


def test_nbval_never_runs_the_wrong_answer_cells(tmp_path):
    """A chapter with wrong-answer cells, run under nbval as `make test` runs the book: they are raw
    cells, so nbval does not collect them, and every code cell passes."""
    shutil.copy(TOY_BOOK / "01_toy.ipynb", tmp_path)
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if key != "PYTEST_ADDOPTS"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "01_toy.ipynb", "-c", "pytest.ini", "--rootdir", ".", "-p", "no:cacheprovider",
         "--nbval-lax", "--nbval-current-env", "--junitxml=junit.xml", "-q"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    nb = notebook_tags.read_notebook(TOY_BOOK / "01_toy.ipynb")
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    wrong = [cell for cell in nb.cells if notebook_tags.is_wrong_answer(cell)]
    assert wrong and all(cell.cell_type == "raw" for cell in wrong)
    cases = list(ElementTree.parse(tmp_path / "junit.xml").getroot().iter("testcase"))
    assert len(cases) == len(code), "nbval should collect the code cells only"
    assert not [case.get("name") for case in cases if case.find("skipped") is not None]
    assert not [case.get("name") for case in cases if case.find("failure") is not None or case.find("error") is not None]


def test_make_exercises_fails_loudly_on_a_broken_chapter(tmp_path, capsys):
    nb = nbformat.read(str(TOY_BOOK / "01_toy.ipynb"), as_version=4)
    nb.cells = [c for c in nb.cells if c.id != "ex-1-2-check"]
    write(nb, tmp_path / "book" / "01_toy.ipynb")
    assert make_exercises.main(["--book", str(tmp_path / "book"), "--out", str(tmp_path / "out")]) == 1
    assert "ex-1-2 has a solution cell but no check cell" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# grading the toy book
# ------------------------------------------------------------------------------------------------


def test_sample_class_report(tmp_path):
    """ada: all right; ben: ReLU before the addition, 1.3 untouched, no 02_toy; cy: a syntax error, an
    endless loop, a right answer behind a check replaced by `pass`, and a truncated 02_toy file."""
    before = folder_state(SAMPLE_CLASS)
    # One timeout for every cell: nbval interrupts the endless loop itself.
    code, rows = run_grader(SAMPLE_CLASS, tmp_path / "grades", "--jobs", "2", "--cell-timeout", "3")
    assert code == 0
    assert folder_state(SAMPLE_CLASS) == before, "the grader wrote into the submissions folder"

    results = {key: row["result"] for key, row in rows.items()}
    expected = {("ada", c, e): "pass" for c, es in TOY_EXERCISES.items() for e in es}
    expected.update({
        ("ben", "01_toy", "1.1"): "fail", ("ben", "01_toy", "1.2"): "pass", ("ben", "01_toy", "1.3"): "fail",
        ("ben", "02_toy", "2.1"): "fail",
        ("cy", "01_toy", "1.1"): "fail", ("cy", "01_toy", "1.2"): "fail", ("cy", "01_toy", "1.3"): "pass",
        ("cy", "02_toy", "2.1"): "fail",
    })  # fmt: skip
    assert results == expected
    messages = {key: row["message"] for key, row in rows.items()}
    assert messages[("ben", "01_toy", "1.1")] == (
        "check: AssertionError: relu must come after the addition: relu(-2 + 1) is 0"
    )
    assert messages[("ben", "01_toy", "1.3")].startswith("answer cell: NotImplementedError: Exercise 1.3")
    assert messages[("ben", "02_toy", "2.1")] == "no notebook for 02_toy in the submissions"
    assert messages[("cy", "01_toy", "1.1")].startswith("answer cell: SyntaxError")
    assert messages[("cy", "01_toy", "1.2")] == "answer cell: timed out after 3 s (endless loop?)"
    assert messages[("cy", "02_toy", "2.1")].startswith("not a notebook: invalid JSON")
    assert all(not row["message"] for row in rows.values() if row["result"] == "pass")

    with open(tmp_path / "grades" / "totals.csv", encoding="utf-8") as stream:
        totals = {r["student"]: (int(r["passed"]), int(r["exercises"])) for r in csv.DictReader(stream)}
    assert totals == {"ada": (4, 4), "ben": (1, 4), "cy": (1, 4)}
    report = (tmp_path / "grades" / "grades.md").read_text(encoding="utf-8")
    assert "| ada | 4 | 4 | 100% |" in report and "| cy | 1 | 4 | 25% |" in report
    assert "| ben | 01_toy | 1.1 a residual unit | **fail** | check: AssertionError: relu must come after" in report

    junit = ElementTree.parse(tmp_path / "grades" / "junit" / "ben__01_toy.xml").getroot()
    cases = junit.iter("testcase")
    failed = [case.get("name") for case in cases if case.find("failure") is not None]
    assert failed == ["Cell 3", "Cell 6", "Cell 7"], "ben's JUnit XML: the 1.1 check, the 1.3 stub and its check"


# One synthetic class, graded once (two at a time), serves the tests below: each student shows one
# behaviour. Both layouts are mixed in one folder, as the grader allows.
BROKEN_ANSWERS = {  # each breaks exercise 1.2 in one way; 1.1 and 1.3 around it are right
    "exception": "def conv_output_size(size, kernel, stride, padding):\n    return size\nraise ValueError('oops')",
    "syntax": "def conv_output_size(size, kernel, stride, padding)\n    return size",
    "loop": "import time\nwhile True:\n    time.sleep(0.01)",
    # ignores the interrupt and keeps printing: nbval never returns, the grader's watchdog stops it
    "deaf_loop": (
        "import time\nwhile True:\n    try:\n        print('.', end='', flush=True)\n        time.sleep(0.01)\n"
        "    except BaseException:\n        pass"
    ),
    "kernel_killer": "import os\nos._exit(1)",
    "name_only": "conv_output_size = None",
}
CLASS_TIMEOUT = 3


@pytest.fixture(scope="module")
def toy_class(toy_copies, tmp_path_factory):
    root = tmp_path_factory.mktemp("toy-class")
    submissions = root / "submissions"
    for chapter in TOY_EXERCISES:
        (submissions / "blank").mkdir(parents=True, exist_ok=True)
        shutil.copy(toy_copies / f"{chapter}.ipynb", submissions / "blank")
        write(answered(toy_copies, chapter, TOY_RIGHT), submissions / "right" / f"{chapter}.ipynb")
        write(answered(toy_copies, chapter, TOY_WRONG), submissions / f"wrong__{chapter}.ipynb")  # flat layout

    # Tampering: the grader runs the reference's check cells whatever the submission did to them.
    all_checks = ("ex-1-1", "ex-1-2", "ex-1-3")
    deleted = answered(toy_copies, "01_toy", {}, checks=dict.fromkeys(all_checks))
    write(deleted, submissions / "tamper_deleted" / "01_toy.ipynb")
    passing = answered(toy_copies, "01_toy", TOY_WRONG, checks=dict.fromkeys(all_checks, "pass"))
    write(passing, submissions / "tamper_pass" / "01_toy.ipynb")
    weakened = answered(toy_copies, "01_toy", TOY_WRONG, checks={"ex-1-1": "assert residual_unit(1.0, abs) == 2.0"})
    write(weakened, submissions / "tamper_weakened" / "01_toy.ipynb")
    outside = answered(toy_copies, "01_toy", {})  # the right code in a cell of its own, answer cells untouched
    outside.cells.insert(3, nbformat.v4.new_code_cell(TOY_RIGHT["ex-1-1"]))
    write(outside, submissions / "tamper_outside" / "01_toy.ipynb")

    # Answers found without their tags (by cell id), or split over two tagged cells.
    write(answered(toy_copies, "01_toy", TOY_RIGHT, strip_tags=all_checks), submissions / "untagged" / "01_toy.ipynb")
    split = answered(toy_copies, "01_toy", {**TOY_RIGHT, "ex-1-1": "def helper(v):\n    return relu(v)"})
    index = next(
        i for i, c in enumerate(split.cells)
        if notebook_tags.is_solution(c) and notebook_tags.exercise_tag(c) == "ex-1-1"
    )
    second = nbformat.v4.new_code_cell("def residual_unit(x, f):\n    return helper(x + f(x))")
    second.metadata["tags"] = ["ex-1-1", "solution"]
    split.cells.insert(index + 1, second)
    write(split, submissions / "split" / "01_toy.ipynb")

    # An answer that empties every later cell (so that the checks "pass"): flagged for a human.
    sneaky = "get_ipython().input_transformers_cleanup.append(lambda lines: [])"
    write(answered(toy_copies, "01_toy", {"ex-1-1": sneaky}), submissions / "sneaky" / "01_toy.ipynb")

    # Broken submissions.
    for student, answer in BROKEN_ANSWERS.items():
        write(answered(toy_copies, "01_toy", {**TOY_RIGHT, "ex-1-2": answer}), submissions / student / "01_toy.ipynb")
    missing = answered(toy_copies, "01_toy", TOY_RIGHT, drop_solutions=("ex-1-2",))
    write(missing, submissions / "missing" / "01_toy.ipynb")
    good = nbformat.writes(answered(toy_copies, "01_toy", TOY_RIGHT))
    files = {
        "bad_json": good[: len(good) // 2].encode(),
        "nbformat3": json.dumps(json.loads(good) | {"nbformat": 3, "nbformat_minor": 0}).encode(),
        "not_a_dict": b"[1, 2, 3]",
        "binary": bytes(range(256)),
    }
    for student, content in files.items():
        (submissions / student).mkdir()
        (submissions / student / "01_toy.ipynb").write_bytes(content)

    # File names: a renamed copy carries its chapter in its metadata; a browser's "(1)" keeps the name.
    write(answered(toy_copies, "01_toy", TOY_RIGHT), submissions / "bo" / "homework.ipynb")
    write(answered(toy_copies, "02_toy", TOY_WRONG), submissions / "bo" / "Copy of 02_toy (1).ipynb")
    write(answered(toy_copies, "01_toy", TOY_RIGHT), submissions / "01_toy.ipynb")  # whose?
    unknown = answered(toy_copies, "01_toy", TOY_RIGHT)
    del unknown.metadata[notebook_tags.METADATA_KEY]
    write(unknown, submissions / "cleo" / "notes.ipynb")  # which chapter?
    (submissions / "cleo" / "README.txt").write_text("not a notebook, not graded", encoding="utf-8")
    write(answered(toy_copies, "02_toy", TOY_RIGHT), submissions / "cleo" / "02_toy.ipynb")
    write(answered(toy_copies, "02_toy", TOY_WRONG), submissions / "cleo" / "02_toy-old.ipynb")
    elsewhere = answered(toy_copies, "01_toy", TOY_RIGHT)  # a copy of a chapter this reference lacks
    elsewhere.metadata[notebook_tags.METADATA_KEY]["chapter"] = "01_another_course"
    write(elsewhere, submissions / "dana" / "01_toy.ipynb")

    before = folder_state(submissions)
    # Answer cells get a shorter limit than chapter cells: the grader interrupts them itself.
    code, rows = run_grader(
        submissions, root / "grades", "--jobs", "2", "--cell-timeout", "60", "--answer-timeout", str(CLASS_TIMEOUT)
    )
    return {
        "code": code, "rows": rows, "out": root / "grades",
        "report": (root / "grades" / "grades.md").read_text(encoding="utf-8"),
        "untouched": folder_state(submissions) == before,
    }  # fmt: skip


def results_of(toy_class, student: str, chapter: str = "01_toy") -> dict[str, str]:
    return {e: toy_class["rows"][(student, chapter, e)]["result"] for e in TOY_EXERCISES[chapter]}


def message_of(toy_class, student: str, exercise: str = "1.2", chapter: str = "01_toy") -> str:
    return toy_class["rows"][(student, chapter, exercise)]["message"]


def test_grading_a_class_writes_a_report_and_nothing_else(toy_class):
    assert toy_class["code"] == 0
    assert toy_class["untouched"], "the grader wrote into the submissions folder"
    assert {p.name for p in toy_class["out"].iterdir()} == {"grades.csv", "totals.csv", "grades.md", "junit", "logs"}
    with open(toy_class["out"] / "totals.csv", encoding="utf-8") as stream:
        totals = {r["student"]: (int(r["passed"]), int(r["exercises"])) for r in csv.DictReader(stream)}
    assert totals["right"] == (4, 4) and totals["blank"] == (0, 4) and totals["missing"] == (2, 4)
    junit = {p.name for p in (toy_class["out"] / "junit").iterdir()}
    # One report per pass, also for the passes that the grader had to stop (deaf_loop's first).
    assert {"kernel_killer__01_toy.xml", "kernel_killer__01_toy.pass2.xml", "right__02_toy.xml",
            "deaf_loop__01_toy.xml", "deaf_loop__01_toy.pass2.xml"} <= junit  # fmt: skip
    # Exactly the two students who stopped the kernel were graded a second time, and nobody a third:
    # the interrupted endless loop ("loop") and every other failure cost one pass only.
    assert sorted(name for name in junit if ".pass" in name) == [
        "deaf_loop__01_toy.pass2.xml", "kernel_killer__01_toy.pass2.xml"
    ]  # fmt: skip
    logs = {path.stem for path in (toy_class["out"] / "logs").glob("*.log")}
    assert {name.removesuffix(".xml") for name in junit if ".pass" not in name} == logs, "one first pass per notebook run"
    # Whether nbval reported the dead kernel itself or the grader had to stop it, the first pass has a
    # report, and it names the answer cell (code cell 4) that stopped the kernel.
    first_pass = ElementTree.parse(toy_class["out"] / "junit" / "kernel_killer__01_toy.xml").getroot()
    assert "Cell 4" in [case.get("name") for case in first_pass.iter("testcase") if case.find("failure") is not None]


def test_untouched_student_copies_fail_every_check(toy_class):
    for chapter, exercises in TOY_EXERCISES.items():
        assert results_of(toy_class, "blank", chapter) == dict.fromkeys(exercises, "fail")
        for exercise in exercises:
            message = message_of(toy_class, "blank", exercise, chapter)
            assert message.startswith(f"answer cell: NotImplementedError: Exercise {exercise}"), message


def test_wrong_answers_fail_and_right_ones_pass(toy_class):
    for chapter, exercises in TOY_EXERCISES.items():
        assert results_of(toy_class, "right", chapter) == dict.fromkeys(exercises, "pass")
        assert results_of(toy_class, "wrong", chapter) == dict.fromkeys(exercises, "fail")
        for exercise in exercises:
            assert message_of(toy_class, "wrong", exercise, chapter).startswith("check: AssertionError:")
            assert message_of(toy_class, "right", exercise, chapter) == ""


@pytest.mark.parametrize("student", ["tamper_deleted", "tamper_pass", "tamper_weakened", "tamper_outside"])
def test_tampering_with_checks_does_not_help(toy_class, student):
    assert results_of(toy_class, student) == dict.fromkeys(TOY_EXERCISES["01_toy"], "fail")


def test_answers_that_reach_into_the_kernel_are_flagged(toy_class):
    note = toy_class["rows"][("sneaky", "01_toy", "1.1")]["note"]
    expected = (
        "answer uses get_ipython, input_transformers (line 3: "
        "`get_ipython().input_transformers_cleanup.append(lambda lines: [])`): read it before trusting the result"
    )
    assert note == expected
    assert f"({expected})" in toy_class["report"], "the note stands beside the exercise's row"
    assert f"- sneaky, 01_toy, exercise 1.1: {expected}" in toy_class["report"], "and in the report's notes"
    flagged = {student for (student, _, _), row in toy_class["rows"].items() if row["note"]}
    assert flagged == {"sneaky", "kernel_killer"}, "only answers that reach into the kernel are flagged"
    assert toy_class["rows"][("kernel_killer", "01_toy", "1.2")]["note"].startswith(
        "answer uses os._exit (line 4: `os._exit(1)`)"
    )


# What an answer may not do, and what it may: (answer, [(line, what)]). The chapter imports torch, nn,
# models and math and defines `class Plain` (see PROTECTED below).
CHEATS = [
    ("def f(x):\n    return x\ntorch.allclose = lambda *args, **kwargs: True", [(3, "patches torch.allclose")]),
    ("models.BasicBlock = MyBlock", [(1, "patches models.BasicBlock")]),
    ("nn.Module.__call__ = lambda self, x: x", [(1, "patches nn.Module.__call__")]),
    ("setattr(torch, 'allclose', len)", [(1, "patches torch (setattr)")]),
    ("import numpy as np\nnp.testing.assert_allclose = print", [(2, "patches np.testing.assert_allclose")]),
    ("F = torch.nn.functional\nF.relu = abs", [(2, "patches F.relu")]),
    ("Plain.forward = lambda self, x: x", [(1, "patches Plain.forward")]),
    ("del math.isclose", [(1, "patches math.isclose")]),
    ("torch.__dict__['allclose'] = len", [(1, "patches torch.__dict__['allclose']"), (1, "uses __dict__")]),
    ("__import__('torch').allclose = len", [(1, "patches __import__('torch').allclose"), (1, "uses __import__")]),
    ("int.real = 3", [(1, "patches int.real")]),
    ("import sys\nsys.modules['torch'] = None", [(2, "patches sys.modules['torch']"), (2, "uses sys.modules")]),
    ("get_ipython().ast_transformers.append(None)", [(1, "uses ast_transformers"), (1, "uses get_ipython")]),
    ("x = 1  \n# NBVAL_SKIP", [(2, "uses NBVAL_")]),
    ("import os\nos._exit(0)", [(2, "uses os._exit")]),
    ("def f(:\n    get_ipython()", [(2, "uses get_ipython")]),  # not Python: its text is searched
]
ALLOWED = [
    "class MyBlock(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.conv = nn.Conv2d(1, 1, 1)",
    "MyBlock.expansion = 4",  # the answer's own class
    "model.fc = nn.Linear(4, 2)\nsetattr(model, 'head', None)",  # a chapter variable, not a module or class
    "%time y = torch.ones(2)",  # a magic: IPython's get_ipython() call is not the student's
    "from torch import nn\nlayers = [nn.ReLU()]\nlayers[0].inplace = True",
]
PROTECTED = grade.protected_names(nbformat.v4.new_notebook(cells=[
    nbformat.v4.new_code_cell("import math\nimport torch\nfrom torch import nn\nfrom utils import models"),
    nbformat.v4.new_code_cell("class Plain(nn.Module):\n    pass\nmodel = Plain()"),
]))  # fmt: skip


@pytest.mark.parametrize("answer, expected", CHEATS, ids=[c[0].splitlines()[-1][:30] for c in CHEATS])
def test_answers_that_patch_modules_classes_or_the_kernel_are_flagged_with_their_line(answer, expected):
    findings = grade.suspicious_lines(answer, PROTECTED)
    assert [(line, what) for line, what, _ in findings] == sorted(expected)
    lines = answer.splitlines()
    assert all(text == lines[line - 1].strip() for line, _, text in findings)


@pytest.mark.parametrize(
    "answer, line",
    [
        ("\n\n# Define `f`.\n\ndef f(x):\n    return x\ntorch.allclose = len", 7),  # blank lines first
        ("\n\n%time y = 1\ntorch.allclose = len", 4),  # and IPython syntax (parsed as IPython transforms it)
        ("s = 'a\x0cb\u2028c'\ntorch.allclose = len", 2),  # a form feed and U+2028 inside a line: no line breaks
        ("x = 1\r\ntorch.allclose = len", 2),
    ],
    ids=["blank-lines", "magic", "form-feed", "crlf"],
)
def test_the_flagged_line_is_the_offending_line(answer, line):
    """The report showed an empty line ("line 17: ``") when an answer started with blank lines."""
    findings = grade.suspicious_lines(answer, PROTECTED)
    assert [(number, text) for number, _, text in findings] == [(line, "torch.allclose = len")]
    assert grade.describe_suspicious(findings).startswith(f"answer patches torch.allclose (line {line}: `torch.allclose = len`)")


@pytest.mark.parametrize("answer", ALLOWED)
def test_ordinary_answers_are_not_flagged(answer):
    assert grade.suspicious_lines(answer, PROTECTED) == []


def test_a_monkeypatch_below_a_wrong_answer_is_flagged_in_the_report(tmp_path):
    """The cheat of the issue: `torch.allclose = lambda *args, **kwargs: True` below a wrong block makes
    the check pass; the report says so, with the line, beside the row and in its notes."""
    book = tmp_path / "book"
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import torch"),
        nbformat.v4.new_markdown_cell("## Exercises\n\n### Exercise 1.1: doubling"),
        nbformat.v4.new_code_cell("# Define `double(x)`: twice the tensor x.\ndef double(x):\n    return 2 * x"),
        nbformat.v4.new_code_cell('assert torch.allclose(double(torch.ones(3)), torch.full((3,), 2.0)), "double x"'),
    ])  # fmt: skip
    nb.cells[2].metadata["tags"] = ["solution", "ex-1-1", "hide-input"]
    nb.cells[3].metadata["tags"] = ["check", "ex-1-1"]
    write(nb, book / "01_double.ipynb")
    wrong = "def double(x):\n    return 3 * x"
    for student, answer in {"honest": wrong, "cheat": wrong + "\n\ntorch.allclose = lambda *args, **kwargs: True"}.items():
        submission = copy.deepcopy(nb)
        submission.cells[2].source = "# Define `double(x)`: twice the tensor x.\n" + answer
        write(submission, tmp_path / "submissions" / student / "01_double.ipynb")
    code, rows = run_grader(tmp_path / "submissions", tmp_path / "grades", "--jobs", "2", reference=book)
    assert code == 0
    assert rows[("honest", "01_double", "1.1")]["result"] == "fail", "without the patch the wrong answer fails"
    assert rows[("cheat", "01_double", "1.1")]["result"] == "pass", "the patch fools the check (hence the flag)"
    assert not rows[("honest", "01_double", "1.1")]["note"]
    expected = (
        "answer patches torch.allclose (line 5: `torch.allclose = lambda *args, **kwargs: True`): "
        "read it before trusting the result"
    )
    assert rows[("cheat", "01_double", "1.1")]["note"] == expected
    report = (tmp_path / "grades" / "grades.md").read_text(encoding="utf-8")
    assert f"- cheat, 01_double, exercise 1.1: {expected}" in report, "the report's notes show the line"
    assert f"| cheat | 01_double | 1.1 doubling | pass |  ({expected}) |" in report, "so does the exercise's row"


@pytest.mark.parametrize("student", ["untagged", "split"])
def test_answers_are_found_by_tag_then_by_cell_id(toy_class, student):
    assert results_of(toy_class, student) == dict.fromkeys(TOY_EXERCISES["01_toy"], "pass")


@pytest.mark.parametrize(
    "student, expected",
    [
        ("exception", "answer cell: ValueError: oops"),
        ("syntax", "answer cell: SyntaxError"),
        ("loop", f"answer cell: timed out after {CLASS_TIMEOUT} s (endless loop?)"),
        ("deaf_loop", f"answer cell: no result after {CLASS_TIMEOUT} s, even after an interrupt"),
        ("kernel_killer", "answer cell: the kernel died in this cell (os._exit, a crash or too little memory?)"),
        ("name_only", "check: TypeError: 'NoneType' object is not callable"),
        ("missing", "no answer: the submission has no cell tagged ex-1-2"),
    ],
)
def test_a_broken_answer_fails_its_exercise_and_grading_goes_on(toy_class, student, expected):
    assert results_of(toy_class, student) == {"1.1": "pass", "1.2": "fail", "1.3": "pass"}
    assert message_of(toy_class, student).startswith(expected), message_of(toy_class, student)


@pytest.mark.parametrize(
    "student, expected",
    [
        ("bad_json", "not a notebook: invalid JSON"),
        ("nbformat3", "unsupported notebook format 3.0: expected nbformat 4"),
        ("not_a_dict", "not a notebook: JSON without an 'nbformat' field"),
        ("binary", "not a notebook: the file is not UTF-8 text"),
    ],
)
def test_a_file_that_is_not_a_notebook_is_reported(toy_class, student, expected):
    assert results_of(toy_class, student) == dict.fromkeys(TOY_EXERCISES["01_toy"], "fail")
    for exercise in TOY_EXERCISES["01_toy"]:
        assert message_of(toy_class, student, exercise).startswith(expected)


def test_file_names_layouts_and_unmatched_files(toy_class):
    assert results_of(toy_class, "bo") == dict.fromkeys(TOY_EXERCISES["01_toy"], "pass")  # found by its metadata
    assert results_of(toy_class, "bo", "02_toy") == {"2.1": "fail"}
    assert message_of(toy_class, "bo", "2.1", "02_toy").startswith("check: AssertionError")
    assert results_of(toy_class, "cleo", "02_toy") == {"2.1": "pass"}
    assert message_of(toy_class, "cleo", "1.1") == "no notebook for 01_toy in the submissions"
    report = toy_class["report"]
    assert "`01_toy.ipynb`: cannot tell whose it is" in report
    assert "cleo: `cleo/notes.ipynb` matches no chapter" in report
    assert "cleo: several files for 02_toy: graded `cleo/02_toy.ipynb`, ignored `cleo/02_toy-old.ipynb`" in report
    assert "README" not in report
    assert "dana: `dana/01_toy.ipynb` matches no chapter" in report
    assert message_of(toy_class, "dana", "1.1") == "no notebook for 01_toy in the submissions"


def test_a_kernel_that_does_not_start_is_started_again(monkeypatch, tmp_path):
    """Kernels started at once can race for the same ports and die before they answer: try again."""
    failed = {0: {"cell": 0, "passed": False, "message": grade.KERNEL_START_FAILED + "Kernel died", "kind": "stopped"}}
    ran = {0: {"cell": 0, "passed": True, "message": "", "kind": ""}}
    outcomes = [failed, failed, ran]
    monkeypatch.setattr(grade, "_run_once", lambda *args: outcomes.pop(0))
    monkeypatch.setattr(grade.time, "sleep", lambda seconds: None)
    with open(tmp_path / "log", "w", encoding="utf-8") as log:
        assert grade.run_nbval(None, tmp_path, "x", None, log) == ran
    outcomes[:] = [failed] * grade.KERNEL_START_ATTEMPTS + [ran]
    with open(tmp_path / "log", "w", encoding="utf-8") as log:
        assert grade.run_nbval(None, tmp_path, "x", None, log) == failed, "it gives up after a few attempts"


def test_the_grader_refuses_to_write_into_the_submissions(tmp_path):
    (tmp_path / "class").mkdir()
    with pytest.raises(SystemExit):
        grade.main(["--submissions", str(tmp_path / "class"), "--out", str(tmp_path / "class" / "grades"),
                    "--reference", str(TOY_BOOK)])  # fmt: skip
    assert list((tmp_path / "class").iterdir()) == []


def _descendants(pid: int) -> dict[int, str]:
    """{pid: command line} of every living process below `pid` (Linux /proc)."""
    parents, commands = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents[int(stat.parent.name)] = int(fields[1])
                commands[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = {}, {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier and child not in found}
        found.update({child: commands[child] for child in frontier})
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the grader's processes in /proc")
def test_stopping_the_grader_stops_its_runs(toy_copies, tmp_path):
    """Ctrl-C or SIGTERM: no nbval run or kernel may outlive the grader (they run in sessions of their own)."""
    looping = answered(toy_copies, "01_toy", {"ex-1-1": "import time\nwhile True:\n    time.sleep(0.05)"})
    write(looping, tmp_path / "submissions" / "looper" / "01_toy.ipynb")
    grader = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "grade.py"), "--submissions", str(tmp_path / "submissions"),
         "--out", str(tmp_path / "grades"), "--reference", str(TOY_BOOK)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline, children = time.time() + 120, {}
    try:
        while time.time() < deadline and not any("ipykernel" in command for command in children.values()):
            time.sleep(0.5)
            children = _descendants(grader.pid)
        assert any("ipykernel" in command for command in children.values()), "the grader never started a kernel"
        time.sleep(2)
        grader.terminate()
        _, stderr = grader.communicate(timeout=60)
        assert grader.returncode == 130, stderr
        assert "interrupted" in stderr
        time.sleep(1)
        survivors = [command for pid, command in children.items() if _alive(pid)]
        assert not survivors, f"left running: {survivors}"
        assert not (tmp_path / "grades" / "grades.csv").exists()
    finally:  # a failing grader must not leave its processes behind
        for pid in [grader.pid, *children]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        grader.wait()


def test_make_grade_command_line(tmp_path):
    """The script as `make grade` calls it: a separate process, exit code 0, the report written."""
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "grade.py"), "--submissions", str(SAMPLE_CLASS), "--out", str(tmp_path),
         "--reference", str(TOY_BOOK), "--chapters", "02_toy"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "ada: 1/1 (100%)" in result.stdout
    with open(tmp_path / "grades.csv", encoding="utf-8") as stream:
        assert [r["result"] for r in csv.DictReader(stream)] == ["pass", "fail", "fail"]


# ------------------------------------------------------------------------------------------------
# Real chapters
#
# Running a whole chapter takes 10 s to 2 min in quick mode, and `make test` already runs every
# chapter under nbval. Here each chapter with exercises runs once, as a *probe* notebook, through
# the grader's own nbval runner:
#   1. the chapter cut down to what its exercise section needs: the setup cells, then (walking back
#      from the exercises) every earlier cell that binds a name the exercise cells read, and so on
#      transitively (see `chapter_slice`);
#   2. for each exercise, in one kernel: the stub from make_exercises + the check cells (must fail),
#      each of the chapter's wrong-answer cells for that exercise (tag `wrong-answer`, placed right after
#      its check cell, never run by the book build nor by nbval) + the check cells (must fail with an
#      AssertionError, the answer cell
#      itself running cleanly), then the reference solution + the check cells (must pass: this
#      proves the cut-down context is enough, so the failures above are not artefacts of it).
# A check reads the names its solution defines, so every earlier cell that binds one of them is
# kept: a stub faces the same leftovers as in the full chapter (a chapter that defined `MyBlock`
# before the exercise asking for it would let the stub's check pass: step 2 catches exactly that).
# ------------------------------------------------------------------------------------------------

REAL_CHAPTERS = [path for path in notebook_tags.chapter_notebooks(ROOT / "book")
                 if notebook_tags.find_exercises(notebook_tags.read_notebook(path))]  # fmt: skip


def _python_source(source: str) -> str:
    """A cell's source as plain Python (IPython magics and shell escapes turned into calls)."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


def _scope_names(table, module: bool) -> tuple[set[str], set[str]]:
    """(global names a scope and its nested scopes read, global names they bind)."""
    reads, binds = set(), set()
    for symbol in table.get_symbols():
        name = symbol.get_name()
        if symbol.is_referenced() and (module or symbol.is_global()):
            reads.add(name)
        if (module or symbol.is_declared_global()) and (symbol.is_assigned() or symbol.is_imported()):
            binds.add(name)
    for child in table.get_children():
        child_reads, child_binds = _scope_names(child, module=False)
        reads |= child_reads
        binds |= child_binds
    return reads, binds


def cell_names(source: str) -> tuple[set[str], set[str], bool]:
    """(global names the cell reads but does not bind itself, names it binds, has a star import).

    Names local to the cell's functions and classes do not count. A name both read and bound at
    module level (a loop variable, `x = x + 1`) counts as the cell's own: good enough for choosing
    cells, and the probe's reference-solution run catches a context that falls short."""
    python = _python_source(source)
    reads, binds = _scope_names(symtable.symtable(python, "<cell>", "exec"), module=True)
    imports = [node for node in ast.walk(ast.parse(python)) if isinstance(node, ast.ImportFrom)]
    star = any(alias.name == "*" for node in imports for alias in node.names)
    return reads - binds, binds, star


def chapter_slice(nb, exercises) -> list[int]:
    """Indices of the cells before the exercise section that the section needs (see above)."""
    first = min(i for e in exercises for i in e.solutions)
    section = [c for c in nb.cells[first:] if c.cell_type == "code"]
    # Names the section reads without binding them first; a check reads the names its solution
    # defines, so an earlier cell that defines one of them (and would satisfy a stub) is kept too.
    needed: set[str] = set()
    for cell in section:
        needed |= cell_names(cell.source)[0]
    body = [i for i, c in enumerate(nb.cells[:first]) if c.cell_type == "code"]
    setup, rest = body[:2], body[2:]  # the Colab setup cell and the imports cell (CONTRIBUTING.md)
    kept = []
    for index in reversed(rest):
        reads, binds, star = cell_names(nb.cells[index].source)
        if star or binds & needed:
            kept.append(index)
            needed |= reads
    return setup + sorted(kept)


def probe_notebook(nb, exercises, wrong: dict[str, list[tuple[str, str]]]):
    """The probe notebook and, per code cell, (exercise tag, variant, role) or None."""
    exercise_of = {i: e for e in exercises for i in e.solutions}
    probe = nbformat.v4.new_notebook(metadata=nb.metadata)
    roles: list[tuple | None] = []

    def add(source: str, role: tuple | None) -> None:
        probe.cells.append(nbformat.v4.new_code_cell(source))
        roles.append(role)

    first = min(exercise_of)
    for index in chapter_slice(nb, exercises):
        add(nb.cells[index].source, None)
    for index in range(first, len(nb.cells)):
        cell = nb.cells[index]
        exercise = exercise_of.get(index)
        if exercise is not None and index == exercise.solutions[0]:
            # Every variant starts from the state before the exercise (leftovers of the chapter
            # included), not from what the previous variant defined.
            sources = [nb.cells[i].source for i in exercise.solutions] + [src for _, src in wrong.get(exercise.tag, [])]
            names = sorted(set().union(*(cell_names(src)[1] for src in sources)))
            add(f"_probe_saved = {{name: globals()[name] for name in {names!r} if name in globals()}}", None)
            restore = f"for _name in {names!r}:\n    globals().pop(_name, None)\nglobals().update(_probe_saved)"
            stubs = [notebook_tags.stub_source(nb.cells[i].source, exercise.tag) for i in exercise.solutions]
            variants = [("stub", stubs)]
            variants += [(f"wrong: {what}", [source]) for what, source in wrong.get(exercise.tag, [])]
            for variant, sources in variants:
                add(restore, None)
                for source in sources:
                    add(source, (exercise.tag, variant, "answer"))
                for check in exercise.checks:
                    add(nb.cells[check].source, (exercise.tag, variant, "check"))
            add(restore, None)
        if cell.cell_type != "code":
            continue
        if exercise is not None:
            add(cell.source, (exercise.tag, "solution", "answer"))
        elif notebook_tags.is_check(cell):
            add(cell.source, (notebook_tags.exercise_tag(cell), "solution", "check"))
        else:
            add(cell.source, None)
    return probe, roles


def test_wrong_answers_cover_every_chapter():
    uncovered = [path.stem for path in REAL_CHAPTERS if not wrong_answers_of(notebook_tags.read_notebook(path))]
    assert not uncovered, f"add a wrong-answer cell (CONTRIBUTING.md, Exercises) to an exercise of: {uncovered}"


@pytest.mark.parametrize("path", REAL_CHAPTERS, ids=[p.stem for p in REAL_CHAPTERS])
def test_wrong_answer_cells_follow_the_convention(path):
    """Right after their exercise's check cell (or another wrong answer to it), its three tags, a first line
    saying what is wrong, lines of at most 88 characters, raw (never executed); student copies leave them out."""
    nb = notebook_tags.read_notebook(path)
    for exercise in notebook_tags.find_exercises(nb):
        expected_place = max(exercise.checks) + 1
        for index in exercise.wrong_answers:
            cell = nb.cells[index]
            where = f"{path.stem} cell {index} ({cell.id}), a wrong answer to {exercise.tag}"
            assert index == expected_place, f"{where}: must come right after the check cell or another wrong answer"
            expected_place += 1
            assert notebook_tags.cell_tags(cell) == ["wrong-answer", exercise.tag, "remove-cell"], where
            assert cell.cell_type == "raw", f"{where}: a raw cell, so that no 'Run all' executes it"
            assert cell.source.splitlines()[0].startswith("# Wrong answer: "), where
            assert all(len(line) <= 88 for line in cell.source.splitlines()), f"{where}: a line over 88 characters"
            assert "outputs" not in cell and "execution_count" not in cell, where
    copy = make_exercises.student_copy(nb, path.stem)
    assert not any(notebook_tags.is_wrong_answer(cell) for cell in copy.cells), "a student copy keeps a wrong answer"
    wrong_ids = {nb.cells[i].id for e in notebook_tags.find_exercises(nb) for i in e.wrong_answers}
    assert not wrong_ids & {cell.id for cell in copy.cells}


def probe_problems(nb, wrong: dict[str, list[tuple[str, str]]], tmp_path: Path, name: str) -> list[str]:
    """Run a chapter's probe notebook through the grader's nbval runner; what is wrong with it.

    ``nb`` is the chapter without its wrong-answer cells; ``wrong`` holds the answers to try."""
    exercises = notebook_tags.find_exercises(nb)
    probe, roles = probe_notebook(nb, exercises, wrong)
    work = tmp_path / "work"
    (tmp_path / "junit").mkdir(exist_ok=True)
    options = grade.Options(cell_timeout=900, answer_timeout=900, watchdog_grace=30, out=tmp_path, work=work,
                            env=grade.runner_environment(work))  # fmt: skip
    with open(tmp_path / f"{name}.log", "w", encoding="utf-8") as log:
        results = grade.run_nbval(grade.Plan(probe, list(range(len(probe.cells)))), work / name, name, options, log)

    problems = []
    for number, role in enumerate(roles):
        result = results.get(number)
        if result is None:
            problems.append(f"cell {number} {role} did not run")
        elif role is None and not result["passed"]:
            problems.append(f"chapter cell failed in the probe: {result['message']}")
    for exercise in exercises:
        for variant in ["stub"] + [f"wrong: {what}" for what, _ in wrong.get(exercise.tag, [])] + ["solution"]:
            cells = [n for n, role in enumerate(roles) if role and role[:2] == (exercise.tag, variant)]
            answers = [results.get(n) for n in cells if roles[n][2] == "answer"]
            checks = [results.get(n) for n in cells if roles[n][2] == "check"]
            if None in answers or None in checks or not checks:
                continue  # reported above
            where = f"{exercise.tag} ({variant})"
            if variant == "solution":
                if not all(r["passed"] for r in answers + checks):
                    failure = next(r["message"] for r in answers + checks if not r["passed"])
                    problems.append(
                        f"{where}: the reference solution fails in the probe (its context is incomplete): {failure}"
                    )
            elif all(r["passed"] for r in checks):
                problems.append(f"{where}: the check PASSES, it must fail")
            elif variant == "stub":
                if not all(r["message"].startswith("NotImplementedError") for r in answers):
                    problems.append(f"{where}: the stub should raise NotImplementedError, got {answers[0]['message']}")
            else:  # a wrong answer: it must run, and the check must reject it with its own message
                if not all(r["passed"] for r in answers):
                    problems.append(f"{where}: the wrong answer itself fails ({answers[0]['message']}): update it")
                failure = next(r["message"] for r in checks if not r["passed"])
                if not failure.startswith("AssertionError"):
                    problems.append(
                        f"{where}: the check fails with {failure!r}, not an assertion: update the wrong answer"
                    )
    return problems


def test_the_probe_catches_leaks_and_answers_that_are_not_wrong(tmp_path):
    """The real-chapter test below can fail: a chapter that defines the answer before the exercise
    (so the student copy would pass), a 'wrong' answer that is right, a wrong answer the check
    rejects only by accident (NameError), and a solution whose context the slice misses."""
    nb = notebook_tags.without_wrong_answers(notebook_tags.read_notebook(TOY_BOOK / "01_toy.ipynb"))
    first_exercise = next(i for i, c in enumerate(nb.cells) if notebook_tags.is_solution(c))
    nb.cells[first_exercise:first_exercise] = [
        nbformat.v4.new_code_cell("def unrelated():\n    return 1"),  # not needed by the exercises: left out
        nbformat.v4.new_code_cell(
            "def residual_unit(x, f):  # the chapter shows the answer too early\n    return relu(x + f(x))"
        ),
        nbformat.v4.new_code_cell("globals().update(OFFSET=0)  # a binding no static analysis sees"),
    ]
    for cell in nb.cells:
        if notebook_tags.is_solution(cell) and notebook_tags.exercise_tag(cell) == "ex-1-3":
            cell.source += "\n\nlr_at_no_offset = lr_at\nlr_at = lambda *args: lr_at_no_offset(*args) + OFFSET"
    wrong = {
        "ex-1-2": [
            ("not wrong at all", TOY_RIGHT["ex-1-2"]),
            ("a misspelt name", "def conv_output_sise(*args):\n    return 0"),
        ],
        "ex-1-3": [("really wrong", TOY_WRONG["ex-1-3"])],
    }
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    assert chapter_slice(nb, notebook_tags.find_exercises(nb)) == code_cells[:2] + [first_exercise + 1]
    problems = probe_problems(nb, wrong, tmp_path, "leaky")
    assert sorted(problems) == sorted([
        "ex-1-1 (stub): the check PASSES, it must fail",
        "ex-1-2 (wrong: not wrong at all): the check PASSES, it must fail",
        "ex-1-2 (wrong: a misspelt name): the check fails with \"NameError: name 'conv_output_size' is not defined\", "
        "not an assertion: update the wrong answer",
        "ex-1-3 (solution): the reference solution fails in the probe (its context is incomplete): "
        "NameError: name 'OFFSET' is not defined",
    ]), problems


@pytest.mark.parametrize("path", REAL_CHAPTERS, ids=[p.stem for p in REAL_CHAPTERS])
def test_real_chapter_stubs_and_wrong_answers_fail_their_checks(path, tmp_path):
    """Each exercise's check fails on the stub and on every wrong-answer cell beside it, and passes on the
    solution."""
    nb = notebook_tags.read_notebook(path)
    problems = probe_problems(notebook_tags.without_wrong_answers(nb), wrong_answers_of(nb), tmp_path, path.stem)
    log_tail = (tmp_path / f"{path.stem}.log").read_text(encoding="utf-8")[-3000:]
    assert not problems, "\n".join(problems) + "\n--- probe log (end) ---\n" + log_tail


# ------------------------------------------------------------------------------------------------
# the sandbox: answers that attack the machine fail their own exercise and harm nothing
# ------------------------------------------------------------------------------------------------


def test_the_sandbox_is_in_force_here():
    """The attack test below proves the sandbox only where it runs: this machine must have it."""
    from scripts import sandbox

    assert sandbox.kind() == "bwrap", "bubblewrap does not work here: run `make sandbox` (Debian's bubblewrap)"
    assert "no network" in sandbox.describe(sandbox.Limits())
    with pytest.raises(ValueError, match=r"sandbox limit memory_gb=0: expected a positive number"):
        sandbox.Limits(memory_gb=0)


@pytest.fixture(scope="module")
def attack_class(toy_copies, tmp_path_factory):
    """Students whose answer to 1.2 attacks the machine: deletes a file outside its folder and writes
    into the course, connects to a server on the grading machine, forks without end, allocates 50 GB."""
    import socket
    import threading

    root = tmp_path_factory.mktemp("attack")
    canary = root / "outside" / "canary.txt"
    canary.parent.mkdir()
    canary.write_text("still here")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    received, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            received.append(connection.recv(100))
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    course_file = ROOT / "book" / "grading-attack.txt"
    # A file in the checkout (not in /tmp, which the sandbox replaces by a private one): read-only there.
    checkout_canary = ROOT / "_build" / f"grading-canary-{os.getpid()}.txt"
    checkout_canary.parent.mkdir(exist_ok=True)
    checkout_canary.write_text("still here")
    answers = {
        "deleter": (
            f"import os\nos.remove({str(canary)!r})\n"
            "def conv_output_size(size, kernel, stride, padding):\n    return (size + 2 * padding - kernel) // stride + 1"
        ),
        "checkout_deleter": f"import os\nos.remove({str(checkout_canary)!r})\n" + TOY_RIGHT["ex-1-2"],
        "writer": f"open({str(course_file)!r}, 'w').write('graded')\n" + TOY_RIGHT["ex-1-2"],
        "network": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5).sendall(b'leak')\n"
        + TOY_RIGHT["ex-1-2"],
        "fork_bomb": "import os\nwhile True:\n    os.fork()",
        "memory": "hog = bytearray(50 * 2**30)\n" + TOY_RIGHT["ex-1-2"],
    }
    submissions = root / "submissions"
    for student, answer in answers.items():
        write(answered(toy_copies, "01_toy", {**TOY_RIGHT, "ex-1-2": answer}), submissions / student / "01_toy.ipynb")
    try:
        code, rows = run_grader(submissions, root / "grades", "--cell-timeout", "60", "--answer-timeout", "20")
        checkout_intact = checkout_canary.read_text() == "still here"
    finally:
        stop.set()
        thread.join(5)
        server.close()
        checkout_canary.unlink(missing_ok=True)
    return {"code": code, "rows": rows, "canary": canary, "received": received, "course_file": course_file,
            "checkout_intact": checkout_intact, "students": list(answers), "out": root / "grades"}  # fmt: skip


def test_an_attacking_answer_fails_only_its_own_exercise_and_harms_nothing(attack_class):
    assert attack_class["code"] == 0
    for student in attack_class["students"]:
        assert results_of(attack_class, student) == {"1.1": "pass", "1.2": "fail", "1.3": "pass"}, (
            student, message_of(attack_class, student),
        )  # fmt: skip
    assert attack_class["canary"].read_text() == "still here", "an answer deleted a file outside its folder"
    assert attack_class["checkout_intact"], "an answer deleted a file of the checkout"
    assert not attack_class["course_file"].exists(), "an answer wrote into the course"
    assert attack_class["received"] == [], "an answer reached a server on the grading machine"
    assert message_of(attack_class, "memory").startswith("answer cell: MemoryError"), message_of(attack_class, "memory")
    # /tmp is the sandbox's own: the file there is not even visible; the checkout is read-only.
    assert message_of(attack_class, "deleter").startswith("answer cell: FileNotFoundError"), message_of(attack_class, "deleter")
    for student in ("checkout_deleter", "writer"):
        assert "Read-only file system" in message_of(attack_class, student), message_of(attack_class, student)
    # The sandbox has a loopback of its own: the grading machine's server is not on it.
    assert message_of(attack_class, "network").startswith("answer cell: ConnectionRefusedError"), message_of(attack_class, "network")
    # The process limit stops the bomb (BlockingIOError); on a loaded machine the cell may reach its
    # time limit first, and the grader stops it. Either way only that exercise fails (checked above).
    bomb = message_of(attack_class, "fork_bomb")
    assert bomb.startswith("answer cell: BlockingIOError") or "the grader stopped the run" in bomb, bomb
    report = (attack_class["out"] / "grades.md").read_text(encoding="utf-8")
    assert "sandboxed by bubblewrap: no network" in report, "the report says what protected the machine"
