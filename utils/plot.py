"""Figures the chapters draw: training curves, gradient norms, image grids, confusion matrices.

Thin wrappers over matplotlib: the image grid is d2l's ``show_images`` and the
confusion matrix scikit-learn's ``ConfusionMatrixDisplay``.
Each function returns the matplotlib object it drew on, so a notebook can restyle it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["show_source", "show_signature", "plot_history", "compare_histories", "plot_grad_norms", "show_predictions", "plot_confusion"]


SOURCE_WIDTH = 88  # the book's code column (book/_static/course.css)


def show_source(obj) -> None:
    """Display the source of a ``utils`` function or class as a highlighted code block.

    Chapters show the code they teach this way instead of copying it, so the book and
    the package can never disagree. The package is written 120 columns wide; the listing is
    reflowed to the book's 88 by black where black is installed (the book build), and shown
    as written elsewhere (a bare Colab runtime): only the layout changes, never the code.
    """
    import inspect

    from IPython.display import Markdown, display

    display(Markdown(f"```python\n{reflowed_source(inspect.getsource(obj))}\n```"))


def show_signature(obj) -> None:
    """Display how to call a ``utils`` function or class, not how it works: its signature and docstring.

    For a helper that is not the chapter's lesson: a class shows its docstring, its fields and the
    signatures and docstrings of ``__init__`` and its public methods; every body becomes ``...``.
    """
    from IPython.display import Markdown, display

    display(Markdown(f"```python\n{reflowed_source(signature_source(obj))}\n```"))


def signature_source(obj, width: int = SOURCE_WIDTH) -> str:
    """The source of ``obj`` (a function or class) with every function body replaced by ``...``;
    the docstrings' paragraphs are rewrapped to ``width`` columns (lists and indented lines as written)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))

    def docstring(body):
        first = body[0] if body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            first.value.value = _rewrapped_docstring(first.value.value, first.col_offset, width)
            return [first]
        return []

    def stub(node):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.body = docstring(node.body) + [ast.Expr(ast.Constant(...))]
        elif isinstance(node, ast.ClassDef):
            kept = [
                stub(child)
                for child in node.body[len(docstring(node.body)) :]
                if isinstance(child, ast.AnnAssign)
                or (
                    isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and (child.name == "__init__" or not child.name.startswith("_"))
                )
            ]
            node.body = docstring(node.body) + (kept or [ast.Expr(ast.Constant(...))])
        return node

    tree.body = [stub(node) for node in tree.body]
    return ast.unparse(tree)


def _rewrapped_docstring(text: str, indent: int, width: int) -> str:
    import inspect
    import textwrap

    lines, paragraph = [], []

    def flush():
        if paragraph:
            lines.extend(textwrap.wrap(" ".join(paragraph), width - indent - 3 if not lines else width - indent))
            paragraph.clear()

    for line in inspect.cleandoc(text).splitlines():
        if not line.strip() or line.startswith((" ", "-", "*", ">>>")) or line.endswith("::"):
            flush()
            lines.append(line)
        else:
            paragraph.append(line)
    flush()
    pad = " " * indent
    body = "\n".join(lines[:1] + [pad + line if line else "" for line in lines[1:]])
    return body + ("\n" + pad if len(lines) > 1 else "")


def reflowed_source(source: str, width: int = SOURCE_WIDTH) -> str:
    """``source`` (dedented) laid out by black within ``width`` columns, or as written without black."""
    import textwrap

    source = textwrap.dedent(source).rstrip()
    try:
        import black
    except ImportError:
        return source
    try:
        mode = black.Mode(line_length=width, preview=True, enabled_features={black.Preview.string_processing})
        source = black.format_str(source, mode=mode).rstrip()
    except black.InvalidInput:  # pragma: no cover - inspect returned something black cannot parse
        return source
    return _wrap_prose(source, width)


def _wrap_prose(source: str, width: int) -> str:
    """Wrap what black leaves long: docstring lines and comments (a trailing one moves above its line)."""
    import ast
    import io
    import textwrap
    import tokenize

    docstring_lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                docstring_lines.update(range(value.lineno, value.end_lineno + 1))
    comments = {
        token.start[0]: token.start[1]
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }
    out = []
    for number, line in enumerate(source.splitlines(), start=1):
        if len(line) <= width:
            out.append(line)
            continue
        indent = line[: len(line) - len(line.lstrip())]
        if number in comments:
            code, comment = line[: comments[number]].rstrip(), line[comments[number] :].lstrip("# ")
            wrapped = textwrap.wrap(comment, width - len(indent) - 2) or [""]
            out += [f"{indent}# {part}" for part in wrapped]
            if code.strip():
                out.append(code)
        elif number in docstring_lines:
            out += textwrap.wrap(line.strip(), width, initial_indent=indent, subsequent_indent=indent)
        else:
            out.append(line)
    return "\n".join(out)


