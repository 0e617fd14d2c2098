"""Sphinx extension: the two editions of the book, public (the default) and instructor.

The **public** edition, what ``make book`` publishes, carries no solution source and no answer key:

- an answer-key cell (tag ``answer-key``, CONTRIBUTING.md) is taken out of the notebook when it is
  read (``notebook_tags.without_answer_keys``), before Sphinx sees a word of it;
- a solution cell (tag ``solution``) is still *executed*, since the check cell below it needs the
  names it defines, but its whole cell (source and outputs) is taken out of the page's document
  tree (``notebook_tags.is_solution`` on the cell's metadata, which myst-nb keeps on the cell's node);
- the page's downloadable source (``_sources/.../NN_name.ipynb``, the theme's download button) is the
  student copy of the chapter (``make_exercises.student_copy``: solutions replaced by stubs, no
  answer keys, no wrong answers), not the instructor's notebook.

The code cells are left exactly as they are (same source, same metadata), so both editions hash to
the same jupyter-cache entries and share one execution. The **instructor** edition
(``make instructor-book``) is the book as written: solutions folded, answer keys in dropdowns.

Configuration (``_config.yml``, ``sphinx.config``): ``course_edition: public`` or ``instructor``;
``scripts/build_book.py --edition`` sets it. The extension is loaded through ``sphinx.local_extensions``.
"""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # pragma: no cover (Sphinx imports it as `scripts.book_edition`)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nbformat  # noqa: E402

from scripts import notebook_tags as tags  # noqa: E402

EDITIONS = ("public", "instructor")
CONFIG_NAME = "course_edition"
READER = "scripts.book_edition.read_public_notebook"


class EditionError(ValueError):
    """A notebook or a setting that the public edition cannot honour."""


def check_edition(value: object) -> str:
    if value not in EDITIONS:
        raise EditionError(f"{CONFIG_NAME} is {value!r}; expected one of {', '.join(map(repr, EDITIONS))}")
    return value  # type: ignore[return-value]


def public_notebook(nb):
    """The notebook as the public edition reads it: without its answer keys (a new notebook).

    An answer key must be a markdown cell: a code cell tagged ``answer-key`` would run in the book and
    change what the cache holds, so it is refused rather than silently published or dropped."""
    for index, cell in enumerate(nb.cells):
        if tags.is_answer_key(cell) and cell.get("cell_type") != "markdown":
            raise EditionError(
                f"cell {index} (id {cell.get('id', '?')}) is tagged {tags.ANSWER_KEY_TAG!r} but is a "
                f"{cell.get('cell_type')} cell; an answer key must be a markdown cell (CONTRIBUTING.md, Exercises)"
            )
    return tags.without_answer_keys(nb)


def read_public_notebook(text: str):
    """myst-nb reader (``nb_custom_formats``) for ``.ipynb`` files in the public edition."""
    return public_notebook(nbformat.reads(text, as_version=4))


# ---------------------------------------------------------------------------------------------
# What must not reach a public page: used by scripts/build_book.py (it refuses to publish a public
# book that shows any of it) and by tests/test_book_html.py.
# ---------------------------------------------------------------------------------------------

_SCRIPT = re.compile(r"<(script|style)\b.*?</\1\s*>", re.DOTALL | re.IGNORECASE)
# Inline elements vanish without a trace (highlighted code is a span per token); others separate words.
_INLINE_TAG = re.compile(r"</?(?:span|a|em|strong|code|b|i|sub|sup|kbd|var|abbr)\b[^>]*>", re.IGNORECASE)
_TAG = re.compile(r"<[^>]+>")
# Markdown and MyST markup: a phrase is a run of plain words between any of these.
_MARKUP = re.compile(r"[*_`$\[\](){}<>|#\\]|:::|^\s*:\w+:.*$|\{\w+\}`[^`]*`", re.MULTILINE)
MIN_PHRASE_WORDS = 6  # a run of six plain words is the key's own sentence, not a common phrase
MIN_CODE_LINE = 20  # characters: `return x` may be anybody's line; a longer one is the solution's


def _normal(text: str) -> str:
    return " ".join(text.split())


