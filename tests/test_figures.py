"""The book's diagrams: drawn by scripts/draw_figures.py, committed as drawn, sized for the text
column, and each one shown by a chapter (and nothing shown that does not exist)."""

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from torch import nn

from scripts import draw_figures
from utils import figures, models

ROOT = Path(__file__).resolve().parents[1]
FIGURES_DIR = ROOT / figures.FIGURES_DIR
BOOK = ROOT / "book"
SVG = "{http://www.w3.org/2000/svg}"
COMMITTED = sorted(FIGURES_DIR.glob("*.svg"))

SHOW_CALL = re.compile(r"""figures\.show\(\s*["']([^"']*)["']""")
MARKDOWN_FIGURE = re.compile(r"""figures/([A-Za-z0-9_.-]+)\.svg""")


@pytest.fixture(scope="module")
def drawn() -> dict[str, str]:
    return draw_figures.draw_all()


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _shown() -> dict[str, list[str]]:
    """{diagram name: the pages that show it}: figures.show calls in notebooks, figure paths in Markdown."""
    shown: dict[str, list[str]] = {}
    for path in sorted(BOOK.glob("*.ipynb")):
        for cell in _cells(path):
            pattern = SHOW_CALL if cell["cell_type"] == "code" else MARKDOWN_FIGURE
            for name in pattern.findall(_source(cell)):
                shown.setdefault(name, []).append(path.name)
    for path in sorted(BOOK.glob("*.md")):
        for name in MARKDOWN_FIGURE.findall(path.read_text(encoding="utf-8")):
            shown.setdefault(name, []).append(path.name)
    return shown


def test_at_least_six_diagrams_are_committed():
    assert len(COMMITTED) >= 6, f"expected at least six SVG diagrams in {FIGURES_DIR}, found {len(COMMITTED)}"


def test_committed_svgs_are_exactly_what_the_script_draws(drawn):
    problems = draw_figures.stale_figures(FIGURES_DIR, drawn)
    assert not problems, "; ".join(problems) + " (run: python scripts/draw_figures.py)"


def test_check_names_every_stale_missing_or_unknown_svg(tmp_path, drawn, monkeypatch, capsys):
    monkeypatch.setattr(draw_figures, "draw_all", lambda: drawn)  # draw once per test module
    assert draw_figures.main(["--out", str(tmp_path)]) == 0
    assert {p.stem: p.read_text(encoding="utf-8") for p in tmp_path.glob("*.svg")} == drawn
    assert not list(tmp_path.glob(".*.tmp")), "the atomic write left a temporary file behind"
    assert draw_figures.main(["--check", "--out", str(tmp_path)]) == 0

    (tmp_path / "resnet18.svg").write_text(drawn["resnet18"].replace("224", "225"), encoding="utf-8")
    (tmp_path / "preactivation.svg").unlink()
    (tmp_path / "old-diagram.svg").write_text("<svg/>", encoding="utf-8")
    capsys.readouterr()
    assert draw_figures.main(["--check", "--out", str(tmp_path)]) == 1
    report = capsys.readouterr().err
    for expected in ("resnet18.svg differs", "preactivation.svg is missing", "old-diagram.svg is not drawn"):
        assert expected in report, f"--check did not report {expected!r}; it said: {report}"
    assert "residual-block" not in report, "--check reported a diagram that is up to date"


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_svg_is_well_formed_sized_for_the_column_and_readable(path):
    text = path.read_text(encoding="utf-8")
    root = ET.fromstring(text)  # raises on malformed XML
    assert root.tag == f"{SVG}svg", f"{path.name}: the root element is {root.tag}, not an SVG"
    view_box = root.get("viewBox")
    assert view_box, f"{path.name} has no viewBox, so it cannot scale with the page"
    x0, y0, view_width, view_height = (float(v) for v in view_box.split())
    assert (x0, y0) == (0, 0) and view_height > 0
    width = float(root.get("width", view_width))
    assert width <= draw_figures.WIDTH, f"{path.name} is {width} px wide; the text column is {draw_figures.WIDTH} px"
    assert width == view_width, f"{path.name} is drawn at {view_width} and shown at {width} px: its fonts scale"
    assert root.get("font-family") == "sans-serif", f"{path.name} should use the reader's generic sans-serif"
    assert "@font-face" not in text and "<image" not in text, f"{path.name} embeds a font or an image"
    assert root.find(f"{SVG}title") is not None, f"{path.name} has no <title> for screen readers"
    sizes = [float(e.get("font-size")) for e in root.iter() if e.get("font-size")]
    assert sizes and min(sizes) >= draw_figures.MIN_FONT, f"{path.name} has text of {min(sizes)} px"
    assert list(root.iter(f"{SVG}text")), f"{path.name} has no labels"
    assert " id=" not in text, f"{path.name} defines an id, which would clash with another diagram on the same page"


