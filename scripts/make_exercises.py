#!/usr/bin/env python3
"""Write the student copy of every chapter: solutions replaced by stubs, outputs cleared.

    python scripts/make_exercises.py --out exercises            # every chapter in book/
    python scripts/make_exercises.py --out exercises 05_bottleneck.ipynb

In each copy, every solution cell (tags ``solution`` and ``ex-N-k``, see CONTRIBUTING.md) keeps only
its leading comment lines, the task, and ends with ``raise NotImplementedError(...)`` naming the
exercise, so the check cell below it fails until the student writes an answer. Everything else
(prose, setup, the chapter's code, the check cells) stays, except the wrong-answer cells and the
instructor answer keys of discussion exercises (cells tagged ``answer-key``), which are left out; outputs and execution counts are cleared;
cell ids and tags are kept so that ``scripts/grade.py`` can find each answer again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

if __package__ in (None, ""):  # run as `python scripts/make_exercises.py`: make `scripts` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import notebook_tags as tags  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

NOTE_CELL_ID = "student-copy-note"
NOTE = """\
**Exercise copy.** The solutions of this chapter's code exercises are removed. Write each answer in
the cell that ends with `raise NotImplementedError(...)` (replace that line), then run the check
cell below it: it passes once your answer is right. Only those answer cells are graded: the grader
uses its own copy of every other cell, check cells included, so keep your answer in that one cell."""


def student_copy(nb, chapter: str):
    """The student copy of one chapter notebook (a new notebook; ``nb`` is left untouched).

    The wrong-answer cells (instructors' material for the tests) and the answer keys of discussion
    exercises are left out."""
    tags.find_exercises(nb)  # the contract holds for the chapter as written, wrong answers included
    copy_nb = tags.without_answer_keys(tags.without_wrong_answers(nb))
    exercises = tags.find_exercises(copy_nb)
    solutions = {index: exercise.tag for exercise in exercises for index in exercise.solutions}
    for index, cell in enumerate(copy_nb.cells):
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)  # timing metadata of the last run
        if index in solutions:
            cell.source = tags.stub_source(cell.source, solutions[index])
    if exercises:
        note = nbformat.v4.new_markdown_cell(NOTE)
        note.id = NOTE_CELL_ID
        copy_nb.cells.insert(0, note)
    copy_nb.metadata[tags.METADATA_KEY] = {"chapter": chapter, "copy": "exercises"}
    nbformat.validate(copy_nb)
    return copy_nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--book", type=Path, default=ROOT / "book", help="folder of chapter notebooks (default: book/)")
    parser.add_argument("--out", type=Path, default=ROOT / "exercises", help="where to write the copies")
    parser.add_argument("chapters", nargs="*", help="chapter file names (default: every NN_*.ipynb in --book)")
    args = parser.parse_args(argv)

    paths = [args.book / name for name in args.chapters] or tags.chapter_notebooks(args.book)
    if not paths:
        parser.error(f"no chapter notebooks ({tags.CHAPTER_GLOB}) in {args.book}")
    if args.out.resolve() == args.book.resolve():
        parser.error("--out must not be the book folder: the copies would overwrite the chapters")
    args.out.mkdir(parents=True, exist_ok=True)
    failed = False
    for path in paths:
        try:
            nb = tags.read_notebook(path)
            result = student_copy(nb, path.stem)
        except (OSError, ValueError, nbformat.ValidationError) as error:  # ContractError is a ValueError
            print(f"{path}: {error}", file=sys.stderr)
            failed = True
            continue
        target = args.out / path.name
        nbformat.write(result, str(target))
        count = len(tags.find_exercises(nb))
        print(f"{target}: {count} code exercise(s), solutions replaced by stubs")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