def page_text(page_html: str) -> str:
    """The text a reader of an HTML page can see (or unfold), whitespace collapsed."""
    return _normal(html.unescape(_TAG.sub(" ", _INLINE_TAG.sub("", _SCRIPT.sub(" ", page_html)))))


def _other_text(nb, keep) -> str:
    return _normal("\n".join(cell.get("source", "") for cell in nb.cells if not keep(cell)))


def secret_passages(nb) -> list[tuple[str, str]]:
    """[(what, text)] that the public edition of this notebook must not show: each distinctive code
    line of a solution body (not its task comments), and each run of plain words of an answer key
    (``MIN_PHRASE_WORDS`` or more), leaving out what the notebook also says in its other cells."""
    secret = lambda cell: tags.is_solution(cell) or tags.is_answer_key(cell)  # noqa: E731
    elsewhere = _other_text(nb, secret)
    found = []
    for cell in nb.cells:
        if tags.is_solution(cell):
            task = len(tags.task_lines(cell.source))
            for line in cell.source.splitlines()[task:]:
                line = _normal(line)
                if len(line) >= MIN_CODE_LINE and not line.startswith("#") and line not in elsewhere:
                    found.append(("solution", line))
        elif tags.is_answer_key(cell):
            for run in _MARKUP.split(cell.source):
                words = run.split()
                if len(words) >= MIN_PHRASE_WORDS and _normal(run) not in elsewhere:
                    found.append(("answer key", _normal(run)))
    return found


def leaks(nb, page_html: str) -> list[tuple[str, str]]:
    """The secret passages of ``nb`` that its rendered page shows."""
    text = page_text(page_html)
    return [(what, passage) for what, passage in secret_passages(nb) if passage in text]


def _cell_dict(node) -> dict:
    return {"cell_type": "code", "metadata": node.get("cell_metadata") or {}}


def hidden_cell_nodes(doctree) -> list:
    """The code-cell nodes the public edition leaves out: solution cells (and any answer-key cell)."""
    from docutils import nodes

    found = []
    for node in doctree.findall(nodes.container):
        if node.get("nb_element") != "cell_code":
            continue
        cell = _cell_dict(node)
        if tags.is_solution(cell) or tags.is_answer_key(cell):
            found.append(node)
    return found


def _on_config_inited(app, config) -> None:
    edition = check_edition(config[CONFIG_NAME])
    if edition == "public":
        formats = dict(config.nb_custom_formats or {})
        formats[".ipynb"] = [READER, {}, False]
        config.nb_custom_formats = formats


def _on_doctree_read(app, doctree) -> None:
    if app.config[CONFIG_NAME] != "public":
        return
    for node in hidden_cell_nodes(doctree):
        node.parent.remove(node)


def student_sources(outdir: Path) -> list[Path]:
    """Replace every notebook under ``outdir/_sources`` with its student copy; returns those rewritten."""
    from scripts import make_exercises  # here: make_exercises imports nothing from Sphinx

    rewritten = []
    for path in sorted((Path(outdir) / "_sources").rglob("*.ipynb*")):
        if not path.is_file() or ".ipynb" not in path.name:
            continue
        nb = nbformat.read(str(path), as_version=4)
        chapter = path.name.split(".ipynb")[0]
        copy = make_exercises.student_copy(nb, chapter)
        temporary = path.with_name(f".{path.name}.tmp")
        nbformat.write(copy, str(temporary))
        temporary.replace(path)
        rewritten.append(path)
    return rewritten


def _on_build_finished(app, exception) -> None:
    if exception is None and app.config[CONFIG_NAME] == "public" and app.builder.format == "html":
        student_sources(Path(app.outdir))


def _on_html_page_context(app, pagename, templatename, context, doctree) -> None:
    # Every page says which edition it belongs to (tests/test_book_html.py reads it).
    context.setdefault("metatags", "")
    context["metatags"] += f'\n<meta name="course-edition" content="{app.config[CONFIG_NAME]}">'


def setup(app):
    app.add_config_value(CONFIG_NAME, "public", "env", types=[str])
    # Before myst-nb's own config-inited handler (priority 500) registers the custom formats.
    app.connect("config-inited", _on_config_inited, priority=400)
    app.connect("doctree-read", _on_doctree_read)
    app.connect("html-page-context", _on_html_page_context)
    app.connect("build-finished", _on_build_finished)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
