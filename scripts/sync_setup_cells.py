#!/usr/bin/env python3
"""Write or refresh the "Colab setup" cell that opens every notebook under book/.

The cell installs this course's ``utils`` package (from ``repository.url`` and ``repository.branch``
in ``_config.yml``) and d2l without its old pins, and only when it runs inside Colab.
CONTRIBUTING.md shows the exact form; this script is the one place that writes it.

    python scripts/sync_setup_cells.py            # rewrite stale or missing setup cells in place
    python scripts/sync_setup_cells.py --check    # only report; exit 1 if any notebook is out of date

tests/test_notebook_conventions.py reuses ``expected_setup_source`` and ``setup_cell_problem``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat
import yaml

from utils import files  # the course package, installed in the venv (`pip install -e .`)

ROOT = Path(__file__).resolve().parents[1]
CONFIG_PATH = ROOT / "_config.yml"
BOOK_DIR = ROOT / "book"

# The d2l release the course is written against; the Makefile installs the same pin locally.
D2L_VERSION = "1.0.3"
SETUP_TAGS = ("remove-cell", "colab-setup")
SETUP_CELL_ID = "colab-setup"

TEMPLATE = """\
# Colab setup: installs this course's `utils` package and d2l (without its old pins).
# It does nothing outside Colab. Written by scripts/sync_setup_cells.py; do not edit by hand.
import sys

if "google.colab" in sys.modules:
    %pip install -q --no-deps d2l=={d2l_version}
    %pip install -q "git+{url}@{branch}\""""


def repository_settings(config_path: Path = CONFIG_PATH) -> tuple[str, str]:
    """``(url, branch)`` from the book configuration's ``repository`` section."""
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    repository = config.get("repository") or {}
    url = str(repository.get("url") or "").rstrip("/")
    if not url.startswith("https://"):
        raise SystemExit(f"{config_path}: repository.url must be an https URL, got {url!r}")
    if url.endswith(".git"):
        url = url[: -len(".git")]
    branch = str(repository.get("branch") or "main")
    return url, branch


def expected_setup_source(config_path: Path = CONFIG_PATH) -> str:
    """The exact source the first cell of every notebook must have."""
    url, branch = repository_settings(config_path)
    return TEMPLATE.format(d2l_version=D2L_VERSION, url=url, branch=branch)


def book_notebooks(book_dir: Path = BOOK_DIR) -> list[Path]:
    """Every notebook of the book, in file-name order (checkpoints excluded)."""
    return sorted(p for p in book_dir.glob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def _is_setup_cell(cell) -> bool:
    return "colab-setup" in (cell.get("metadata", {}).get("tags") or [])


def setup_cell_problem(nb, expected_source: str) -> str | None:
    """Why the notebook's first cell is not the current setup cell, or None when it is."""
    if not nb.cells:
        return "the notebook has no cells"
    first = nb.cells[0]
    if not _is_setup_cell(first):
        later = [i for i, cell in enumerate(nb.cells) if _is_setup_cell(cell)]
        if later:
            return f"the setup cell is cell {later[0]}, not the first cell"
        return "the first cell is not the Colab setup cell (no cell is tagged colab-setup)"
    copies = sum(map(_is_setup_cell, nb.cells))
    if copies > 1:
        return f"{copies} cells are tagged colab-setup; expected one"
    if first.cell_type != "code":
        return f"the setup cell is a {first.cell_type} cell, expected a code cell"
    missing = [tag for tag in SETUP_TAGS if tag not in first.metadata.get("tags", [])]
    if missing:
        return f"the setup cell lacks the tag(s) {missing}"
    if first.source != expected_source:
        return "the setup cell's source is stale (differs from what _config.yml's repository gives)"
    if first.get("outputs") or first.get("execution_count") is not None:
        return "the setup cell has committed outputs or an execution count"
    return None


# A markdown code block that quotes the setup cell (the preface shows it to readers).
QUOTED_SETUP = re.compile(r"(```(?:python|ipython3?)?\n)(# Colab setup:.*?)\n(```)", re.DOTALL)


def stale_quotes(nb, expected_source: str) -> list[int]:
    """Indices of markdown cells that quote an outdated setup cell."""
    return [
        index
        for index, cell in enumerate(nb.cells)
        if cell.cell_type == "markdown"
        and any(match.group(2) != expected_source for match in QUOTED_SETUP.finditer(cell.source))
    ]


def with_current_quotes(nb, expected_source: str):
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = QUOTED_SETUP.sub(lambda m: m.group(1) + expected_source + "\n" + m.group(3), cell.source)
    return nb


def with_setup_cell(nb, expected_source: str):
    """The notebook with its setup cell first and current (other cells untouched)."""
    existing = [cell for cell in nb.cells if _is_setup_cell(cell)]
    others = [cell for cell in nb.cells if not _is_setup_cell(cell)]
    if existing:
        cell = existing[0]
        if cell.cell_type != "code":
            cell = nbformat.v4.new_code_cell(id=cell.get("id") or SETUP_CELL_ID)
    else:
        taken = {c.get("id") for c in nb.cells}
        cell = nbformat.v4.new_code_cell()
        if SETUP_CELL_ID not in taken:
            cell.id = SETUP_CELL_ID
    cell.source = expected_source
    cell.outputs = []
    cell.execution_count = None
    other_tags = [t for t in cell.metadata.get("tags", []) if t not in SETUP_TAGS]
    cell.metadata["tags"] = list(SETUP_TAGS) + other_tags
    nb.cells = [cell] + others
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report stale or missing setup cells; change nothing")
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to process (default: book/*.ipynb)")
    args = parser.parse_args(argv)

    expected = expected_setup_source()
    paths = args.notebooks or book_notebooks()
    if not paths:
        print("no notebooks found under book/")
        return 0
    stale = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        problem = setup_cell_problem(nb, expected)
        if problem is None and stale_quotes(nb, expected):
            problem = f"markdown cell(s) {stale_quotes(nb, expected)} quote an outdated setup cell"
        if problem is None:
            continue
        stale.append((path, problem))
        if not args.check:
            with files.atomic_write(path, "w") as f:  # an interrupted run never leaves a half-written notebook
                nbformat.write(with_current_quotes(with_setup_cell(nb, expected), expected), f)
            print(f"updated {path}: {problem}")

    if args.check:
        for path, problem in stale:
            print(f"{path}: {problem}")
        if stale:
            print(f"{len(stale)} notebook(s) need `python scripts/sync_setup_cells.py`.")
            return 1
        print(f"All {len(paths)} notebook(s) start with the current Colab setup cell.")
        return 0
    if not stale:
        print(f"All {len(paths)} notebook(s) were already up to date.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
