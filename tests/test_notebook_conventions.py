"""The mechanical conventions of CONTRIBUTING.md, checked on every page of the book.

- _toc.yml and book/ agree: every toc entry exists, every page under book/ is in the toc.
- Every notebook: valid nbformat 4.5 with a python3 kernelspec, first cell = the current Colab setup
  cell (as scripts/sync_setup_cells.py writes it), then the title ("# ..."), then an import cell
  that calls `train.set_seed(0)` and ends with `config.banner()` (the mode banner); no committed outputs or execution counts; no star
  or repeated imports; citations use keys of book/references.bib; only references.md has a bibliography.
- No notebook looks for repository files itself (`../results`, `os.walk`, loops up `.parent` or
  `.parents`): committed files are found by `utils.files.repo_file`, which works in Colab too.
- Every chapter notebook (01_..., not the preface) ends with "## Exercises": 3 to 5 exercises, at
  least 2 of them code exercises; each `ex-N-k` tag has exactly one solution cell (tagged `solution`
  and `hide-input`, opening with comment lines) followed later by exactly one check cell (tagged
  `check` and `hide-cell`, so it stays folded) that asserts. Every other exercise (a discussion or
  experiment to write up) has an instructor answer key: a markdown cell tagged `answer-key` after its
  heading, a dropdown admonition, which `make exercises` leaves out of student copies.

The tests run over the notebooks that exist (chapters being written are simply not collected yet),
but the toc test fails for a listed chapter that does not exist. The last tests feed deliberately
broken notebooks to the same checks, so each check is shown to fail when it should.
"""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from scripts import build_book, format_notebooks
from scripts import sync_setup_cells as setup_cells

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"


toc_entries = build_book.toc_entries  # the one reader of _toc.yml: the build and the tests read it the same way
NOTEBOOKS = setup_cells.book_notebooks(BOOK)
CHAPTERS = [p for p in NOTEBOOKS if re.match(r"^\d\d_", p.name) and int(p.name[:2]) >= 1]
MARKDOWN_PAGES = sorted(BOOK.glob("*.md"))


def _ids(paths):
    return [p.name for p in paths]


def _resolve(entry: str) -> list[Path]:
    path = ROOT / entry
    if path.suffix:
        return [path] if path.exists() else []
    return [p for p in (path.with_suffix(".ipynb"), path.with_suffix(".md")) if p.exists()]


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _code_without_magics(source: str) -> str:
    # IPython magics and shell escapes are not Python: blank them out before parsing.
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


# ----------------------------------------------------------------------------- checks (pure functions)


def output_problems(nb) -> list[str]:
    problems = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"cell {index} ({cell.get('id')}) has committed outputs")
        if cell.get("execution_count") is not None:
            problems.append(f"cell {index} ({cell.get('id')}) has an execution count")
        if "execution" in cell.get("metadata", {}):
            problems.append(f"cell {index} ({cell.get('id')}) has execution timing metadata (an executed copy?)")
    return problems


def import_cell_problem(nb) -> str | None:
    """The first code cell after the setup cell must seed everything and show the mode banner."""
    code_cells = [cell for cell in nb.cells[1:] if cell.cell_type == "code"]
    if not code_cells:
        return "no code cell after the setup cell"
    source = code_cells[0].source
    missing = [snippet for snippet in ("train.set_seed(0)",) if snippet not in source]
    if not source.rstrip().endswith("config.banner()"):
        missing.append("config.banner() as its last line")
    if missing:
        return f"the first code cell after the setup cell (the import cell) lacks {missing}"
    return None


def title_problem(nb) -> str | None:
    """The first cell a reader sees (after the removed setup cell) is the page title."""
    visible = [cell for cell in nb.cells if "remove-cell" not in _tags(cell)]
    if not visible:
        return "no visible cell"
    first = visible[0]
    if first.cell_type != "markdown" or not first.source.startswith("# "):
        return f"the first visible cell ({first.get('id')}) is a {first.cell_type} cell, not the '# Title'"
    return None


