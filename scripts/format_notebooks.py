#!/usr/bin/env python3
"""Format the code cells of the book's notebooks to at most 88 characters a line.

    python scripts/format_notebooks.py            # rewrite the notebooks under book/ in place
    python scripts/format_notebooks.py --check    # report cells that are not formatted; exit 1 if any

Each code cell goes through black (88 columns, with its string splitting, so long messages become
implicitly concatenated strings), and full-line comments longer than 88 characters are rewrapped
into several comment lines. Cells with IPython magics or shell escapes (the Colab setup cell) are
left alone: black cannot parse them, and scripts/sync_setup_cells.py writes that cell. Lines that
neither black nor the rewrapping can shorten (a long docstring line, a trailing comment) are
reported, for a person to reword; `tests/test_notebook_conventions.py` fails while any remain.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from pathlib import Path

import black

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

LINE_LENGTH = 88
MODE = black.Mode(line_length=LINE_LENGTH, preview=True, enabled_features={black.Preview.string_processing})
COMMENT = re.compile(r"^(\s*)#( |$)")


def _has_magics(source: str) -> bool:
    return any(line.lstrip().startswith(("%", "!")) for line in source.splitlines())


def _rewrap_comments(source: str) -> str:
    """Rewrap every run of full-line comments (same indentation) that has a line over 88 characters."""
    out: list[str] = []
    run: list[str] = []
    indent = ""

    def flush() -> None:
        if run and any(len(line) > LINE_LENGTH for line in run):
            text = " ".join(line.strip()[1:].strip() for line in run)
            prefix = indent + "# "
            out.extend(textwrap.wrap(text, LINE_LENGTH, initial_indent=prefix, subsequent_indent=prefix,
                                     break_long_words=False, break_on_hyphens=False))  # fmt: skip
        else:
            out.extend(run)
        run.clear()

    for line in source.split("\n"):
        match = COMMENT.match(line)
        if match and (not run or match.group(1) == indent):
            indent = match.group(1)
            run.append(line)
            continue
        flush()
        if match:
            indent = match.group(1)
            run.append(line)
        else:
            out.append(line)
    flush()
    return "\n".join(out)


def format_source(source: str) -> str:
    """The formatted source of one code cell (unchanged if it uses magics)."""
    if _has_magics(source) or not source.strip():
        return source
    formatted = black.format_str(source, mode=MODE)
    return black.format_str(_rewrap_comments(formatted), mode=MODE).rstrip("\n")


def long_lines(source: str) -> list[str]:
    return [line for line in source.splitlines() if len(line) > LINE_LENGTH]


def main(argv: list[str] | None = None) -> int:
    import json

    from scripts.build_book import toc_notebooks
    from utils.files import write_text

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if a cell would change")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook of the book")
    args = parser.parse_args(argv)
    problems = []
    for path in args.notebooks or toc_notebooks():
        nb = json.loads(path.read_text(encoding="utf-8"))  # as committed: keys keep their order
        changed = False
        for cell in nb["cells"]:
            if cell["cell_type"] != "code":
                continue
            source = "".join(cell["source"])
            formatted = format_source(source)
            if formatted != source:
                changed = True
                if args.check:
                    problems.append(f"{path.name}, cell {cell.get('id')}: not formatted")
                lines = formatted.split("\n")
                cell["source"] = [line + "\n" for line in lines[:-1]] + [lines[-1]]
            problems += [f"{path.name}, cell {cell.get('id')}: {len(line)} characters: {line.strip()[:60]}"
                         for line in long_lines(formatted)]  # fmt: skip
        if changed and not args.check:
            write_text(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
