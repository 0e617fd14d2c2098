#!/usr/bin/env python3
"""Draw the book's diagrams as standalone SVG files under ``book/figures/``.

    python scripts/draw_figures.py            # (re)write every diagram
    python scripts/draw_figures.py --check    # exit 1 naming every committed SVG that differs

Each diagram is plain SVG text written by the small ``Drawing`` helper below: boxes, arrows with
arrowheads, the circled plus of an addition, text in the reader's own ``sans-serif`` font. No
drawing tool, no matplotlib and no embedded fonts are needed, and the output is the same bytes on
every run. Chapters display the files with ``utils.figures.show(name)``.

The facts in the diagrams come from the course's code, not from a second copy of them: the layer
order of every block from a forward pass (``layer_sequence``: module hooks, and a
``TorchFunctionMode`` for the ReLUs a ``forward`` applies as functions), kernel sizes,
channels, strides and shortcut types from the modules of ``utils.models``, and every tensor shape
from one forward pass on the meta device. If the models change, the next ``--check`` fails.

Every diagram is 680 px wide (the text column of the rendered book) and scales down with the page;
no text is smaller than 12 px at that width. ``Drawing`` refuses text that would stick out of its
canvas or out of the box that holds it, estimating widths for a wide sans-serif (DejaVu Sans).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from utils import models, probes
from utils.files import atomic_write

ROOT = Path(__file__).resolve().parents[1]
FIGURES_DIR = ROOT / "book" / "figures"

WIDTH = 680  # px: the text column of the rendered book
MIN_FONT = 12  # px at WIDTH: nothing smaller
FONT = 14
INK = "#1f1f1f"
MUTED = "#555555"
SHORTCUT = "#c0392b"  # every shortcut connection is drawn in this red

# (fill, stroke) of each kind of box.
STYLES = {
    "weight": ("#dbe8f7", "#2f6199"),  # convolutions and other weight layers
    "bn": ("#fdf1c7", "#a27a00"),
    "relu": ("#dcf1d8", "#3c8a34"),
    "pool": ("#ece4f5", "#6a4c93"),  # pooling and the fully connected head
    "shortcut": ("#fbe3e0", SHORTCUT),
    "plain": ("#f2f2f2", "#666666"),
}


# ============================================================================ SVG helper


def _n(value: float) -> str:
    """A coordinate as short, stable text: at most one decimal, no trailing zeros."""
    text = f"{value:.1f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


# Widths of characters in em for a wide sans-serif (DejaVu Sans, the usual Linux default);
# narrower fonts (Helvetica, Arial) only leave more room.
_NARROW = set("iljtfrI.,:;!|'()[] ·")
_WIDE = set("mwMW@%")


def text_width(text: str, size: float) -> float:
    """Estimated width in px of ``text`` (markup already removed) at font size ``size``."""
    em = 0.0
    for char in text:
        if char in _NARROW:
            em += 0.36
        elif char in _WIDE:
            em += 0.95
        elif char.isupper() or char in "×⊕→Σ+=−0123456789":
            em += 0.7
        else:
            em += 0.62
    return em * size


def _runs(text: str) -> list[tuple[str, bool]]:
    """Split ``text`` into (piece, is_subscript) runs: ``x_{l+1}`` writes l+1 as a subscript."""
    runs, rest = [], text
    while "_{" in rest:
        before, _, after = rest.partition("_{")
        sub, closing, rest = after.partition("}")
        if not closing:
            raise ValueError(f"unclosed subscript in {text!r}")
        if before:
            runs.append((before, False))
        runs.append((sub, True))
    if rest:
        runs.append((rest, False))
    return runs


SUB_SIZE = 12  # subscripts stay readable
SUB_DROP = 4


class Drawing:
    """An SVG document of width ``WIDTH`` built element by element; ``svg()`` gives its text."""

    def __init__(self, title: str, description: str, height: float | None = None):
        self.height = height  # may be set once the layout is known, before ``svg()``
        self.title = title
        self.description = description
        self.elements: list[str] = []
        self.extents: list[tuple[str, float, float, float, float]] = []  # text, left, right, top, bottom

    # ---------------------------------------------------------------- text
    def measure(self, text: str, size: float = FONT) -> float:
        return sum(text_width(piece, SUB_SIZE if sub else size) for piece, sub in _runs(text))

    def text(
        self,
        x: float,
        y: float,
        text: str,
        *,
        size: float = FONT,
        anchor: str = "middle",
        color: str = INK,
        weight: str = "normal",
        italic: bool = False,
    ) -> float:
        """Text with its baseline at ``y``; returns its estimated width. ``_{...}`` is a subscript."""
        if size < MIN_FONT:
            raise ValueError(f"font size {size} px for {text!r} is below the minimum of {MIN_FONT} px")
        width = self.measure(text, size)
        left = {"start": x, "middle": x - width / 2, "end": x - width}[anchor]
        self.extents.append((text, left, left + width, y - size, y + SUB_DROP))
        attributes = f'x="{_n(x)}" y="{_n(y)}"'
        if anchor != "start":
            attributes += f' text-anchor="{anchor}"'
        if size != FONT:
            attributes += f' font-size="{_n(size)}"'
        if color != INK:
            attributes += f' fill="{color}"'
        if weight != "normal":
            attributes += f' font-weight="{weight}"'
        if italic:
            attributes += ' font-style="italic"'
        body, lowered = [], False
        for piece, sub in _runs(text):
            if sub:
                body.append(f'<tspan dy="{SUB_DROP}" font-size="{SUB_SIZE}">{escape(piece)}</tspan>')
                lowered = True
            elif lowered:
                body.append(f'<tspan dy="-{SUB_DROP}">{escape(piece)}</tspan>')
                lowered = False
            else:
                body.append(escape(piece))
        self.elements.append(f"<text {attributes}>{''.join(body)}</text>")
        return width

    # ---------------------------------------------------------------- shapes
    def rect(
        self, x: float, y: float, w: float, h: float, style: str = "plain", *, rx: float = 6, dashed: bool = False
    ) -> None:
        fill, stroke = STYLES[style]
        dash = ' stroke-dasharray="5 4"' if dashed else ""
        self.elements.append(
            f'<rect x="{_n(x)}" y="{_n(y)}" width="{_n(w)}" height="{_n(h)}" rx="{_n(rx)}" '
            f'fill="{fill}" stroke="{stroke}" stroke-width="1.5"{dash}/>'
        )

    def band(self, x: float, y: float, w: float, h: float, fill: str) -> None:
        """A borderless background rectangle (groups rows)."""
        self.elements.append(f'<rect x="{_n(x)}" y="{_n(y)}" width="{_n(w)}" height="{_n(h)}" fill="{fill}"/>')

    def box(
        self,
        cx: float,
        top: float,
        w: float,
        lines: Sequence[str],
        style: str = "weight",
        *,
        size: float = FONT,
        pad: float = 6,
    ) -> float:
        """A rounded box centred at ``cx`` holding centred lines, ``pad`` above and below; returns its bottom."""
        line_height = size + 5
        h = 2 * pad + line_height * len(lines)
        self.rect(cx - w / 2, top, w, h, style)
        for i, line in enumerate(lines):
            if self.measure(line, size) > w - 12:
                raise ValueError(f"label {line!r} does not fit in a box {w} px wide")
            self.text(cx, top + pad + line_height * (i + 1) - 4, line, size=size)
        return top + h

    def line(self, points: Sequence[tuple[float, float]], color: str = INK, *, dashed: bool = False) -> None:
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        path = " ".join(f"{_n(x)},{_n(y)}" for x, y in points)
        self.elements.append(
            f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.6"'
            f' stroke-linejoin="round"{dash}/>'
        )

    def arrow(self, points: Sequence[tuple[float, float]], color: str = INK, *, dashed: bool = False) -> None:
        """A polyline through ``points`` ending in an arrowhead at the last point.

        The head is a plain triangle, not an SVG marker: markers need ids, and several diagrams
        inlined in one page would share (and clash over) them.
        """
        (x0, y0), (x1, y1) = points[-2], points[-1]
        length = ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5
        if length < 9:
            raise ValueError(f"the last segment of the arrow {points} is too short for a head")
        ux, uy = (x1 - x0) / length, (y1 - y0) / length
        head, half = 9.0, 4.5
        bx, by = x1 - ux * head, y1 - uy * head
        self.line([*points[:-1], (bx, by)], color, dashed=dashed)
        corners = [(x1, y1), (bx - uy * half, by + ux * half), (bx + uy * half, by - ux * half)]
        path = " ".join(f"{_n(x)},{_n(y)}" for x, y in corners)
        self.elements.append(f'<polygon points="{path}" fill="{color}"/>')

    def dot(self, x: float, y: float, color: str = INK) -> None:
        self.elements.append(f'<circle cx="{_n(x)}" cy="{_n(y)}" r="3" fill="{color}"/>')

    def plus(self, cx: float, cy: float, r: float = 11) -> None:
        """The circled plus of an element-wise addition."""
        self.elements.append(
            f'<circle cx="{_n(cx)}" cy="{_n(cy)}" r="{_n(r)}" fill="white" stroke="{INK}" stroke-width="1.6"/>'
        )
        a = r * 0.6
        self.line([(cx - a, cy), (cx + a, cy)])
        self.line([(cx, cy - a), (cx, cy + a)])

    def check_extents(self) -> None:
        """Raise if any text would stick out of the canvas (and so be clipped)."""
        if self.height is None:
            raise ValueError(f"the height of {self.title!r} was never set")
        for text, left, right, top, bottom in self.extents:
            if left < 2 or right > WIDTH - 2 or top < 0 or bottom > self.height - 2:
                raise ValueError(
                    f"text {text!r} of {self.title!r} would be clipped: it spans x = {left:.0f} to {right:.0f}, "
                    f"y = {top:.0f} to {bottom:.0f} of a {WIDTH} x {_n(self.height)} canvas"
                )

    def svg(self) -> str:
        self.check_extents()
        header = (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{_n(self.height)}" '
            f'viewBox="0 0 {WIDTH} {_n(self.height)}" font-family="sans-serif" font-size="{FONT}" '
            f'fill="{INK}" role="img" style="max-width:100%;height:auto">'
        )
        lines = [
            header,
            f"<title>{escape(self.title)}</title>",
            f"<desc>{escape(self.description)}</desc>",
            # An opaque background keeps the diagram readable on a dark page theme too.
            f'<rect width="{WIDTH}" height="{_n(self.height)}" fill="white"/>',
            *self.elements,
            "</svg>",
        ]
        return "\n".join(lines) + "\n"


# ============================================================================ vertical flows


@dataclass(frozen=True)
class Node:
    """One step of a vertical flow: a ``box``, a ``text`` (a tensor's name) or an ``add`` (⊕).

    ``edge`` labels the arrow that leads *into* the node (a ReLU, a tensor shape), written to the
    right of it.
    """

    kind: str
    lines: tuple[str, ...] = ()
    style: str = "weight"
    edge: str = ""


ADD_RADIUS = 11


def node_height(node: Node, size: float = FONT) -> float:
    """The height ``draw_flow`` gives ``node`` (a box as ``Drawing.box`` draws it)."""
    if node.kind == "box":
        return 12 + (size + 5) * len(node.lines)
    if node.kind == "add":
        return 2 * ADD_RADIUS
    if node.kind == "text":
        return size + 9  # the baseline sits 8 px above the bottom: room for a subscript
    raise ValueError(f"unknown node kind {node.kind!r}; expected 'box', 'add' or 'text'")


@dataclass
class Placed:
    node: Node
    top: float
    bottom: float

    @property
    def middle(self) -> float:
        return (self.top + self.bottom) / 2


def draw_flow(
    d: Drawing, cx: float, top: float, nodes: Sequence[Node], *, box_width: float, gap: float = 22,
    edge_style: dict | None = None,
) -> list[Placed]:
    """Draw ``nodes`` top to bottom centred at ``cx``, joined by arrows; return where each went."""
    placed, y = [], top
    for i, node in enumerate(nodes):
        if i:
            y += gap
        height = node_height(node)
        placed.append(Placed(node, y, y + height))
        y += height
    for i, p in enumerate(placed):
        node = p.node
        if node.kind == "box":
            d.box(cx, p.top, box_width, node.lines, node.style)
        elif node.kind == "add":
            d.plus(cx, p.middle)
        elif node.lines[0]:
            d.text(cx, p.bottom - 8, node.lines[0])
        if i:
            start = placed[i - 1].bottom
            d.arrow([(cx, start), (cx, p.top)])
            if node.edge:
                d.text(cx + 9, (start + p.top) / 2 + 5, node.edge, anchor="start", **(edge_style or {}))
    return placed


def draw_identity_shortcut(
    d: Drawing, cx: float, placed: Sequence[Placed], offset: float, labels: Sequence[str] = ()
) -> None:
    """The shortcut of a residual unit: from the arrow below the input round the right side into the ⊕.

    ``placed`` is the unit's flow (input first); ``labels`` are lines written right of the shortcut.
    """
    add = next(p for p in placed if p.node.kind == "add")
    branch_y = (placed[0].bottom + placed[1].top) / 2
    right = cx + offset
    d.dot(cx, branch_y, SHORTCUT)
    d.arrow([(cx, branch_y), (right, branch_y), (right, add.middle), (cx + ADD_RADIUS, add.middle)], SHORTCUT)
    middle = (branch_y + add.middle) / 2
    for i, label in enumerate(labels):
        d.text(right + 8, middle + 5 + 19 * (i - (len(labels) - 1) / 2), label, anchor="start", color=SHORTCUT)


# ============================================================================ facts from the code


def conv_label(conv: nn.Conv2d, *, with_stride: bool = False) -> str:
    """``3×3 conv, 64`` (kernel and output channels, and the stride if asked and not 1), read from the layer."""
    k = conv.kernel_size[0]
    label = f"{k}×{k} conv, {conv.out_channels}"
    if with_stride and conv.stride[0] != 1:
        label += f", stride {conv.stride[0]}"
    return label


# Torch functions a block's ``forward`` may call itself, outside its child modules. A
# ReLU there (``F.relu(self.bn1(x))`` in the pre-activation blocks) is drawn like the
# ``nn.ReLU`` module; ``unit_nodes`` places the addition; anything else has no drawing
# and stops the diagram.
FUNCTIONAL_RELU = frozenset({"relu", "relu_"})
FUNCTIONAL_ADDITION = frozenset({"add", "add_", "__add__", "__iadd__", "__radd__"})


class _BlockLevelCalls(TorchFunctionMode):
    """Records the torch functions a block's ``forward`` calls, outside its children.

    ``depth`` counts how deep the pass is: 1 inside the block's ``forward``, 2 or more
    inside one of its child modules (whose own calls, such as an ``nn.ReLU``'s
    ``F.relu``, belong to that module).
    """

    def __init__(self, on_call: Callable[[str], None]):
        super().__init__()
        self.depth = 0
        self.on_call = on_call

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.depth == 1:
            self.on_call(getattr(func, "__name__", repr(func)))
        return func(*args, **(kwargs or {}))


def layer_sequence(block: nn.Module) -> list[tuple[str, nn.Module]]:
    """The block's layers in the order its ``forward`` computes them (a meta pass).

    Module calls come from forward hooks on the block's children. A ReLU that the block
    applies as a function (``F.relu``, not a module) is recorded by a
    ``TorchFunctionMode`` and appears as ``("F.relu", nn.ReLU())``. A module called
    twice (the shared ReLU) appears twice; the shortcut (``downsample``) is left out. A
    block-level call of any function other than a ReLU or the addition raises: the
    diagram could not show it.
    """
    channels = block.conv1.in_channels
    x = torch.empty(2, channels, 8, 8, device="meta")
    sequence: list[tuple[str, nn.Module]] = []
    unknown: list[str] = []

    def on_call(name: str) -> None:
        if name in FUNCTIONAL_RELU:
            sequence.append((f"F.{name}", nn.ReLU()))
        elif name not in FUNCTIONAL_ADDITION:
            unknown.append(name)

    mode = _BlockLevelCalls(on_call)

    def enter(*_args) -> None:
        mode.depth += 1

    def leave_child(name: str, module: nn.Module):
        def hook(*_args) -> None:
            mode.depth -= 1
            if name != "downsample" and mode.depth == 1:
                sequence.append((name, module))

        return hook

    def leave_block(*_args) -> None:
        mode.depth -= 1

    handles = [
        block.register_forward_pre_hook(enter),
        block.register_forward_hook(leave_block),
    ]
    for name, child in block.named_children():
        handles.append(child.register_forward_pre_hook(enter))
        handles.append(child.register_forward_hook(leave_child(name, child)))
    training = [(m, m.training) for m in block.modules()]
    try:
        block.eval()
        with torch.no_grad(), mode:
            block(x)
    finally:
        for handle in handles:
            handle.remove()
        for module, was_training in training:
            module.training = was_training
    if unknown:
        raise ValueError(
            f"{type(block).__name__}.forward calls {', '.join(sorted(set(unknown)))}"
            " itself, outside its layers: the diagram has no drawing for it"
        )
    return sequence


def unit_nodes(block: nn.Module, *, separate_norm: bool) -> list[Node]:
    """The nodes between a block's input and output, in forward order, with the addition placed.

    A post-activation block ([v1]) applies its last ReLU after the addition; a pre-activation block
    ([v2], "Identity Mappings", Fig. 4e) ends with the addition. ``separate_norm`` draws BatchNorm
    and ReLU as boxes of their own; otherwise a BN joins the conv before it and a ReLU labels the
    next arrow, as in the paper's Fig. 2 and 5.
    """
    sequence = layer_sequence(block)
    preact = getattr(block, "preactivation", False)
    if not preact and not isinstance(sequence[-1][1], nn.ReLU):
        raise ValueError(f"{type(block).__name__} does not end with a ReLU: where does its addition go?")
    body = sequence if preact else sequence[:-1]
    nodes: list[Node] = []
    pending_edge = ""
    for name, module in body:
        if isinstance(module, nn.Conv2d):
            nodes.append(Node("box", (conv_label(module),), "weight", edge=pending_edge))
            pending_edge = ""
        elif isinstance(module, nn.BatchNorm2d):
            if separate_norm or not nodes or nodes[-1].style != "weight":
                nodes.append(Node("box", ("BN",), "bn", edge=pending_edge))
                pending_edge = ""
            else:
                last = nodes[-1]
                nodes[-1] = Node("box", (last.lines[0] + ", BN",), "weight", edge=last.edge)
        elif isinstance(module, nn.ReLU):
            if separate_norm:
                nodes.append(Node("box", ("ReLU",), "relu", edge=pending_edge))
            else:
                pending_edge = "ReLU"
        else:
            raise ValueError(f"no drawing for layer {name!r} ({type(module).__name__}) of {type(block).__name__}")
    nodes.append(Node("add", edge=pending_edge))
    if not preact:
        if separate_norm:
            nodes.append(Node("box", ("ReLU",), "relu"))
        else:
            nodes.append(Node("text", ("",), edge="ReLU"))  # placeholder: the caller names the output
    return nodes


def meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """Build a model on the meta device: shapes and sizes without weights or memory."""
    with torch.device("meta"):
        return factory()


def shape_text(shape: Sequence[int]) -> str:
    """``64 × 56 × 56``: a shape without its batch dimension."""
    return " × ".join(str(s) for s in shape[1:])


# ============================================================================ the diagrams


def residual_block() -> Drawing:
    """The paper's Fig. 2: a plain stack of two weight layers next to the residual block."""
    d = Drawing(
        "A plain two-layer stack and a residual block",
        "Left: x passes through weight layer, ReLU, weight layer, ReLU and the output is H(x). Right: the same "
        "layers compute F(x); a shortcut carries x round them to an addition, and a ReLU follows: "
        "ReLU(F(x) + x).",
    )
    box_width = 140
    block = meta(lambda: models.BasicBlock(64, 64))
    layers = unit_nodes(block, separate_norm=False)
    # The paper's Fig. 2 says "weight layer": here each is a conv + BN, read from BasicBlock.
    generic = [
        Node(n.kind, ("weight layer",) if n.kind == "box" else n.lines, n.style, n.edge) for n in layers
    ]
    assert [n.kind for n in generic] == ["box", "box", "add", "text"], "BasicBlock is no longer conv-conv-add-relu"

    left_cx, right_cx = 150, 450
    d.text(left_cx, 26, "plain: the layers fit H(x)", weight="bold")
    d.text(right_cx + 20, 26, "residual: they fit F(x) = H(x) − x", weight="bold")

    plain = [Node("text", ("x",)), generic[0], generic[1], Node("text", ("H(x)",), edge="ReLU")]
    placed = draw_flow(d, left_cx, 50, plain, box_width=box_width, gap=34)
    # The plain output sits level with the residual one.
    residual = [Node("text", ("x",)), generic[0], generic[1], generic[2],
                Node("text", ("ReLU(F(x) + x)",), edge="ReLU")]
    r_placed = draw_flow(d, right_cx, 50, residual, box_width=box_width, gap=34)
    _bracket(d, left_cx - box_width / 2 - 12, placed[1].top, placed[2].bottom, "H(x)")
    _bracket(d, right_cx - box_width / 2 - 12, r_placed[1].top, r_placed[2].bottom, "F(x)")
    d.text(right_cx - 12, (r_placed[3].bottom + r_placed[4].top) / 2 + 5, "F(x) + x", anchor="end",
           color=MUTED)
    draw_identity_shortcut(d, right_cx, r_placed, box_width / 2 + 60, ["x", "identity"])
    legend_y = r_placed[-1].bottom + 36
    _legend(d, legend_y, [("weight", "weight layer: 3×3 conv + BN in BasicBlock"), ("shortcut", "shortcut")])
    d.height = legend_y + 14
    return d


def _bracket(d: Drawing, x: float, top: float, bottom: float, label: str) -> None:
    """A square bracket left of a stack of boxes, labelled on its left."""
    d.line([(x + 6, top), (x, top), (x, bottom), (x + 6, bottom)], MUTED)
    d.text(x - 6, (top + bottom) / 2 + 5, label, anchor="end", color=MUTED)


def _legend(d: Drawing, y: float, entries: Sequence[tuple[str, str]]) -> None:
    """Colour swatches with labels in one centred row, baseline ``y``."""
    widths = [22 + d.measure(label, 13) + 22 for _, label in entries]
    x = (WIDTH - sum(widths) + 22) / 2
    for (style, label), w in zip(entries, widths):
        if style == "shortcut":
            d.line([(x, y - 5), (x + 16, y - 5)], SHORTCUT)
        else:
            d.rect(x, y - 12, 16, 14, style, rx=3)
        d.text(x + 22, y, label, size=13, anchor="start", color=MUTED)
        x += w


def basic_vs_bottleneck() -> Drawing:
    """The paper's Fig. 5: a basic block at 64 channels and a bottleneck block at 256."""
    basic = meta(lambda: models.BasicBlock(64, 64))
    bottleneck = meta(lambda: models.Bottleneck(256, 64))
    d = Drawing(
        "A basic block and a bottleneck block",
        "Left: a basic block on a 64-channel input, two 3x3 convolutions with 64 channels. Right: a bottleneck on "
        "a 256-channel input: a 1x1 convolution to 64 channels, a 3x3 convolution with 64, and a 1x1 "
        "convolution back to 256. Both add the input through an identity shortcut, then apply a ReLU.",
    )
    box_width = 176
    columns = [(150, basic, "basic block (ResNet-18/34)"), (460, bottleneck, "bottleneck (ResNet-50/101/152)")]
    bottoms = []
    for cx, block, title in columns:
        d.text(cx, 26, title, weight="bold")
        channels = block.conv1.in_channels
        nodes = unit_nodes(block, separate_norm=False)
        nodes[-1] = Node("text", (f"{channels}-d",), edge="ReLU")
        placed = draw_flow(d, cx, 44, [Node("text", (f"{channels}-d",)), *nodes], box_width=box_width)
        draw_identity_shortcut(d, cx, placed, box_width / 2 + 46, ["identity"])
        bottoms.append(placed[-1].bottom)
    for cx, block, _ in columns:
        d.text(cx, max(bottoms) + 28, f"{models.count_parameters(block):,} parameters", color=MUTED)
    _legend(d, max(bottoms) + 60, [("weight", "conv + BN"), ("shortcut", "shortcut (identity)")])
    d.height = max(bottoms) + 74
    return d


def _unit_words(nodes: Sequence[Node]) -> str:
    """``conv, BN, ReLU, ..., addition``: a unit's nodes in words, for a description."""
    words = {"weight": "conv", "bn": "BN", "relu": "ReLU"}
    return ", ".join("addition" if n.kind == "add" else words[n.style] for n in nodes)


def preactivation() -> Drawing:
    """"Identity Mappings" ([v2]) Fig. 1 / 4(a) vs 4(e): the original unit and full pre-activation."""
    v1 = meta(lambda: models.BasicBlock(16, 16))
    v2 = meta(lambda: models.PreActBasicBlock(16, 16))
    v1_words = _unit_words(unit_nodes(v1, separate_norm=True))
    v2_words = _unit_words(unit_nodes(v2, separate_norm=True))
    # [v2], Fig. 4(a) and 4(e): if the code computes otherwise, the captions are wrong.
    assert v1_words == "conv, BN, ReLU, conv, BN, addition, ReLU", v1_words
    assert v2_words == "BN, ReLU, conv, BN, ReLU, conv, addition", v2_words
    d = Drawing(
        "Post-activation (v1) and pre-activation (v2) residual units",
        f"Left, the original unit: {v1_words}; the ReLU after the addition sits on the"
        f" shortcut path. Right, full pre-activation: {v2_words}; nothing follows the"
        " addition, so the shortcut path is clean.",
    )
    box_width = 150
    columns = [
        (170, v1, "v1: original (post-activation)", "x_{l+1} = ReLU(x_{l} + F(x_{l}))"),
        (500, v2, "v2: full pre-activation", "x_{l+1} = x_{l} + F(x_{l})"),
    ]
    bottoms = []
    for cx, block, title, formula in columns:
        d.text(cx, 26, title, weight="bold")
        nodes = unit_nodes(block, separate_norm=True)
        placed = draw_flow(d, cx, 42, [Node("text", ("x_{l}",)), *nodes, Node("text", ("x_{l+1}",))],
                           box_width=box_width, gap=16)
        draw_identity_shortcut(d, cx, placed, box_width / 2 + 40, ["x_{l}"])
        bottoms.append(placed[-1].bottom)
    for cx, _, _, formula in columns:
        d.text(cx, max(bottoms) + 26, formula)
    legend_y = max(bottoms) + 58
    _legend(d, legend_y, [("weight", "3×3 conv"), ("bn", "BatchNorm"), ("relu", "ReLU"), ("shortcut", "shortcut")])
    d.height = legend_y + 14
    return d


def shortcut_options() -> Drawing:
    """Options A and B of [v1], Sec. 3.3, for the first block of the CIFAR net's second stage."""
    option_a = meta(lambda: models.resnet_cifar(20, shortcut="A")).layer2[0]
    option_b = meta(lambda: models.resnet_cifar(20, shortcut="B")).layer2[0]
    pad = option_a.downsample
    if not isinstance(pad, models.PadShortcut):
        raise TypeError(f"option A's shortcut is a {type(pad).__name__}, expected models.PadShortcut")
    projection_conv, projection_bn = option_b.downsample
    size = 32  # the first stage works on 32x32 maps
    x = torch.empty(1, pad.in_channels, size, size, device="meta")
    subsampled = x[:, :, :: pad.stride, :: pad.stride]
    with torch.no_grad():
        padded = pad(x)
        projected = projection_conv(x)
        normalised = projection_bn.eval()(projected)
        branch = option_a.eval()(x)  # ReLU(F(x) + shortcut(x)): the addition needs F(x)'s shape
    assert padded.shape == normalised.shape == branch.shape, "both shortcuts must give the shape of F(x)"
    zeros = pad.out_channels - pad.in_channels

    d = Drawing(
        "Shortcut options A and B for a block that halves the map and doubles the channels",
        f"Option A: keep every second pixel ({shape_text(x.shape)} to {shape_text(subsampled.shape)}), then "
        f"append {zeros} channels of zeros ({shape_text(padded.shape)}); no parameters. Option B: a 1x1 "
        f"convolution with stride {projection_conv.stride[0]} to {projection_conv.out_channels} channels and "
        f"BatchNorm ({shape_text(normalised.shape)}).",
    )
    box_width = 210
    a_cx, b_cx = 160, 500
    panels = [
        (a_cx, "option A: subsample, zero-pad", [
            Node("box", (f"keep every {_ordinal(pad.stride)} pixel",), "shortcut"),
            Node("box", (f"append {zeros} zero channels",), "shortcut", edge=shape_text(subsampled.shape)),
        ], pad),
        (b_cx, "option B: projection", [
            Node("box", (conv_label(projection_conv, with_stride=True),), "weight"),
            Node("box", ("BN",), "bn", edge=shape_text(projected.shape)),
        ], option_b.downsample),
    ]
    for cx, title, steps, module in panels:
        d.text(cx, 26, title, weight="bold")
        nodes = [Node("text", (f"x: {shape_text(x.shape)}",)), *steps,
                 Node("text", ("to the addition with F(x)",), edge=shape_text(padded.shape))]
        placed = draw_flow(d, cx, 44, nodes, box_width=box_width, gap=36)
        parameters = models.count_parameters(module)
        d.text(cx, placed[-1].bottom + 30, "no parameters" if parameters == 0 else f"{parameters:,} parameters",
               color=MUTED)
        if module is pad:
            first = placed[1]
            _pixel_grid(d, cx + box_width / 2 + 14, first.middle - 20, pad.stride)
    bottom = placed[-1].bottom + 42
    d.line([(WIDTH / 2, 40), (WIDTH / 2, bottom)], "#cccccc")
    d.height = bottom + 36
    d.text(WIDTH / 2, bottom + 24,
           f"F(x) is {shape_text(branch.shape)} here: a stride-{option_a.stride} block from "
           f"{pad.in_channels} to {pad.out_channels} channels", size=13, color=MUTED)
    return d


def _ordinal(n: int) -> str:
    return {2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def _pixel_grid(d: Drawing, left: float, top: float, stride: int) -> None:
    """A 4x4 map with the pixels that subsampling with ``stride`` keeps filled in."""
    cell = 10
    for row, col in itertools.product(range(4), range(4)):
        kept = row % stride == 0 and col % stride == 0
        d.elements.append(
            f'<rect x="{_n(left + col * cell)}" y="{_n(top + row * cell)}" width="{cell}" height="{cell}" '
            f'fill="{SHORTCUT if kept else "white"}" stroke="#999999" stroke-width="1"/>'
        )


@dataclass(frozen=True)
class Row:
    """One row of a network diagram: a box and the shape of the tensor it outputs."""

    lines: tuple[str, ...]
    style: str
    shape: str


def network_rows(model: models.ResNet, image_size: int, *, blocks_label: str | None = None) -> list[Row]:
    """The rows of a network diagram, read from ``model`` and one meta-device forward pass."""
    x = torch.empty(1, model.conv1.in_channels, image_size, image_size, device="meta")
    watched = [*model.stages(), ("fc", model.fc)]
    shapes = probes.record_output_shapes(model, x, watched)
    conv1 = model.conv1
    stem = conv_label(conv1, with_stride=True)
    if not isinstance(model.bn1, nn.Identity):
        stem += ", BN, ReLU"
    rows = [Row((stem,), "weight", shape_text(shapes["conv1"]))]
    if not isinstance(model.maxpool, nn.Identity):
        pool = model.maxpool
        rows.append(Row((f"{pool.kernel_size}×{pool.kernel_size} max-pool, stride {pool.stride}",), "pool",
                        shape_text(shapes["maxpool"])))
    for i in range(model.num_stages):
        name = f"layer{i + 1}"
        stage = model.get_submodule(name)
        first = stage[0]
        count = blocks_label or str(len(stage))
        kind = "basic blocks" if isinstance(first, models.BasicBlock) else f"{type(first).__name__}s"
        width = first.conv1.out_channels
        if first.downsample is None:
            detail = "identity shortcuts"
        elif isinstance(first.downsample, models.PadShortcut):
            detail = f"first block: stride {first.stride}, option A shortcut"
        else:
            detail = f"first block: stride {first.stride}, projection shortcut"
        rows.append(Row((f"{name}: {count} {kind}, {width} channels", detail), "weight", shape_text(shapes[name])))
    rows.append(Row(("global average pool",), "pool", shape_text(shapes["avgpool"])))
    rows.append(Row((f"fully connected, {model.fc.out_features} outputs",), "pool",
                     f"{shape_text(shapes['fc'])} logits"))
    return rows


def draw_network(d: Drawing, rows: Sequence[Row], input_shape: str, top: float) -> list[Placed]:
    nodes = [Node("text", (f"image: {input_shape}",))]
    nodes += [Node("box", row.lines, row.style, edge=previous.shape if previous else "")
              for previous, row in zip([None, *rows[:-1]], rows)]
    nodes.append(Node("text", (rows[-1].shape,)))
    placed = draw_flow(d, WIDTH / 2, top, nodes, box_width=340, gap=24, edge_style={"color": MUTED})
    return placed


def resnet18() -> Drawing:
    """ResNet-18 at 224x224 ([v1], Table 1): stem, four stages of two basic blocks, head."""
    model = meta(lambda: models.resnet18())
    rows = network_rows(model, 224)
    d = Drawing(
        "ResNet-18 on a 224 x 224 image",
        "From top to bottom, each piece with the shape of its output: "
        + "; ".join(f"{' '.join(r.lines)}: {r.shape}" for r in rows),
    )
    d.text(WIDTH / 2, 24, "ResNet-18, shapes as channels × height × width", weight="bold")
    placed = draw_network(d, rows, shape_text((1, model.conv1.in_channels, 224, 224)), 40)
    # The paper's names of the stages (Table 1); conv2_x holds the max-pool and layer1.
    boxes = [p for p in placed if p.node.kind == "box"]
    left = WIDTH / 2 - 170 - 14
    d.text(left - 6, boxes[0].middle + 5, "conv1", anchor="end", color=MUTED)
    _bracket(d, left, boxes[1].top, boxes[2].bottom, "conv2_x")
    for i, box in enumerate(boxes[3:model.num_stages + 2]):
        d.text(left - 6, box.middle + 5, f"conv{i + 3}_x", anchor="end", color=MUTED)
    layers, parameters = models.main_path_depth(model), models.count_parameters(model)
    d.text(WIDTH / 2, placed[-1].bottom + 26,
           f"{layers} weighted layers on the main path ({layers - 1} convolutions + fc), {parameters:,} parameters",
           size=13, color=MUTED)
    d.height = placed[-1].bottom + 36
    return d


def cifar_resnet() -> Drawing:
    """The CIFAR-10 ResNets of [v1], Sec. 4.2: depth 6n + 2, three stages of n blocks."""
    nets = {n: meta(lambda n=n: models.resnet_cifar(6 * n + 2)) for n in (1, 3, 9)}
    drawn = {n: network_rows(net, 32, blocks_label="n") for n, net in nets.items()}
    if not drawn[1] == drawn[3] == drawn[9]:
        raise AssertionError("the CIFAR ResNets' shapes depend on n: the diagram's 'n blocks' would be wrong")
    rows = drawn[3]
    d = Drawing(
        "The CIFAR-10 ResNet with 6n + 2 layers",
        "From top to bottom, each piece with the shape of its output: "
        + "; ".join(f"{' '.join(r.lines)}: {r.shape}" for r in rows),
    )
    d.text(WIDTH / 2, 24, "CIFAR-10 ResNet, 6n + 2 layers, shapes as channels × height × width", weight="bold")
    placed = draw_network(d, rows, shape_text((1, nets[3].conv1.in_channels, 32, 32)), 40)
    # The depth in each name, counted on the model itself.
    depths = {n: models.main_path_depth(meta(lambda n=n: models.resnet_cifar(6 * n + 2))) for n in (3, 9, 18)}
    examples = ", ".join(f"n = {n}: ResNet-{depth}" for n, depth in depths.items())
    d.text(WIDTH / 2, placed[-1].bottom + 26, examples, size=13, color=MUTED)
    d.height = placed[-1].bottom + 36
    return d


SINK_RADIUS = 13


def unrolled_paths() -> Drawing:
    """Veit et al. (2016), Fig. 1: three residual blocks, and the same net unrolled into 2^3 paths."""
    blocks = 3
    columns = [220 + 120 * i for i in range(blocks)]  # x of each residual branch F_i
    d = Drawing(
        "Three residual blocks unrolled into eight paths",
        "Top: x0 passes through three residual blocks, each adding its branch F_i to a shortcut. Bottom: the "
        "same network written as the sum of 2^3 = 8 paths from x0 to x3; each path passes through a subset of "
        "the branches: one through none, three through one, three through two, one through all three.",
    )
    d.text(WIDTH / 2, 24, f"{blocks} residual blocks", weight="bold")
    y = 82
    d.text(150, y + 5, "x_{0}", anchor="end")
    previous = 156
    for i, cx in enumerate(columns):
        add_x = cx + 58
        d.arrow([(previous, y), (cx - 24, y)])
        d.box(cx, y - 15, 48, (f"F_{{{i + 1}}}",))
        d.arrow([(cx + 24, y), (add_x - ADD_RADIUS, y)])
        d.plus(add_x, y)
        branch = cx - 44
        d.dot(branch, y, SHORTCUT)
        d.arrow([(branch, y), (branch, y - 34), (add_x, y - 34), (add_x, y - ADD_RADIUS)], SHORTCUT)
        previous = add_x + ADD_RADIUS
    d.arrow([(previous, y), (previous + 28, y)])
    d.text(previous + 32, y + 5, f"x_{{{blocks}}}", anchor="start")

    # Every subset of the blocks is one path; sorted by how many branches it passes through.
    paths = sorted(itertools.product((False, True), repeat=blocks), key=lambda used: (sum(used), used[::-1]))
    power = str(blocks).translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))
    d.text(WIDTH / 2, 150, f"unrolled: the same network as 2{power} = {len(paths)} paths", weight="bold")
    pitch, group_gap, top = 30, 10, 180
    rows_y = []
    y = top
    for k, used in enumerate(paths):
        if k and sum(used) != sum(paths[k - 1]):
            y += group_gap
        rows_y.append(y)
        y += pitch
    start_x, end_x, source_x, sink_x = 164, 520, 122, 572
    mid = (rows_y[0] + rows_y[-1]) / 2
    for length in range(blocks + 1):
        ys = [ry for ry, used in zip(rows_y, paths) if sum(used) == length]
        if length % 2 == 0:
            d.band(20, ys[0] - pitch / 2 + 1, 590, ys[-1] - ys[0] + pitch - 2, "#f3f3f3")
        label = f"{length} block" + ("" if length == 1 else "s")
        d.text(96, (ys[0] + ys[-1]) / 2 + 5, label, anchor="end", color=MUTED, size=13)
    for ry, used in zip(rows_y, paths):
        d.line([(source_x, mid), (start_x, ry)], "#888888")
        d.line([(start_x, ry), (end_x, ry)], SHORTCUT if not any(used) else INK)
        # Into the Σ circle's edge, without heads: eight heads would pile up on one point.
        dx, dy = sink_x - end_x, mid - ry
        reach = 1 - SINK_RADIUS / (dx * dx + dy * dy) ** 0.5
        d.line([(end_x, ry), (end_x + dx * reach, ry + dy * reach)], "#888888")
        for cx, on in zip(columns, used):
            if on:
                d.box(cx, ry - 11, 44, (f"F_{{{columns.index(cx) + 1}}}",), size=13, pad=2)
    d.dot(source_x, mid)
    d.text(source_x - 6, mid - 8, "x_{0}", anchor="end")
    d.elements.append(
        f'<circle cx="{_n(sink_x)}" cy="{_n(mid)}" r="{SINK_RADIUS}" fill="white" stroke="{INK}" '
        'stroke-width="1.6"/>'
    )
    d.text(sink_x, mid + 5, "Σ")
    d.arrow([(sink_x + SINK_RADIUS, mid), (sink_x + 44, mid)])
    d.text(sink_x + 48, mid + 5, f"x_{{{blocks}}}", anchor="start")
    d.text(WIDTH / 2, rows_y[-1] + 42,
           "the red row is the pure shortcut path; the longest path passes every branch", size=13, color=MUTED)
    d.height = rows_y[-1] + 56
    return d