def import_problems(nb) -> list[str]:
    problems, seen = [], {}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "colab-setup" in _tags(cell):
            continue
        try:
            tree = ast.parse(_code_without_magics(cell.source))
        except SyntaxError as err:
            problems.append(f"cell {index} ({cell.get('id')}) is not valid Python: {err}")
            continue
        for node in tree.body:  # module-level imports only: a function may import locally
            if isinstance(node, ast.Import):
                names = [f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else "") for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if any(alias.name == "*" for alias in node.names):
                    problems.append(f"cell {index} ({cell.get('id')}): star import from {node.module}")
                names = [f"from {node.module} import {alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                if name in seen:
                    problems.append(f"cell {index} ({cell.get('id')}): `{name}` repeats an import of cell {seen[name]}")
                seen.setdefault(name, index)
    return problems


EXERCISES_HEADING = re.compile(r"^##\s+Exercises\s*$", re.MULTILINE)
EXERCISE_HEADING = re.compile(r"^###\s+Exercise\s+(\d+)\.(\d+)\s*:", re.MULTILINE)
EXERCISE_TAG = re.compile(r"^ex-(\d+)-(\d+)$")


def _has_assert(source: str) -> bool:
    try:
        tree = ast.parse(_code_without_magics(source))
    except SyntaxError:
        return False
    return any(isinstance(node, ast.Assert) for node in ast.walk(tree))


def exercise_problems(nb, chapter: int) -> list[str]:
    """Everything in a chapter's exercises that breaks CONTRIBUTING.md's structure."""
    problems = []
    cells = nb.cells
    starts = [i for i, c in enumerate(cells) if c.cell_type == "markdown" and EXERCISES_HEADING.search(c.source)]
    if len(starts) != 1:
        return [f"expected exactly one '## Exercises' section, found {len(starts)}"]
    start = starts[0]

    headings = {}  # k -> cell index
    for i, cell in enumerate(cells):
        if cell.cell_type != "markdown":
            continue
        for match in EXERCISE_HEADING.finditer(cell.source):
            n, k = int(match.group(1)), int(match.group(2))
            if i < start:
                problems.append(f"'### Exercise {n}.{k}' comes before the '## Exercises' section")
            if n != chapter:
                problems.append(f"'### Exercise {n}.{k}' is numbered for chapter {n}, not {chapter}")
            if k in headings:
                problems.append(f"two headings for Exercise {n}.{k}")
            headings.setdefault(k, i)
    if not 3 <= len(headings) <= 5:
        problems.append(f"{len(headings)} exercises ('### Exercise {chapter}.k: title' headings); expected 3 to 5")
    if headings and sorted(headings) != list(range(1, len(headings) + 1)):
        problems.append(f"exercises are numbered {sorted(headings)}; expected {chapter}.1 to {chapter}.{len(headings)}")

    by_tag: dict[str, dict[str, list[int]]] = {}
    for i, cell in enumerate(cells):
        tags = _tags(cell)
        ex_tags = [t for t in tags if EXERCISE_TAG.match(t)]
        if ("solution" in tags or "check" in tags) and len(ex_tags) != 1:
            problems.append(f"cell {i} ({cell.get('id')}) is tagged solution/check but has {len(ex_tags)} ex-N-k tags")
        for tag in ex_tags:
            roles = by_tag.setdefault(tag, {"solution": [], "check": []})
            for role in ("solution", "check"):
                if role in tags:
                    roles[role].append(i)

    code_exercises = 0
    for tag, roles in sorted(by_tag.items()):
        n, k = (int(x) for x in EXERCISE_TAG.match(tag).groups())
        if n != chapter:
            problems.append(f"tag {tag} belongs to chapter {n}, not {chapter}")
        if k not in headings:
            problems.append(f"tag {tag} has no '### Exercise {n}.{k}:' heading")
        if len(roles["solution"]) != 1:
            problems.append(f"{tag}: {len(roles['solution'])} solution cells; expected exactly one")
        if len(roles["check"]) != 1:
            problems.append(f"{tag}: {len(roles['check'])} check cells; expected exactly one")
        if len(roles["solution"]) != 1 or len(roles["check"]) != 1:
            continue
        code_exercises += 1
        solution, check = cells[roles["solution"][0]], cells[roles["check"][0]]
        s, c = roles["solution"][0], roles["check"][0]
        if solution.cell_type != "code" or check.cell_type != "code":
            problems.append(f"{tag}: the solution and check cells must be code cells")
            continue
        if "hide-input" not in _tags(solution):
            problems.append(f"{tag}: the solution cell is not tagged hide-input (it would not be folded in the book)")
        if not solution.source.lstrip().startswith("#"):
            problems.append(f"{tag}: the solution cell must open with comment lines restating the task")
        if not c > s:
            problems.append(f"{tag}: the check cell (cell {c}) must come after the solution cell (cell {s})")
        if s < start:
            problems.append(f"{tag}: the solution cell is outside the '## Exercises' section")
        if k in headings and s < headings[k]:
            problems.append(f"{tag}: the solution cell comes before its '### Exercise {n}.{k}' heading")
        if not _has_assert(check.source):
            problems.append(f"{tag}: the check cell has no assert statement")
        if "hide-cell" not in _tags(check):
            problems.append(f"{tag}: the check cell is not tagged hide-cell (it would show under the folded solution)")
    if code_exercises < 2:
        problems.append(f"{code_exercises} code exercise(s) with a solution and a check cell; expected at least 2")
    coded = {int(EXERCISE_TAG.match(tag).group(2)) for tag in by_tag}
    ends = sorted(headings.values()) + [len(cells)]
    for k, i in sorted(headings.items()):
        if k in coded:
            continue
        end = min(e for e in ends if e > i)
        keys = [c for c in cells[i + 1 : end] if c.cell_type == "markdown" and "answer-key" in _tags(c)]
        if len(keys) != 1:
            problems.append(f"Exercise {chapter}.{k} has no code check, so it needs one answer-key cell; found {len(keys)}")
        elif ":class: dropdown" not in keys[0].source:
            problems.append(f"Exercise {chapter}.{k}: its answer key is not a dropdown admonition (it would show unfolded)")
    return problems


CITE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]+)`")


# A committed file is found by utils.files.repo_file (a checkout, the book and Colab alike), never by
# a notebook's own search: `../results` breaks when the notebook runs from elsewhere (Colab's /content).
PARENT_RESULTS = re.compile(r"\.\.[/\\]+results\b")


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def directory_search_problems(nb) -> list[str]:
    """Cells that look for repository files themselves: ``../results``, ``os.walk``, walks up ``.parent``."""
    problems = []
    for index, cell in enumerate(nb.cells):
        where = f"cell {index} ({cell.get('id')})"
        if PARENT_RESULTS.search(cell.source):
            problems.append(f"{where} refers to ../results")
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(_code_without_magics(cell.source))
        except SyntaxError:
            continue  # import_problems reports it
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _dotted(node.func) in ("os.walk", "walk"):
                problems.append(f"{where}, line {node.lineno}: walks folders with os.walk")
            elif isinstance(node, ast.Attribute) and node.attr == "parents":
                problems.append(f"{where}, line {node.lineno}: searches upwards through .parents")
            elif isinstance(node, ast.While) and any(
                isinstance(inner, ast.Assign) and isinstance(inner.value, ast.Attribute) and inner.value.attr == "parent"
                for inner in ast.walk(node)
            ):
                problems.append(f"{where}, line {node.lineno}: climbs folders with a .parent loop")
            elif (
                isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.left, ast.Attribute)
                and node.left.attr == "parent" and isinstance(node.right, ast.Constant) and node.right.value == "results"
            ):  # fmt: skip
                problems.append(f"{where}, line {node.lineno}: builds <folder>.parent / 'results' itself")
    return problems


def bib_keys() -> set[str]:
    return set(re.findall(r"@\w+\s*\{\s*([^,\s]+)\s*,", (BOOK / "references.bib").read_text(encoding="utf-8")))


def page_texts(path: Path) -> list[str]:
    """Markdown text of a page (for a notebook: its markdown cells)."""
    if path.suffix == ".md":
        return [path.read_text(encoding="utf-8")]
    nb = nbformat.read(path, as_version=4)
    return [cell.source for cell in nb.cells if cell.cell_type == "markdown"]


# ----------------------------------------------------------------------------- the table of contents


def test_every_toc_entry_exists():
    missing = [entry for entry in toc_entries() if not _resolve(entry)]
    assert not missing, f"_toc.yml lists pages that do not exist (as .ipynb or .md): {missing}"
    ambiguous = [entry for entry in toc_entries() if len(_resolve(entry)) > 1]
    assert not ambiguous, f"these toc entries match both a .ipynb and a .md file: {ambiguous}"


def test_every_page_is_in_the_toc():
    listed = {p.resolve() for entry in toc_entries() for p in _resolve(entry)}
    unlisted = [p.name for p in NOTEBOOKS + MARKDOWN_PAGES if p.resolve() not in listed]
    assert not unlisted, f"pages under book/ that _toc.yml does not list (they would not be built): {unlisted}"


def test_toc_lists_chapters_in_order():
    numbers = [int(Path(e).name[:2]) for e in toc_entries() if re.match(r"^\d\d_", Path(e).name)]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), f"chapter numbers in _toc.yml: {numbers}"


def test_makefile_installs_the_d2l_the_setup_cell_installs():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert f"d2l=={setup_cells.D2L_VERSION}" in makefile, (
        f"the Colab setup cell installs d2l=={setup_cells.D2L_VERSION} but the Makefile does not: "
        "update D2L_VERSION in scripts/sync_setup_cells.py and run it"
    )


# ----------------------------------------------------------------------------- every notebook


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_format(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)  # raises on an invalid notebook (ids included)
    assert (nb.nbformat, nb.nbformat_minor) >= (4, 5), f"nbformat {nb.nbformat}.{nb.nbformat_minor}; expected 4.5 with cell ids"
    assert all(cell.get("id") for cell in nb.cells), "every cell needs an id"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", "the kernelspec must be python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_code_is_formatted_to_88_characters(path):
    """Every code cell as scripts/format_notebooks.py leaves it: no line over 88, no fmt: skip."""
    nb = nbformat.read(path, as_version=4)
    problems = []
    for cell in nb.cells:
        if cell.cell_type not in ("code", "raw"):
            continue
        where = f"cell {cell.get('id')}"
        problems += [f"{where}: {len(line)} characters" for line in format_notebooks.long_lines(cell.source)]
        problems += [f"{where}: a '# fmt: skip' marker" for line in cell.source.splitlines() if "fmt: skip" in line]
        if cell.cell_type == "code" and format_notebooks.format_source(cell.source) != cell.source:
            problems.append(f"{where}: not formatted (run python scripts/format_notebooks.py)")
    assert not problems, "\n".join(problems)


def test_the_formatter_shortens_code_strings_and_comments():
    long_comment = "# " + " ".join(["word"] * 30)
    source = f"{long_comment}\nx = dict(a=1,b=2)\nassert x, 'a message that goes on and on' + ' and on' * 3 + ' until it is far too long for one line'"
    formatted = format_notebooks.format_source(source)
    assert not format_notebooks.long_lines(formatted), formatted
    assert formatted.splitlines()[0].startswith("# word") and "x = dict(a=1, b=2)" in formatted
    namespace = {}
    exec(formatted, namespace)  # the same program
    assert namespace["x"] == {"a": 1, "b": 2}
    assert format_notebooks.format_source("%pip install x") == "%pip install x", "magics are left alone"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_first_cell_is_the_current_colab_setup_cell(path):
    nb = nbformat.read(path, as_version=4)
    problem = setup_cells.setup_cell_problem(nb, setup_cells.expected_setup_source())
    assert problem is None, f"{path.name}: {problem}. Run `python scripts/sync_setup_cells.py`."


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_import_cell_prints_the_mode_and_seeds(path):
    problem = import_cell_problem(nbformat.read(path, as_version=4))
    assert problem is None, f"{path.name}: {problem}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_page_starts_with_its_title(path):
    problem = title_problem(nbformat.read(path, as_version=4))
    assert problem is None, f"{path.name}: {problem}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_no_committed_outputs(path):
    problems = output_problems(nbformat.read(path, as_version=4))
    assert not problems, f"{path.name} was committed with outputs (clear them):\n" + "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_no_star_or_repeated_imports(path):
    problems = import_problems(nbformat.read(path, as_version=4))
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS + MARKDOWN_PAGES, ids=_ids(NOTEBOOKS + MARKDOWN_PAGES))
def test_citations_use_known_keys(path):
    keys = bib_keys()
    cited = {key.strip() for text in page_texts(path) for group in CITE.findall(text) for key in group.split(",")}
    unknown = sorted(cited - keys)
    assert not unknown, f"{path.name} cites keys missing from book/references.bib: {unknown}"


@pytest.mark.parametrize("path", NOTEBOOKS + MARKDOWN_PAGES, ids=_ids(NOTEBOOKS + MARKDOWN_PAGES))
def test_only_the_references_page_has_a_bibliography(path):
    has_bibliography = any("{bibliography}" in text for text in page_texts(path))
    assert has_bibliography == (path.name == "references.md"), (
        "only book/references.md may hold a {bibliography} directive"
        if has_bibliography
        else "book/references.md must hold the book's {bibliography}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_quoted_setup_cells_are_current(path):
    """A notebook that shows the Colab setup cell to readers (the preface does) shows the current one."""
    stale = setup_cells.stale_quotes(nbformat.read(path, as_version=4), setup_cells.expected_setup_source())
    assert not stale, f"{path.name}: markdown cell(s) {stale} quote an outdated setup cell. Run `python scripts/sync_setup_cells.py`."


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_files_are_found_by_the_locator_not_by_a_search(path):
    problems = directory_search_problems(nbformat.read(path, as_version=4))
    assert not problems, (
        f"{path.name} looks for repository files itself, which fails in Colab; use "
        "utils.files.repo_file('results/...') or repo_files('results/*.json'):\n" + "\n".join(problems)
    )


# ----------------------------------------------------------------------------- chapters


@pytest.mark.parametrize("path", CHAPTERS, ids=_ids(CHAPTERS))
def test_chapter_exercises_follow_the_convention(path):
    problems = exercise_problems(nbformat.read(path, as_version=4), int(path.name[:2]))
    assert not problems, f"{path.name}:\n- " + "\n- ".join(problems)


# ----------------------------------------------------------------------------- the checks can fail


def _good_chapter(chapter: int = 7, exercises: int = 3, code_exercises: int = 2):
    """A small notebook that follows every convention."""
    setup = new_code_cell(setup_cells.expected_setup_source(), id="colab-setup")
    setup.metadata["tags"] = list(setup_cells.SETUP_TAGS)
    cells = [
        setup,
        new_markdown_cell("# A chapter", id="title"),
        new_code_cell("from utils import config, train\n\ntrain.set_seed(0)\nconfig.banner()", id="imports"),
        new_markdown_cell("## Exercises", id="exercises"),
    ]
    for k in range(1, exercises + 1):
        cells.append(new_markdown_cell(f"### Exercise {chapter}.{k}: a task\n\nDefine `answer_{k}`.", id=f"task-{k}"))
        if k <= code_exercises:
            solution = new_code_cell(f"# Task: define answer_{k}, the number 42.\nanswer_{k} = 42", id=f"solution-{k}")
            solution.metadata["tags"] = ["solution", f"ex-{chapter}-{k}", "hide-input"]
            check = new_code_cell(f"assert answer_{k} == 42, 'answer_{k} should be 42'", id=f"check-{k}")
            check.metadata["tags"] = ["check", f"ex-{chapter}-{k}", "hide-cell"]
            cells += [solution, check]
        else:
            key = new_markdown_cell(f":::{{admonition}} Answer key\n:class: dropdown\n\n42.\n:::", id=f"key-{k}")
            key.metadata["tags"] = ["answer-key"]
            cells.append(key)
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _cell(nb, cell_id):
    return next(cell for cell in nb.cells if cell.get("id") == cell_id)


def test_checks_accept_a_conforming_chapter():
    nb = _good_chapter()
    nbformat.validate(nb)
    assert exercise_problems(nb, 7) == []
    assert setup_cells.setup_cell_problem(nb, setup_cells.expected_setup_source()) is None
    assert import_cell_problem(nb) is None
    assert output_problems(nb) == [] and import_problems(nb) == []


def _broken(change):
    nb = copy.deepcopy(_good_chapter())
    change(nb)
    return nb


BROKEN_EXERCISES = {
    "no exercises section": (lambda nb: _cell(nb, "exercises").update(source="## Practice"), "'## Exercises'"),
    "too few exercises": (lambda nb: nb.cells.remove(_cell(nb, "task-3")), "expected 3 to 5"),
    "one code exercise": (
        lambda nb: [nb.cells.remove(_cell(nb, i)) for i in ("solution-2", "check-2")],
        "expected at least 2",
    ),
    "missing check": (lambda nb: nb.cells.remove(_cell(nb, "check-1")), "0 check cells"),
    "two solutions": (lambda nb: nb.cells.insert(6, copy.deepcopy(_cell(nb, "solution-1"))), "2 solution cells"),
    "not folded": (lambda nb: _cell(nb, "solution-1").metadata["tags"].remove("hide-input"), "hide-input"),
    "check not folded": (lambda nb: _cell(nb, "check-1").metadata["tags"].remove("hide-cell"), "hide-cell"),
    "discussion without answer key": (lambda nb: nb.cells.remove(_cell(nb, "key-3")), "answer-key"),
    "answer key not folded": (
        lambda nb: _cell(nb, "key-3").update(source="Answer: 42."),
        "dropdown",
    ),
    "check before solution": (
        lambda nb: nb.cells.insert(nb.cells.index(_cell(nb, "solution-1")), nb.cells.pop(nb.cells.index(_cell(nb, "check-1")))),
        "must come after",
    ),
    "check without assert": (
        lambda nb: _cell(nb, "check-1").update(source="# assert nothing\nprint(answer_1 == 42)"),
        "no assert",
    ),
    "solution without task comment": (lambda nb: _cell(nb, "solution-1").update(source="answer_1 = 42"), "comment"),
    "wrong chapter in tag": (
        lambda nb: _cell(nb, "check-2").metadata.update(tags=["check", "ex-8-2"]),
        "belongs to chapter 8",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_EXERCISES))
def test_exercise_check_rejects(case):
    change, expected = BROKEN_EXERCISES[case]
    problems = exercise_problems(_broken(change), 7)
    assert any(expected in problem for problem in problems), f"{case}: expected a problem mentioning {expected!r}, got {problems}"


def test_setup_cell_check_rejects_stale_missing_and_moved_cells():
    expected = setup_cells.expected_setup_source()
    assert "--branch main " in expected, "the setup cell clones the configured branch"
    stale = _broken(lambda nb: _cell(nb, "colab-setup").update(source=expected.replace("--branch main ", "--branch master ")))
    assert "stale" in setup_cells.setup_cell_problem(stale, expected)
    missing = _broken(lambda nb: nb.cells.pop(0))
    assert "not the Colab setup cell" in setup_cells.setup_cell_problem(missing, expected)
    moved = _broken(lambda nb: nb.cells.append(nb.cells.pop(0)))
    assert "not the first cell" in setup_cells.setup_cell_problem(moved, expected)
    untagged = _broken(lambda nb: _cell(nb, "colab-setup").metadata.update(tags=["colab-setup"]))
    assert "remove-cell" in setup_cells.setup_cell_problem(untagged, expected)
    # and the script repairs each of them
    for nb in (stale, missing, moved, untagged):
        assert setup_cells.setup_cell_problem(setup_cells.with_setup_cell(nb, expected), expected) is None
    quoting = _broken(lambda nb: nb.cells.append(new_markdown_cell(f"```python\n{expected}\n```", id="quote")))
    assert setup_cells.stale_quotes(quoting, expected) == []
    quoting.cells[-1].source = quoting.cells[-1].source.replace("--branch main ", "--branch old ")
    assert setup_cells.stale_quotes(quoting, expected) == [len(quoting.cells) - 1]
    assert setup_cells.stale_quotes(setup_cells.with_current_quotes(quoting, expected), expected) == []


@pytest.mark.parametrize(
    "source",
    [
        'RESULTS = Path("../results")',
        "for folder in [Path.cwd(), *Path.cwd().parents]:\n    pass",
        "for top, dirs, names in os.walk('.'):\n    pass",
        "folder = Path.cwd()\nwhile not (folder / 'results').is_dir():\n    folder = folder.parent",
        "RESULTS = Path.cwd().parent / 'results'",
    ],
)
def test_directory_search_check_rejects(source):
    nb = _broken(lambda nb: nb.cells.append(new_code_cell(source, id="search")))
    assert directory_search_problems(nb), f"not flagged: {source!r}"
    assert directory_search_problems(_good_chapter()) == []
    located = _broken(lambda nb: nb.cells.append(new_code_cell('files.repo_file("results/x.json").parent', id="ok")))
    assert directory_search_problems(located) == []


def test_output_and_import_checks_reject():
    executed = _broken(lambda nb: _cell(nb, "imports").update(execution_count=3))
    assert output_problems(executed)
    with_output = _broken(
        lambda nb: _cell(nb, "imports").outputs.append(nbformat.v4.new_output("stream", name="stdout", text="hi"))
    )
    assert output_problems(with_output)
    star = _broken(lambda nb: nb.cells.append(new_code_cell("from torch import *", id="star")))
    assert any("star import" in p for p in import_problems(star))
    repeated = _broken(lambda nb: nb.cells.append(new_code_cell("from utils import config", id="again")))
    assert any("repeats an import" in p for p in import_problems(repeated))
    unseeded = _broken(lambda nb: _cell(nb, "imports").update(source="from utils import config\nconfig.banner()"))
    assert "train.set_seed(0)" in import_cell_problem(unseeded)
    no_banner = _broken(lambda nb: _cell(nb, "imports").update(source="from utils import train\ntrain.set_seed(0)"))
    assert "config.banner()" in import_cell_problem(no_banner)
    assert title_problem(_good_chapter()) is None
    code_first = _broken(lambda nb: nb.cells.insert(1, nb.cells.pop(2)))
    assert "not the '# Title'" in title_problem(code_first)
