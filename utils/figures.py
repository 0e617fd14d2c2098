"""The book's diagrams: SVG files under ``book/figures/``, shown by a code cell.

A chapter shows a diagram with ``figures.show("residual-block")`` in a cell tagged
``remove-input``. The cell's output is the SVG itself, so the diagram appears in the rendered
book, in Jupyter and in Colab alike (Colab shows markdown images only from URLs, but it shows
a cell's output). The files are drawn by ``scripts/draw_figures.py``; this module only finds
and displays them.
"""

from __future__ import annotations

from pathlib import Path

from .files import repo_file

__all__ = ["FIGURES_DIR", "path", "show"]

FIGURES_DIR = "book/figures"


def path(name: str) -> Path:
    """The SVG file of the diagram ``name`` (e.g. ``"residual-block"``) in the repository."""
    if not name or "/" in name or name.endswith(".svg"):
        raise ValueError(f"name={name!r}; expected a diagram's name without folder or suffix, e.g. 'residual-block'")
    return repo_file(f"{FIGURES_DIR}/{name}.svg")


def show(name: str) -> None:
    """Display the diagram ``name`` as the output of the current cell.

    Returns None, so that a cell ending in ``figures.show(...)`` shows the diagram once.
    """
    from IPython.display import SVG, display

    display(SVG(filename=str(path(name))))