def ddp_allreduce() -> Drawing:
    """One DistributedDataParallel step: N model copies, N data shards, gradients averaged by all-reduce."""
    ranks = 3
    columns = [120 + 220 * r for r in range(ranks)]
    d = Drawing(
        "DistributedDataParallel: one training step on three processes",
        "Every epoch is reshuffled and split into one shard per process. Each process holds a full copy of the "
        "model, runs forward and backward on a batch of its own shard and gets its own gradient. An all-reduce "
        "averages the gradients, so every process takes the same optimizer step and the copies stay identical.",
        height=500,
    )
    d.text(WIDTH / 2, 24, f"one training step with N = {ranks} processes", weight="bold")
    # The epoch, split into shards.
    bar_left, bar_right, bar_top = 30, WIDTH - 30, 62
    shard_width = (bar_right - bar_left) / ranks
    for r in range(ranks):
        d.rect(bar_left + r * shard_width, bar_top, shard_width, 28, "pool", rx=3)
        d.text(bar_left + (r + 0.5) * shard_width, bar_top + 19, f"shard {r} of the epoch", size=13)
    d.text(WIDTH / 2, bar_top - 10, "every epoch is reshuffled, then split: each sample goes to one rank",
           size=13, color=MUTED)
    box_width = 200
    for r, cx in enumerate(columns):
        d.arrow([(cx, bar_top + 28), (cx, 124)])
        d.text(cx, 142, f"rank {r}, GPU {r}", weight="bold")
        bottom = d.box(cx, 152, box_width, ("model copy: weights W",), "weight")
        d.arrow([(cx, bottom), (cx, bottom + 18)])
        bottom = d.box(cx, bottom + 18, box_width, ("forward, loss",), "plain")
        d.arrow([(cx, bottom), (cx, bottom + 18)])
        bottom = d.box(cx, bottom + 18, box_width, (f"backward: gradient g_{{{r}}}",), "plain")
        d.arrow([(cx, bottom), (cx, 318)])
        d.arrow([(cx, 374), (cx, 396)])
        bottom = d.box(cx, 396, box_width, ("optimizer step with g",), "weight")
    terms = " + ".join(f"g_{{{r}}}" for r in range(ranks))
    d.rect(30, 318, WIDTH - 60, 56, "shortcut")
    d.text(WIDTH / 2, 341, f"all-reduce: every rank gets g = ({terms}) / {ranks}", weight="bold")
    d.text(WIDTH / 2, 363, "runs during backward, bucket by bucket, over NCCL (GPUs) or gloo (CPUs)", size=13)
    d.text(WIDTH / 2, 458, "the same g on every rank, the same step: the copies stay identical", color=MUTED)
    d.text(WIDTH / 2, 482, "BatchNorm statistics are per rank unless the model uses SyncBatchNorm", size=13,
           color=MUTED)
    return d


