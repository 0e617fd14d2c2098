"""utils.plot.show_source: the listings of utils code fit the book's 88-column code cells."""

from __future__ import annotations

import ast
import inspect

from utils import plot, recipes, train


def test_listings_are_reflowed_to_the_column_without_changing_the_code():
    for obj in (train.fit, train.train_one_epoch, recipes.Recipe):
        source = inspect.getsource(obj)
        listing = plot.reflowed_source(source)
        assert max(len(line) for line in listing.splitlines()) <= plot.SOURCE_WIDTH, obj
        assert _code(listing) == _code(source), f"{obj}: the code itself changed"
    assert any(len(line) > plot.SOURCE_WIDTH for line in inspect.getsource(recipes.Recipe).splitlines()), (
        "Recipe has no long line any more: pick code that does, or this test proves nothing"
    )


def _code(source: str) -> str:
    """The syntax tree without docstrings (their lines may be rewrapped), as text."""
    import textwrap

    tree = ast.parse(textwrap.dedent(source))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def test_long_comments_and_docstrings_are_wrapped():
    source = 'def f():\n    """' + "word " * 30 + '"""\n    x = 1  # ' + "why " * 30 + "\n    return x\n"
    listing = plot.reflowed_source(source)
    assert max(len(line) for line in listing.splitlines()) <= plot.SOURCE_WIDTH
    assert _code(listing) == _code(source) and listing.count("why") == 30 and listing.count("word") == 30


def test_a_method_listing_is_dedented():
    listing = plot.reflowed_source("    def f(self):\n        return 1\n")
    assert listing == "def f(self):\n    return 1"


def test_signatures_show_how_to_call_not_how_it_works():
    from utils import models, probes

    listing = plot.signature_source(probes.recording_calls)
    assert "def recording_calls(model: nn.Module" in listing
    words = lambda text: " ".join(text.replace('"""', " ").split())  # noqa: E731
    assert words(inspect.getdoc(probes.recording_calls)) in words(listing), "the whole docstring, rewrapped"
    assert listing.rstrip().endswith("..."), "the body is left out"
    block = plot.signature_source(models.BasicBlock)
    assert "def __init__(" in block and "def forward(" in block and "self.conv1 =" not in block
    assert max(len(line) for line in plot.reflowed_source(block).splitlines()) <= plot.SOURCE_WIDTH
