#!/usr/bin/env python3
"""What a learner sees of each page of the book: visible prose words, code lines and checks.

    python scripts/page_counts.py                    # a table for every page in _toc.yml
    python scripts/page_counts.py book/02_*.ipynb    # some pages only
    python scripts/page_counts.py --json             # the same numbers as JSON

``count_page(path)`` (and ``count_notebook(nb)`` for a notebook in memory) does the counting;
``tests/test_page_budget.py`` holds the limits with it.

**Visible** means what the *public* edition of the book (``make book``) shows before a reader
unfolds anything, as Jupyter Book 1.x (myst-nb 1.4) renders it:

- A cell tagged ``remove-cell`` is not rendered. In the public edition a ``solution`` cell and an
  ``answer-key`` cell are left out too (``scripts/book_edition.py``). Raw cells count nothing.
- A code cell's *source* is visible unless the cell is tagged ``remove-input`` (removed),
  ``hide-input`` or ``hide-cell`` (folded behind a "Show code" button). Its *output* is visible
  unless it is tagged ``remove-output``, ``hide-output`` or ``hide-cell``.
- A markdown cell is visible unless tagged ``remove-cell``: myst-nb applies ``hide-*`` tags to code
  cells only. Inside it, a block is folded when it is a directive with a ``dropdown`` or ``toggle``
  class (``:::{admonition} Going further`` / ``:class: dropdown``), a ``{dropdown}`` directive
  (sphinx-design), a ``{toggle}`` directive (sphinx-togglebutton) or an HTML ``<details>`` block;
  everything nested inside a folded block is folded. A ``.md`` page is one markdown cell.

What is counted, over the visible parts only:

- ``words``: the prose of markdown (headings, paragraphs, lists, tables, figure captions,
  admonitions), without code blocks, math (``$...$``, ``$$...$$``, ``{math}``), directive options,
  the targets of roles (``{cite}`key```), link addresses and HTML tags. Inline code counts as words.
  A word is a whitespace-separated token with a letter or a digit in it.
- ``code_lines``: non-blank lines of visible code-cell sources, of code blocks in visible prose,
  and of the listings a visible output shows: a ``utils.plot.show_source`` or ``show_signature``
  call is replayed, with its display captured, and the lines of the code blocks it shows counted.
- ``assert_only``: visible code cells whose every statement is an ``assert`` (or a ``with``/``for``/
  ``if``/``try`` block of nothing else): a check that should fold under the result it checks.
- ``plumbing``: visible code-cell lines with quick/full/dry plumbing: ``config.pick(``, ``pick(``,
  ``is_dry_run(`` or the name ``dry``/``DRY``.
- ``asserts``: assert statements in visible code (information; no limit).
- ``listing_lines``: the part of ``code_lines`` that comes from those listings, and
  ``unresolved``: listing calls that could not be replayed (their listing is not counted).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

import nbformat  # noqa: E402

REMOVED_CELL_TAGS = {"remove-cell", "remove_cell", "solution", "answer-key"}
HIDDEN_SOURCE_TAGS = {"remove-input", "remove_input", "hide-input", "hide-cell"}
HIDDEN_OUTPUT_TAGS = {"remove-output", "remove_output", "hide-output", "hide-cell"}
FOLDING_CLASSES = {"dropdown", "toggle"}
FOLDING_DIRECTIVES = {"dropdown", "toggle"}
CODE_DIRECTIVES = {"code", "code-block", "code-cell", "sourcecode", "literalinclude"}
SKIPPED_DIRECTIVES = {"math", "bibliography", "raw", "tableofcontents", "eval-rst"}
LISTING_FUNCTIONS = {"show_source", "show_signature"}  # utils.plot's listings
PLUMBING = re.compile(r"\bconfig\.pick\(|(?<![\w.])pick\(|\bis_dry_run\(|\bdry\b|\bDRY\b")

_FENCE_OPEN = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,}|:{3,})\s*(?P<info>.*?)\s*$")
_DIRECTIVE = re.compile(r"^\{(?P<name>[\w:.-]+)\}\s*(?P<argument>.*)$")
_OPTION = re.compile(r"^\s*:(?P<key>[\w-]+):\s*(?P<value>.*)$")
_DETAILS = re.compile(r"<details\b.*?</details\s*>", re.DOTALL | re.IGNORECASE)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_DISPLAY_MATH = re.compile(r"\$\$.*?\$\$", re.DOTALL)
_INLINE_MATH = re.compile(r"(?<![\\$])\$[^$\n]+?\$")
_ROLE = re.compile(r"\{[\w:.-]+\}`[^`]*`")
_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_TAG = re.compile(r"<[^>]+>")
_URL = re.compile(r"https?://\S+")
_WORD = re.compile(r"[A-Za-z0-9]")


@dataclass
class PageCounts:
    """The visible parts of one page (see the module docstring for what each number means)."""

    page: str
    words: int = 0
    code_lines: int = 0
    assert_only: int = 0
    plumbing: int = 0
    asserts: int = 0
    listing_lines: int = 0
    unresolved: int = 0
    assert_only_cells: list[str] = field(default_factory=list)  # cell ids
    plumbing_lines: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------- prose


def _words(text: str) -> int:
    return sum(1 for token in text.split() if _WORD.search(token))


def _prose_words(text: str) -> int:
    """Words of plain prose (no fences left in ``text``)."""
    text = _COMMENT.sub(" ", text)
    text = _DISPLAY_MATH.sub(" ", text)
    text = _INLINE_MATH.sub(" ", text)
    text = _ROLE.sub(" ", text)
    text = _IMAGE.sub(" ", text)
    text = _LINK.sub(r"\1", text)
    text = _URL.sub(" ", text)
    text = _TAG.sub(" ", text)
    return _words(text)


def _code_lines(lines: list[str]) -> int:
    return sum(1 for line in lines if line.strip())


def markdown_counts(source: str, folded: bool = False) -> tuple[int, int]:
    """(visible prose words, visible code-block lines) of MyST markdown ``source``.

    ``folded`` marks text inside a folded block: it counts nothing, nested blocks included."""
    if folded:
        return 0, 0
    source = _DETAILS.sub(" ", source)
    lines = source.splitlines()
    words = code = 0
    prose: list[str] = []
    i = 0
    while i < len(lines):
        match = _FENCE_OPEN.match(lines[i])
        if not match:
            prose.append(lines[i])
            i += 1
            continue
        fence, info = match.group("fence"), match.group("info")
        if fence[0] == "`" and "`" in info:  # an inline code span, not a fence
            prose.append(lines[i])
            i += 1
            continue
        end = i + 1
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        body = lines[i + 1 : end]
        words += _prose_words("\n".join(prose))
        prose = []
        w, c = _fenced_counts(fence, info, body)
        words, code = words + w, code + c
        i = end + 1
    words += _prose_words("\n".join(prose))
    return words, code


def _fenced_counts(fence: str, info: str, body: list[str]) -> tuple[int, int]:
    directive = _DIRECTIVE.match(info)
    if not directive:
        if fence[0] == ":":  # a colon fence without a directive is not a fence
            return markdown_counts("\n".join(body))
        return 0, _code_lines(body)  # a code block (```python)
    name = directive.group("name").split(":")[-1]
    options: dict[str, str] = {}
    while body and _OPTION.match(body[0]):
        option = _OPTION.match(body[0])
        options[option.group("key")] = option.group("value")
        body = body[1:]
    if name in CODE_DIRECTIVES:
        return 0, _code_lines(body)
    if name in SKIPPED_DIRECTIVES:
        return 0, 0
    classes = set(options.get("class", "").split())
    folded = name in FOLDING_DIRECTIVES or bool(classes & FOLDING_CLASSES)
    if folded:
        return 0, 0
    words, code = markdown_counts("\n".join(body))
    return words + _prose_words(directive.group("argument")), code  # a title counts


# ------------------------------------------------------------------------------- code


def _parse(source: str) -> ast.Module | None:
    # IPython magics and shell escapes are not Python: blank them out before parsing.
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def _only_checks(statements: list[ast.stmt]) -> bool:
    for node in statements:
        if isinstance(node, (ast.Assert, ast.Pass)):
            continue
        if isinstance(node, (ast.With, ast.For, ast.While, ast.If)):
            if _only_checks(node.body) and _only_checks(node.orelse if hasattr(node, "orelse") else []):
                continue
        if isinstance(node, ast.Try):
            if _only_checks(node.body) and all(_only_checks(h.body) for h in node.handlers):
                continue
        return False
    return True


def is_assert_only(source: str) -> bool:
    """Whether a code cell holds asserts and nothing else (see the module docstring)."""
    tree = _parse(source)
    if tree is None or not tree.body:
        return False
    return any(isinstance(node, ast.Assert) for node in ast.walk(tree)) and _only_checks(tree.body)


def _assert_count(source: str) -> int:
    tree = _parse(source)
    return 0 if tree is None else sum(isinstance(node, ast.Assert) for node in ast.walk(tree))


def _utils_namespace(sources: list[str]) -> dict:
    """The names a notebook imports from ``utils`` (its other imports are not needed to resolve
    a listing, and are slow)."""
    namespace: dict = {}
    for source in sources:
        tree = _parse(source)
        for node in tree.body if tree else []:
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "utils":
                pass
            elif isinstance(node, ast.Import) and all(a.name.split(".")[0] == "utils" for a in node.names):
                pass
            else:
                continue
            with contextlib.suppress(Exception):
                exec(compile(ast.Module(body=[node], type_ignores=[]), "<imports>", "exec"), namespace)
    return namespace


def _listing_calls(source: str) -> list[ast.Call]:
    tree = _parse(source)
    calls = []
    for node in ast.walk(tree) if tree else []:
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in LISTING_FUNCTIONS:
                calls.append(node)
    return calls


def _listing_lines(call: ast.Call, namespace: dict) -> int | None:
    """Code lines the ``utils.plot`` listing call displays, or None when it cannot be replayed."""
    import IPython.display

    try:
        function = eval(compile(ast.Expression(call.func), "<listing>", "eval"), namespace)
    except Exception:
        return None
    if getattr(function, "__module__", "") != "utils.plot":
        return None
    shown: list = []
    original = IPython.display.display
    IPython.display.display = lambda *objects, **kwargs: shown.extend(objects)
    try:
        eval(compile(ast.Expression(call), "<listing>", "eval"), namespace)
    except Exception:
        return None
    finally:
        IPython.display.display = original
    lines = 0
    for obj in shown:
        text = getattr(obj, "data", None)
        if isinstance(text, str):
            lines += markdown_counts(text)[1]
    return lines


# ------------------------------------------------------------------------------- pages


def _tags(cell) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def count_notebook(nb, page: str = "<notebook>") -> PageCounts:
    """The visible counts of a notebook (an nbformat node), by the rule of the module docstring."""
    counts = PageCounts(page)
    namespace = None
    for cell in nb.cells:
        tags = _tags(cell)
        if tags & REMOVED_CELL_TAGS or not cell.source.strip():
            continue
        if cell.cell_type == "markdown":
            words, code = markdown_counts(cell.source)
            counts.words += words
            counts.code_lines += code
            continue
        if cell.cell_type != "code":
            continue
        if not tags & HIDDEN_SOURCE_TAGS:
            lines = cell.source.splitlines()
            counts.code_lines += _code_lines(lines)
            counts.asserts += _assert_count(cell.source)
            if is_assert_only(cell.source):
                counts.assert_only += 1
                counts.assert_only_cells.append(str(cell.get("id", "?")))
            for line in lines:
                if PLUMBING.search(line.split("#")[0]):
                    counts.plumbing += 1
                    counts.plumbing_lines.append(line.strip())
        if not tags & HIDDEN_OUTPUT_TAGS:
            for call in _listing_calls(cell.source):
                if namespace is None:
                    namespace = _utils_namespace([c.source for c in nb.cells if c.cell_type == "code"])
                lines = _listing_lines(call, namespace)
                if lines is None:
                    counts.unresolved += 1
                else:
                    counts.code_lines += lines
                    counts.listing_lines += lines
    return counts


def count_page(path: Path) -> PageCounts:
    """The visible counts of a page of the book: a notebook, or a markdown page."""
    path = Path(path)
    try:
        page = str(path.resolve().relative_to(ROOT))
    except ValueError:
        page = str(path)
    if path.suffix == ".ipynb":
        return count_notebook(nbformat.read(path, as_version=4), page)
    text = path.read_text(encoding="utf-8")
    if text.startswith("---\n"):  # front matter is not shown
        end = text.find("\n---", 4)
        text = text[end + 4 :] if end != -1 else text
    counts = PageCounts(page)
    counts.words, counts.code_lines = markdown_counts(text)
    return counts


def toc_pages() -> list[Path]:
    """Every page _toc.yml lists, in book order."""
    from scripts import build_book

    pages = []
    for entry in build_book.toc_entries():
        path = ROOT / entry
        candidates = [path] if path.suffix else [path.with_suffix(".ipynb"), path.with_suffix(".md")]
        pages += [p for p in candidates if p.exists()][:1]
    return pages


COLUMNS = ("words", "code_lines", "assert_only", "plumbing", "asserts", "listing_lines")


def table(rows: list[PageCounts]) -> str:
    width = max([len(r.page) for r in rows] + [4])
    header = f"{'page':<{width}}  " + "  ".join(f"{c:>13}" for c in COLUMNS)
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.page:<{width}}  " + "  ".join(f"{getattr(r, c):>13}" for c in COLUMNS))
        if r.unresolved:
            lines.append(f"{'':<{width}}  ({r.unresolved} listing call(s) not replayed, not counted)")
    total = {c: sum(getattr(r, c) for r in rows) for c in COLUMNS}
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{total[c]:>13}" for c in COLUMNS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", type=Path, help="pages to count (default: every page in _toc.yml)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--details", action="store_true", help="list the assert-only cells and plumbing lines")
    args = parser.parse_args(argv)
    rows = [count_page(p) for p in (args.pages or toc_pages())]
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    print(table(rows))
    if args.details:
        for r in rows:
            for cell in r.assert_only_cells:
                print(f"{r.page}: assert-only cell {cell}")
            for line in r.plumbing_lines:
                print(f"{r.page}: plumbing: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