FIGURES: dict[str, Callable[[], Drawing]] = {
    "residual-block": residual_block,
    "basic-vs-bottleneck": basic_vs_bottleneck,
    "preactivation": preactivation,
    "shortcut-options": shortcut_options,
    "resnet18": resnet18,
    "cifar-resnet": cifar_resnet,
    "unrolled-paths": unrolled_paths,
    "ddp-allreduce": ddp_allreduce,
}


def draw_all() -> dict[str, str]:
    """``{name: SVG text}`` of every diagram."""
    return {name: draw().svg() for name, draw in FIGURES.items()}


def stale_figures(folder: Path, drawn: dict[str, str]) -> list[str]:
    """Problems of ``folder`` against ``drawn``: missing, different or unknown SVG files, by name."""
    problems = []
    for name, text in drawn.items():
        path = folder / f"{name}.svg"
        if not path.is_file():
            problems.append(f"{path.name} is missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{path.name} differs from what scripts/draw_figures.py draws")
    for path in sorted(folder.glob("*.svg")):
        if path.stem not in drawn:
            problems.append(f"{path.name} is not drawn by scripts/draw_figures.py")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a committed SVG is stale")
    parser.add_argument("--out", type=Path, default=FIGURES_DIR, help="folder of the SVG files (book/figures)")
    args = parser.parse_args(argv)
    drawn = draw_all()
    if args.check:
        problems = stale_figures(args.out, drawn)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("run: python scripts/draw_figures.py", file=sys.stderr)
            return 1
        print(f"{len(drawn)} diagrams in {args.out} are up to date")
        return 0
    for name, text in drawn.items():
        with atomic_write(args.out / f"{name}.svg", "w") as f:
            f.write(text)
    print(f"wrote {len(drawn)} diagrams to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
