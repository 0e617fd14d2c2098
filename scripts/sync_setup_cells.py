#!/usr/bin/env python3
"""Write or refresh the "Colab setup" cell that opens every notebook under book/.

Only inside Colab, the cell clones the repository (``repository.url`` and ``repository.branch``
of ``_config.yml``) into ``/content/<name>``, unless that folder is already there; installs the
course's ``utils`` package from the clone (a plain install, which never touches Colab's torch:
the package pins no torch, torchvision or numpy) and d2l without its old pins; and sets
``RESNET_REPO`` to the clone. Every committed file a chapter reads (results, figures) is then
found by ``utils.files.repo_file`` in the clone, at the branch the notebook was opened from,
exactly as in a checkout. CONTRIBUTING.md shows the cell; this script is the one writer of it.

    python scripts/sync_setup_cells.py            # rewrite stale or missing setup cells in place
    python scripts/sync_setup_cells.py --check    # only report; exit 1 if any notebook is out of date

tests/test_notebook_conventions.py reuses ``expected_setup_source`` and ``setup_cell_problem``;
tests/test_colab.py runs ``setup_source`` (the same template, pointed at a local clone) in a
simulated Colab.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

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
# Colab starts every notebook in /content; the clone goes beside it.
COLAB_CONTENT = "/content"

# IPython expands {COURSE_URL} and {COURSE_REPO} in the ! and % lines; the doubled braces
# are str.format's escapes for them.
TEMPLATE = """\
# Colab setup: clones the course's repository (the committed results and figures the
# chapters show), installs its `utils` package from the clone and d2l (without its old
# pins), never another PyTorch. It does nothing outside Colab.
# Written by scripts/sync_setup_cells.py from _config.yml; do not edit by hand.
import os
import sys

if "google.colab" in sys.modules:
    COURSE_URL = "{url}"
    COURSE_REPO = "{clone_dir}"
    if not os.path.isdir(COURSE_REPO):
        !git clone -q --depth 1 --branch {branch} {{COURSE_URL}} {{COURSE_REPO}}
    if not os.path.isfile(os.path.join(COURSE_REPO, "_toc.yml")):
        raise RuntimeError(f"could not clone {{COURSE_URL}}: is this runtime online?")
    %pip install -q --no-deps d2l=={d2l_version}
    %pip install -q {{COURSE_REPO}}
    os.environ["RESNET_REPO"] = COURSE_REPO  # utils.files finds committed files there\
"""


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


def colab_clone_dir(url: str) -> str:
    """Where the cell clones ``url`` in Colab: ``/content/<repository name>``."""
    name = PurePosixPath(urlparse(url).path).name
    if name.endswith(".git"):
        name = name[: -len(".git")]
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name or ""):
        raise ValueError(f"url={url!r}: expected a repository URL ending in its name, e.g. https://github.com/owner/course")
    return f"{COLAB_CONTENT}/{name}"


def setup_source(url: str, branch: str, clone_dir: str) -> str:
    """The setup cell for the repository at ``url`` and ``branch``, cloned into ``clone_dir``.

    The book's cell is ``expected_setup_source()``; tests/test_colab.py passes a local clone.
    """
    for name, value in (("url", url), ("branch", branch), ("clone_dir", clone_dir)):
        if not value or any(c in value for c in "\"'{}\n "):
            raise ValueError(f"{name}={value!r}: expected a non-empty value without quotes, braces or spaces")
    return TEMPLATE.format(d2l_version=D2L_VERSION, url=url, branch=branch, clone_dir=clone_dir)


def expected_setup_source(config_path: Path = CONFIG_PATH) -> str:
    """The exact source the first cell of every notebook must have."""
    url, branch = repository_settings(config_path)
    return setup_source(url, branch, colab_clone_dir(url))


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