def _curves(ax, x, series: Mapping[str, Sequence[float]], xlabel: str, ylabel: str, yscale: str = "linear"):
    for label, ys in series.items():
        ax.plot(x[: len(ys)], ys, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_yscale(yscale)
    ax.grid(True, alpha=0.3)
    ax.legend()


def plot_history(history: Mapping[str, Sequence[float]], title: str | None = None):
    """Loss and accuracy per epoch, training against every evaluated set (side by side).

    The figure the seed posts draw with their ``plot_acc_loss``.
    """
    epochs = history["epoch"]
    names = [k[: -len("_loss")] for k in history if k.endswith("_loss")]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
    _curves(ax_loss, epochs, {n: history[f"{n}_loss"] for n in names}, "epoch", "cross-entropy loss")
    _curves(ax_acc, epochs, {n: history[f"{n}_acc"] for n in names}, "epoch", "accuracy")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def compare_histories(
    histories: Mapping[str, Mapping[str, Sequence[float]]],
    metric: str = "train_loss",
    ax=None,
    error: bool = False,
):
    """One metric for several runs on one axis, e.g. plain-20 vs plain-56 training loss.

    With ``error=True`` an accuracy is drawn as an error rate (1 - accuracy) in %, as in
    the paper's figures.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    for label, h in histories.items():
        values = np.asarray(h[metric], dtype=float)
        ax.plot(h["epoch"], 100 * (1 - values) if error else values, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric.replace('_acc', '')} error (%)" if error else metric.replace("_", " "))
    ax.grid(True, alpha=0.3)
    ax.legend()
    return ax


def plot_grad_norms(norms: Mapping[str, Mapping[str, float]], ax=None):
    """Gradient norm per layer (input on the left) for one or more models, log scale."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    for label, per_layer in norms.items():
        ax.plot(range(1, len(per_layer) + 1), list(per_layer.values()), marker=".", label=label)
    ax.set_xlabel("layer (input → output)")
    ax.set_ylabel("gradient norm")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return ax


def _displayable(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, C, H, W) or (N, H, W, C) images, any range, as (N, H, W[, C]) floats in [0, 1]."""
    x = torch.as_tensor(np.asarray(images)).float()
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
        x = x.permute(0, 2, 3, 1)
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    x = (x - lo) / (hi - lo).clamp_min(1e-8)
    return x[..., 0].numpy() if x.shape[-1] == 1 else x.numpy()


def show_predictions(images, labels, preds, classes: Sequence[str], num_cols: int = 8, scale: float = 1.3):
    """A grid of images titled 'true → predicted' (uint8 or normalised tensors both work)."""
    from d2l import torch as d2l

    imgs = _displayable(images)
    titles = [f"{classes[t]}\n→ {classes[p]}" for t, p in zip(np.asarray(labels), np.asarray(preds))]
    num_rows = -(-len(imgs) // num_cols)
    grayscale = imgs.ndim == 3
    axes = d2l.show_images(list(imgs), num_rows, num_cols, titles=titles, scale=scale)
    if grayscale:  # d2l draws 2-D arrays with matplotlib's default colour map
        for ax in np.ravel(axes)[: len(imgs)]:
            for image in ax.get_images():
                image.set_cmap("gray")
    for ax in np.ravel(axes)[len(imgs) :]:
        ax.set_visible(False)
    for ax in np.ravel(axes)[: len(imgs)]:
        ax.title.set_fontsize(8)
    plt.gcf().tight_layout()  # two-line titles would overlap the row above
    return axes


def plot_confusion(labels, preds, classes: Sequence[str], normalize: str | None = "true", ax=None):
    """Confusion matrix (rows: true class, columns: predicted), normalised per true class."""
    from sklearn.metrics import ConfusionMatrixDisplay

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 6))
    display = ConfusionMatrixDisplay.from_predictions(
        np.asarray(labels),
        np.asarray(preds),
        labels=list(range(len(classes))),
        display_labels=list(classes),
        normalize=normalize,
        values_format=".2f" if normalize else "d",
        xticks_rotation=45,
        colorbar=False,
        ax=ax,
    )
    return display
