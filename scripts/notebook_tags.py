"""The cell-tag contract between chapter notebooks and the instructor scripts.

CONTRIBUTING.md defines it: a code exercise is a **solution cell** (tags ``solution``, ``ex-N-k``,
``hide-input``) whose first lines are comments restating the task, followed by a **check cell**
(tags ``check``, ``ex-N-k``) that asserts on the names the solution defines.

A **wrong-answer cell** (a *raw* cell, tags ``wrong-answer``, ``ex-N-k``, ``remove-cell``; first
line ``# Wrong answer: <what is wrong>``) follows an exercise's check cell: a plausible wrong answer
that the check must reject. Being raw, it is never executed, by the book build, nbval, or a
reader's "Run all" in Jupyter or Colab; ``remove-cell`` hides it in the book.
``tests/test_grading.py`` runs each one against its check. Student copies omit these cells and the grader never runs them.

An **answer-key cell** (a markdown cell tagged ``answer-key``, a dropdown admonition) follows the
heading of an exercise that has no code check (a discussion, or an experiment to write up): the
instructor's answer, folded in the book and left out of student copies.

``scripts/make_exercises.py`` turns solution cells into stubs; ``scripts/grade.py`` puts a student's
answers back into the instructor's notebook and runs it under nbval. Both read the contract here,
so that the two can never disagree about what an exercise is.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

SOLUTION_TAG = "solution"
CHECK_TAG = "check"
WRONG_ANSWER_TAG = "wrong-answer"
ANSWER_KEY_TAG = "answer-key"
# Every wrong-answer cell is a *raw* cell, so that nothing executes it: not the book build, not
# nbval, not Jupyter's or Colab's "Run all" (which ignore execution tags). It is hidden in the book.
WRONG_ANSWER_TAGS = (WRONG_ANSWER_TAG, "remove-cell")
WRONG_ANSWER_HEADING = re.compile(r"^# Wrong answer: (\S.*?)\s*$")
EXERCISE_TAG = re.compile(r"^ex-(\d+)-(\d+)$")
# Chapters are book/NN_short_name.ipynb (CONTRIBUTING.md, "Files").
CHAPTER_GLOB = "[0-9][0-9]_*.ipynb"
# "### Exercise 3.2: title" in the markdown cell that states the task.
EXERCISE_HEADING = re.compile(r"^\s*#+\s*Exercise\s+(\d+)\.(\d+)\s*[:.\u2014-]?\s*(.*?)\s*$", re.MULTILINE)
# Notebook metadata key that student copies carry, so a renamed file still finds its chapter.
METADATA_KEY = "resnet_course"


class ContractError(ValueError):
    """A notebook breaks the exercise tag contract of CONTRIBUTING.md."""


@dataclass
class Exercise:
    """One code exercise of a chapter: where its solution and check cells are."""

    tag: str  # "ex-3-2"
    title: str = ""  # from the "### Exercise 3.2: title" heading, "" if there is none
    solutions: list[int] = field(default_factory=list)  # indices into nb.cells
    checks: list[int] = field(default_factory=list)
    wrong_answers: list[int] = field(default_factory=list)  # wrong-answer cells, after the checks

    @property
    def label(self) -> str:
        return exercise_label(self.tag)


def cell_tags(cell) -> list[str]:
    tags = cell.get("metadata", {}).get("tags", [])
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def exercise_tag(cell) -> str | None:
    """The cell's ``ex-N-k`` tag, None without one; a cell may not carry two."""
    found = [t for t in cell_tags(cell) if EXERCISE_TAG.match(t)]
    if len(found) > 1:
        raise ContractError(f"cell {cell.get('id', '?')} has several exercise tags: {found}")
    return found[0] if found else None


def is_solution(cell) -> bool:
    return cell.get("cell_type") == "code" and SOLUTION_TAG in cell_tags(cell)


def is_check(cell) -> bool:
    return cell.get("cell_type") == "code" and CHECK_TAG in cell_tags(cell)


def is_wrong_answer(cell) -> bool:
    return WRONG_ANSWER_TAG in cell_tags(cell)


def wrong_answer_description(cell) -> str:
    """What is wrong with a wrong-answer cell's answer, from its first line."""
    first = cell.get("source", "").splitlines()[:1]
    match = WRONG_ANSWER_HEADING.match(first[0]) if first else None
    if not match:
        raise ContractError(
            f"wrong-answer cell {cell.get('id', '?')} must start with a line '# Wrong answer: <what is wrong>'"
        )
    return match.group(1)


def wrong_answers(nb, exercise: Exercise) -> list[tuple[str, str]]:
    """[(what is wrong, source)] of an exercise's wrong-answer cells, in order."""
    return [(wrong_answer_description(nb.cells[i]), nb.cells[i].source) for i in exercise.wrong_answers]


def without_wrong_answers(nb):
    """A copy of ``nb`` without its wrong-answer cells (``nb`` is left untouched)."""
    stripped = copy.deepcopy(nb)
    stripped.cells = [cell for cell in stripped.cells if not is_wrong_answer(cell)]
    return stripped