def test_every_figure_shown_exists_and_every_diagram_is_shown():
    shown = _shown()
    missing = {name: pages for name, pages in shown.items() if not (FIGURES_DIR / f"{name}.svg").is_file()}
    assert not missing, f"pages show diagrams that do not exist in {FIGURES_DIR}: {missing}"
    unshown = [path.stem for path in COMMITTED if path.stem not in shown]
    assert not unshown, f"diagrams no chapter shows (figures.show or a Markdown figure): {unshown}"


def test_figure_cells_show_the_figure_once_and_hide_their_input():
    for path in sorted(BOOK.glob("*.ipynb")):
        for cell in _cells(path):
            if cell["cell_type"] == "code" and SHOW_CALL.search(_source(cell)):
                where = f"{path.name}, cell {cell.get('id')}"
                assert "remove-input" in cell.get("metadata", {}).get("tags", []), f"{where}: tag it remove-input"



def test_show_displays_the_diagram_once(monkeypatch):
    import IPython.display

    from utils import figures

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    assert figures.show("resnet18") is None, "a value returned would be displayed a second time"
    assert len(shown) == 1 and "<svg" in shown[0].data

    figures.show("residual-block")
    assert "residual block" in shown[1].data, "show should display the named diagram"


@pytest.mark.parametrize("bad", ["", "book/figures/resnet18", "resnet18.svg"])
def test_figures_path_rejects_bad_names(bad):
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        figures.path(bad)


def test_figures_path_names_a_missing_diagram():
    with pytest.raises(FileNotFoundError, match="no-such-diagram.svg"):
        figures.path("no-such-diagram")


def test_drawing_refuses_tiny_fonts_clipped_text_and_overfull_boxes():
    drawing = draw_figures.Drawing("test", "a test drawing", height=100)
    with pytest.raises(ValueError, match="below the minimum"):
        drawing.text(100, 50, "tiny", size=draw_figures.MIN_FONT - 1)
    with pytest.raises(ValueError, match="does not fit"):
        drawing.box(340, 10, 40, ["a label far too long for its box"])
    drawing.text(draw_figures.WIDTH - 10, 50, "sticks out on the right", anchor="start")
    with pytest.raises(ValueError, match="would be clipped"):
        drawing.svg()


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        (
            lambda: models.BasicBlock(16, 16),
            ["conv1", "bn1", "relu", "conv2", "bn2", "relu"],
        ),
        (
            lambda: models.PreActBasicBlock(16, 16),
            ["bn1", "F.relu", "conv1", "bn2", "relu", "conv2"],
        ),
        (
            lambda: models.PreActBottleneck(64, 16),
            ["bn1", "F.relu", "conv1", "bn2", "relu", "conv2", "bn3", "relu", "conv3"],
        ),
    ],
    ids=["BasicBlock", "PreActBasicBlock", "PreActBottleneck"],
)
def test_layer_sequence_has_every_relu_the_forward_applies(factory, expected):
    # The pre-activation blocks apply their first ReLU as a function,
    # F.relu(self.bn1(x)): module hooks alone miss it (the v2 unit was once drawn
    # BN, conv, BN, ReLU, conv).
    block = draw_figures.meta(factory)
    assert [name for name, _ in draw_figures.layer_sequence(block)] == expected


def test_layer_sequence_follows_the_computation_of_a_functional_relu():
    class Block(nn.Module):  # the ReLU applied as a function, between two modules
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn1(torch.relu(self.conv1(x))) + x

    block = draw_figures.meta(Block)
    names = [name for name, _ in draw_figures.layer_sequence(block)]
    assert names == ["conv1", "F.relu", "bn1"]


def test_layer_sequence_refuses_a_function_it_cannot_draw():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return torch.sigmoid(self.conv1(x)) + x

    with pytest.raises(ValueError, match="sigmoid"):
        draw_figures.layer_sequence(draw_figures.meta(Block))


def _column_labels(svg: str, x: str) -> list[str]:
    """A diagram column's box labels, top to bottom (text centred at ``x``)."""
    root = ET.fromstring(svg)
    return [
        text.text
        for text in root.iter(f"{SVG}text")
        if text.get("x") == x and text.get("text-anchor") == "middle" and not list(text)
    ]


def test_preactivation_diagram_draws_what_the_blocks_compute():
    svg = (FIGURES_DIR / "preactivation.svg").read_text(encoding="utf-8")
    v1, v2 = _column_labels(svg, "170"), _column_labels(svg, "500")
    assert v1[1:] == ["3×3 conv, 16", "BN", "ReLU", "3×3 conv, 16", "BN", "ReLU"], v1
    assert v2[1:] == ["BN", "ReLU", "3×3 conv, 16", "BN", "ReLU", "3×3 conv, 16"], v2
    description = ET.fromstring(svg).find(f"{SVG}desc").text
    assert "pre-activation: BN, ReLU, conv, BN, ReLU, conv, addition;" in description