def is_answer_key(cell) -> bool:
    return ANSWER_KEY_TAG in cell_tags(cell)


def without_answer_keys(nb):
    """A copy of ``nb`` without its instructor answer keys (``nb`` is left untouched)."""
    stripped = copy.deepcopy(nb)
    stripped.cells = [cell for cell in stripped.cells if not is_answer_key(cell)]
    return stripped


def exercise_label(tag: str) -> str:
    """``"ex-3-2"`` -> ``"3.2"``."""
    match = EXERCISE_TAG.match(tag)
    if not match:
        raise ValueError(f"not an exercise tag: {tag!r}")
    return f"{int(match.group(1))}.{int(match.group(2))}"


def _exercise_title(nb, tag: str, before: int) -> str:
    """The title in the nearest "### Exercise N.k: title" heading above cell ``before``."""
    chapter, number = (int(x) for x in EXERCISE_TAG.match(tag).groups())
    for cell in reversed(nb.cells[:before]):
        if cell.cell_type != "markdown":
            continue
        for match in EXERCISE_HEADING.finditer(cell.source):
            if (int(match.group(1)), int(match.group(2))) == (chapter, number):
                return match.group(3).strip()
    return ""


def find_exercises(nb) -> list[Exercise]:
    """The code exercises of a notebook in order, checked against the contract.

    Raises ContractError when a solution or check cell has no exercise tag, a cell is both, or an
    exercise lacks its solution or its check: grading such a notebook would silently mis-grade.
    """
    exercises: dict[str, Exercise] = {}
    wrong: list[tuple[int, str]] = []
    for index, cell in enumerate(nb.cells):
        solution, check = is_solution(cell), is_check(cell)
        where = f"cell {index} (id {cell.get('id', '?')})"
        if is_wrong_answer(cell):
            if solution or check or cell.get("cell_type") != "raw":
                raise ContractError(
                    f"{where}: a wrong-answer cell must be a raw cell (never executed), neither solution nor check"
                )
            missing = [t for t in WRONG_ANSWER_TAGS if t not in cell_tags(cell)]
            if missing:
                raise ContractError(f"{where}: a wrong-answer cell lacks the tags {missing}")
            tag = exercise_tag(cell)
            if tag is None:
                raise ContractError(f"{where} is tagged {WRONG_ANSWER_TAG!r} but has no ex-N-k tag")
            wrong_answer_description(cell)
            wrong.append((index, tag))
            continue
        if not (solution or check):
            continue
        if solution and check:
            raise ContractError(f"{where} is tagged both {SOLUTION_TAG!r} and {CHECK_TAG!r}")
        tag = exercise_tag(cell)
        if tag is None:
            raise ContractError(f"{where} is tagged {'solution' if solution else 'check'} but has no ex-N-k tag")
        exercise = exercises.setdefault(tag, Exercise(tag))
        (exercise.solutions if solution else exercise.checks).append(index)
    for exercise in exercises.values():
        if not exercise.solutions:
            raise ContractError(f"exercise {exercise.tag} has a check cell but no solution cell")
        if not exercise.checks:
            raise ContractError(f"exercise {exercise.tag} has a solution cell but no check cell")
        if min(exercise.checks) < min(exercise.solutions):
            raise ContractError(f"exercise {exercise.tag}: its check cell comes before its solution cell")
        exercise.title = _exercise_title(nb, exercise.tag, min(exercise.solutions))
    for index, tag in wrong:
        if tag not in exercises:
            raise ContractError(f"cell {index}: a wrong answer to {tag}, which has no solution and check cells")
        if index < max(exercises[tag].checks):
            raise ContractError(f"cell {index}: a wrong answer to {tag} must come after its check cell")
        exercises[tag].wrong_answers.append(index)
    return sorted(exercises.values(), key=lambda e: min(e.solutions))


def task_lines(source: str) -> list[str]:
    """The solution's leading comment lines (the task statement), without surrounding blank lines."""
    kept = []
    for line in source.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            break
        kept.append(line.rstrip())
    while kept and not kept[0].strip():
        kept.pop(0)
    while kept and not kept[-1].strip():
        kept.pop()
    return kept


def stub_line(tag: str) -> str:
    label = exercise_label(tag)
    return f'raise NotImplementedError("Exercise {label} ({tag}): replace this line with your answer")'


def stub_source(source: str, tag: str) -> str:
    """What a student sees instead of a solution: its task comments, then a NotImplementedError."""
    task = task_lines(source)
    if not task:
        raise ContractError(
            f"the solution of {tag} does not start with comment lines stating the task "
            "(CONTRIBUTING.md, Exercises): the student copy would have no task"
        )
    return "\n".join([*task, stub_line(tag)])


def chapter_notebooks(book_dir: Path) -> list[Path]:
    """The chapter notebooks of a book folder, in chapter order."""
    return sorted(Path(book_dir).glob(CHAPTER_GLOB))


def read_notebook(path: Path):
    """An instructor's notebook (trusted input: errors propagate)."""
    return nbformat.read(str(path), as_version=4)
