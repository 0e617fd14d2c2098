"""Looking inside networks: shapes, BatchNorm statistics, lesions and loss landscapes.

Four groups of tools, shared by the chapters and the tests:

**Shapes with forward hooks.**
    ``recording_calls`` hooks modules and records every call (the module's name, its input
    shape, its output shape) while a block of code runs; ``trace_calls`` runs one forward pass
    under it and returns the calls in order; ``record_output_shapes`` returns them as
    ``{name: output shape}``. The hooks are removed afterwards, also when the forward pass fails,
    and the model's own code stays untouched (no prints in ``forward``).
**Trained-looking BatchNorm.**
    ``randomize_batchnorm_`` gives every BatchNorm layer random running statistics and affine
    parameters. A fresh BatchNorm is (almost) the identity in evaluation mode, so a test that
    compares two networks in evaluation mode would not notice a BatchNorm in the wrong place.
**Lesions** (Veit, Wilber and Belongie 2016).
    ``lesion`` returns a copy of a net with some blocks' residual branches removed, so that each
    such block computes only its shortcut (``BlockShortcut``); ``lesion_study`` removes one block
    at a time and measures the accuracy, image by image; ``subset_accuracies`` splits those
    into disjoint test subsets, to show how much one accuracy varies between subsets.
**Loss landscapes** (Li, Xu, Taylor, Studer and Goldstein 2018).
    ``filter_normalized_direction`` draws a random direction in weight space with every filter
    scaled to the norm of the trained filter; ``loss_surface`` evaluates the loss on a 1-D or
    2-D grid along such directions; ``local_minima`` and ``nonconvex_share`` say how smooth it
    is; ``plot_loss_contours`` draws a 2-D grid.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import models, train

__all__ = [
    "ModuleCall",
    "recording_calls",
    "trace_calls",
    "record_output_shapes",
    "randomize_batchnorm_",
    "BLOCK_TYPES",
    "residual_blocks",
    "BlockShortcut",
    "lesion",
    "lesion_study",
    "subset_accuracies",
    "normalize_filters_",
    "filter_normalized_direction",
    "loss_surface",
    "local_minima",
    "nonconvex_share",
    "plot_loss_contours",
]

# ============================================================================ shapes

ModuleSelection = Iterable[str] | Iterable[tuple[str, nn.Module]] | Mapping[str, nn.Module] | None


class ModuleCall(NamedTuple):
    """One call of a hooked module: its name, the shape of its first input and of its output.

    A shape is a tuple of ints; for an input or output that is a tuple or list of tensors it is a
    tuple of their shapes, and ``None`` for anything else.
    """

    name: str
    input: tuple | None
    output: tuple | None


def _shape(value: object) -> tuple | None:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return tuple(tuple(v.shape) for v in value)
    return None


def _selected_modules(model: nn.Module, modules: ModuleSelection) -> list[tuple[str, nn.Module]]:
    """``modules`` as (name, module) pairs; ``None`` means the direct children of ``model``."""
    if modules is None:
        return list(model.named_children())
    if isinstance(modules, Mapping):
        modules = modules.items()
    selected = []
    for entry in modules:
        if isinstance(entry, str):
            try:
                selected.append((entry, model.get_submodule(entry)))
            except AttributeError:
                children = [name for name, _ in model.named_children()]
                raise ValueError(
                    f"{type(model).__name__} has no submodule {entry!r}; its direct children are {children}"
                ) from None
        elif isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], nn.Module):
            selected.append((str(entry[0]), entry[1]))
        else:
            raise TypeError(
                f"modules must hold submodule names or (name, module) pairs (as named_children() gives), "
                f"got {entry!r}"
            )
    return selected


@contextlib.contextmanager
def recording_calls(model: nn.Module, modules: ModuleSelection = None) -> Iterator[list[ModuleCall]]:
    """Record every call of the chosen modules of ``model`` while the ``with`` block runs.

    ``modules`` are the direct children of ``model`` by default; otherwise names of submodules
    (``"layer2.0.conv1"``), (name, module) pairs such as ``model.stages()``, or a mapping from names
    to modules. Yields a list that fills with a ``ModuleCall`` per call, in the order of the calls
    (a module called twice, such as a block's shared ReLU, appears twice). The hooks are removed
    when the block ends, also when it raises.
    """
    calls: list[ModuleCall] = []

    def recorder(name: str):
        def hook(_module: nn.Module, inputs: tuple, output: object) -> None:
            calls.append(ModuleCall(name, _shape(inputs[0]) if inputs else None, _shape(output)))

        return hook

    handles = [module.register_forward_hook(recorder(name)) for name, module in _selected_modules(model, modules)]
    try:
        yield calls
    finally:
        for handle in handles:  # a hook stays on its module until removed
            handle.remove()


@contextlib.contextmanager
def _evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode for the block, then each one's own mode back."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def trace_calls(model: nn.Module, x: torch.Tensor, modules: ModuleSelection = None) -> list[ModuleCall]:
    """Run ``model(x)`` once and return every call of the chosen modules, in order (``recording_calls``).

    The pass runs in evaluation mode without autograd, so it changes nothing in the model (a
    training-mode pass would update BatchNorm's running statistics); each module's mode is restored
    afterwards. ``x`` may live on the meta device: shapes need no data.
    """
    with recording_calls(model, modules) as calls, _evaluation_mode(model), torch.no_grad():
        model(x)
    return calls


def record_output_shapes(
    model: nn.Module, x: torch.Tensor, modules: ModuleSelection = None
) -> dict[str, tuple | None]:
    """``{name: output shape}`` of the chosen modules for one forward pass of ``x`` (``trace_calls``).

    Shapes include the batch dimension. A module called more than once keeps the shape of its last
    call; a module that is not called is missing.
    """
    return {call.name: call.output for call in trace_calls(model, x, modules)}


# ============================================================================ BatchNorm


@torch.no_grad()
def randomize_batchnorm_(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Give every BatchNorm layer of ``model`` random statistics and affine parameters, in place.

    Scales are drawn from U(0.5, 1.5), shifts and running means from N(0, 0.2²), running variances
    from U(0.5, 2): the kind of values a trained network has. A fresh BatchNorm (scale 1, shift 0,
    mean 0, variance 1) is nearly the identity in evaluation mode, so without this two networks
    can agree in evaluation mode even when their BatchNorm layers are mixed up. The numbers are
    drawn on the CPU from ``generator`` (the global generator if None), so a seed gives the same
    values on every device. Returns ``model``, whose training mode is left as it was.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no BatchNorm layer to randomise; expected a model with "
            "nn.BatchNorm1d/2d/3d layers"
        )

    def draw(tensor: torch.Tensor | None, sample) -> None:
        if tensor is not None:
            values = sample(torch.empty(tensor.shape, dtype=torch.float32))
            tensor.copy_(values.to(dtype=tensor.dtype))

    for bn in layers:
        draw(bn.weight, lambda t: t.uniform_(0.5, 1.5, generator=generator))
        draw(bn.bias, lambda t: t.normal_(0.0, 0.2, generator=generator))
        draw(bn.running_mean, lambda t: t.normal_(0.0, 0.2, generator=generator))
        draw(bn.running_var, lambda t: t.uniform_(0.5, 2.0, generator=generator))
    return model


# ============================================================================ lesions

BLOCK_TYPES = (models.BasicBlock, models.Bottleneck, models.PreActBasicBlock, models.PreActBottleneck)


def residual_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every block of ``model`` in forward order, named as in ``named_modules()`` (``"layer1.0"``, ...)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, BLOCK_TYPES)]


def _block_shape(block: nn.Module) -> tuple[int, int, int]:
    """Input channels, output channels and stride of a block of ``utils.models``."""
    last = block.conv3 if hasattr(block, "conv3") else block.conv2
    return block.conv1.in_channels, last.out_channels, block.stride


def _changes_shape(block: nn.Module) -> bool:
    in_channels, out_channels, stride = _block_shape(block)
    return stride != 1 or in_channels != out_channels


class BlockShortcut(nn.Module):
    """What a block computes once its residual branch F is removed: its shortcut alone.

    A post-activation block computes ReLU(F(x) + s(x)) and becomes ReLU(s(x)); a
    pre-activation block computes F(x) + s(x) and becomes s(x) (a pre-activation projection
    shortcut reads the block's first BN-ReLU, so that stays). ``s`` is the identity, option A's zero
    padding or the projection the block already has.

    A plain block has no shortcut. It is replaced by the parameter-free mapping a residual
    net would have there (the identity, or option A where the shape changes), so that the
    network still runs: the comparison of Veit et al. (2016), who delete layers from VGG.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        if not isinstance(block, BLOCK_TYPES):
            names = ", ".join(t.__name__ for t in BLOCK_TYPES)
            raise TypeError(f"expected a block of utils.models ({names}), got {type(block).__name__}")
        self.preactivation = getattr(block, "preactivation", False)
        if getattr(block, "residual", True):
            shortcut = block.downsample
        else:
            in_channels, out_channels, stride = _block_shape(block)
            shortcut = models.PadShortcut(in_channels, out_channels, stride) if _changes_shape(block) else None
        self.shortcut = shortcut
        # A pre-activation projection shortcut acts on the block's pre-activated input.
        projection = shortcut is not None and not isinstance(shortcut, models.PadShortcut)
        self.preact_norm = block.bn1 if self.preactivation and projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact_norm is not None:
            out = self.shortcut(F.relu(self.preact_norm(x)))
        else:
            out = x if self.shortcut is None else self.shortcut(x)
        return out if self.preactivation else F.relu(out)


def _block_name(model: nn.Module, block: int | str) -> str:
    names = [name for name, _ in residual_blocks(model)]
    if isinstance(block, str):
        if block not in names:
            raise ValueError(f"no block named {block!r}; the blocks are {names}")
        return block
    if isinstance(block, bool) or not isinstance(block, int) or not -len(names) <= block < len(names):
        raise ValueError(f"block index {block!r} out of range: the model has {len(names)} blocks")
    return names[block]


def lesion(model: nn.Module, *blocks: int | str) -> nn.Module:
    """A copy of ``model`` in which each of ``blocks`` (index in forward order, or name) is only its shortcut.

    ``model`` itself is left untouched. ``lesion(model)`` with no block is a plain copy.
    """
    names = [_block_name(model, b) for b in blocks]
    lesioned = copy.deepcopy(model)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = lesioned.get_submodule(parent_name) if parent_name else lesioned
        setattr(parent, child, BlockShortcut(parent.get_submodule(child)))
    return lesioned


def lesion_study(model: nn.Module, loader: Iterable, device: torch.device | str | None = None) -> dict:
    """Test accuracy of ``model`` with each block removed in turn ([Veit et al. 2016], Fig. 3).

    Returns ``{"baseline": accuracy, "blocks": names, "accuracy": one per block,
    "downsampling": whether each block changes the shape, "baseline_correct": whether each
    image is classified correctly (a bool array), "correct": the same per block, shape
    (blocks, images)}``. The per-image arrays let ``subset_accuracies`` show how much an
    accuracy moves from one test subset to another.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    blocks = residual_blocks(model)

    def correct(net: nn.Module) -> np.ndarray:
        predicted, labels = train.predict(net.to(device), loader, device)
        return (predicted == labels).numpy()

    baseline = correct(model)
    lesioned = np.array([correct(lesion(model, name)) for name, _ in blocks], dtype=bool)
    lesioned = lesioned.reshape(len(blocks), len(baseline))
    return {
        "baseline": float(baseline.mean()),
        "blocks": [name for name, _ in blocks],
        "accuracy": [float(row.mean()) for row in lesioned],
        "downsampling": [_changes_shape(b) for _, b in blocks],
        "baseline_correct": baseline,
        "correct": lesioned,
    }


def subset_accuracies(correct: np.ndarray, subsets: int, seed: int = 0) -> np.ndarray:
    """Accuracy on each of ``subsets`` disjoint random test subsets of equal size.

    ``correct`` is a bool array whose last axis runs over the images (``lesion_study``'s
    ``"correct"`` or ``"baseline_correct"``); the result replaces that axis by one accuracy
    per subset. The same seed gives every row the same subsets, so differences between rows
    are paired. Images beyond a multiple of ``subsets`` are left out.
    """
    correct = np.asarray(correct, dtype=float)
    images = correct.shape[-1]
    if isinstance(subsets, bool) or not isinstance(subsets, int) or not 1 <= subsets <= images:
        raise ValueError(f"subsets={subsets!r} must be an integer from 1 to the {images} images")
    size = images // subsets
    order = np.random.default_rng(seed).permutation(images)[: size * subsets]
    return correct[..., order].reshape(*correct.shape[:-1], subsets, size).mean(axis=-1)


# ============================================================================ loss landscapes


@torch.no_grad()
def normalize_filters_(direction: torch.Tensor, weight: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Scale every filter of ``direction`` (in place) to the norm of the same filter of ``weight``.

    A filter is a slice along dimension 0: one output channel of a convolution, one output
    unit (row) of a linear layer. Li et al. (2018, Sec. 4): d_ij <- d_ij ||w_ij|| / ||d_ij||.
    """
    if direction.shape != weight.shape or direction.ndim < 2:
        raise ValueError(
            f"direction {tuple(direction.shape)} and weight {tuple(weight.shape)} must have the same shape, "
            "with at least 2 dimensions (filters along dimension 0)"
        )
    flat = direction.view(len(direction), -1)  # a view: scaling it scales direction
    target = weight.reshape(len(weight), -1).norm(dim=1, keepdim=True)
    flat.mul_(target / (flat.norm(dim=1, keepdim=True) + eps))
    return direction


def filter_normalized_direction(model: nn.Module, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """A random Gaussian direction in the weight space of ``model``, filter-normalised.

    One tensor per parameter, by name. Weights with filters are normalised with
    ``normalize_filters_``; 1-D parameters (BatchNorm scales and shifts, biases) get a zero
    direction, as in Li et al.'s code (``--xignore biasbn``): the plots move only the
    convolution and linear weights.
    """
    direction = {}
    for name, p in model.named_parameters():
        d = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        direction[name] = d.zero_() if p.ndim <= 1 else normalize_filters_(d, p.detach())
    return direction


@torch.no_grad()
def loss_surface(
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    directions: Sequence[Mapping[str, torch.Tensor]],
    coordinates: Sequence[Sequence[float]],
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Mean cross-entropy over ``batches`` at theta + sum_k c_k d_k, for every point of a grid.

    ``directions`` holds one or two directions (``filter_normalized_direction``) and
    ``coordinates`` the values along each; the result has shape ``(len(c_1), len(c_2), ...)``.
    The model is evaluated in evaluation mode (BatchNorm with its running statistics) on a
    copy: ``model`` is left untouched.
    """
    if len(directions) != len(coordinates) or not directions:
        raise ValueError(
            f"got {len(directions)} directions and {len(coordinates)} coordinate lists; "
            "expected as many of each, at least one"
        )
    device = torch.device(device) if device is not None else next(model.parameters()).device
    probe = copy.deepcopy(model).to(device).eval()
    params = dict(probe.named_parameters())
    origin = {name: p.detach().clone() for name, p in params.items()}
    moved = [{name: d[name].to(device) for name in params} for d in directions]
    grid = np.empty([len(c) for c in coordinates])
    for index in np.ndindex(*grid.shape):
        for name, p in params.items():
            p.copy_(origin[name])
            for k, direction in enumerate(moved):
                p.add_(direction[name], alpha=float(coordinates[k][index[k]]))
        grid[index] = train.evaluate(probe, batches, device)[0]
    return grid


def local_minima(surface: np.ndarray) -> list[tuple[int, ...]]:
    """The grid points of a 1-D or 2-D loss surface lower than all their neighbours (8 in 2-D).

    A smooth basin has one, at its bottom; a chaotic surface has many (Li et al. 2018, Fig. 5).
    Points on the border count too, compared with the neighbours they have.
    """
    surface = np.asarray(surface, dtype=float)
    if surface.ndim not in (1, 2) or min(surface.shape) < 2:
        raise ValueError(f"expected a 1-D or 2-D grid of at least 2 points an axis, got {surface.shape}")
    padded = np.pad(surface, 1, constant_values=np.inf)
    minima = []
    for index in np.ndindex(*surface.shape):
        window = padded[tuple(slice(i, i + 3) for i in index)]
        centre = window[(1,) * surface.ndim]
        if (window > centre).sum() == window.size - 1:
            minima.append(tuple(int(i) for i in index))
    return minima


def nonconvex_share(surface: np.ndarray) -> float:
    """The share of interior grid points where the surface curves downwards along some axis.

    The discrete second difference ``f(x - h) - 2 f(x) + f(x + h)`` is taken along every axis;
    a point counts when any of them is negative. A convex bowl has none; a smooth basin that
    flattens out far from its bottom has some there; a chaotic surface has many.
    """
    surface = np.asarray(surface, dtype=float)
    if min(surface.shape) < 3:
        raise ValueError(f"expected at least 3 points an axis, got {surface.shape}")
    inner = tuple(slice(1, -1) for _ in range(surface.ndim))
    concave = np.zeros(surface[inner].shape, dtype=bool)
    for axis in range(surface.ndim):
        second = np.diff(surface, n=2, axis=axis)
        others = tuple(slice(None) if a == axis else slice(1, -1) for a in range(surface.ndim))
        concave |= second[others] < 0
    return float(concave.mean())


def plot_loss_contours(
    ax, alphas: Sequence[float], betas: Sequence[float], losses: np.ndarray, levels: int = 12, title: str = ""
):
    """Contours of a 2-D loss surface (``losses[i, j]`` at ``alphas[i]``, ``betas[j]``), log-spaced levels."""
    losses = np.asarray(losses, dtype=float)
    lo, hi = float(losses.min()), float(losses.max())
    contour = ax.contour(alphas, betas, losses.T, levels=np.geomspace(lo, hi, levels), cmap="viridis")
    ax.clabel(contour, fontsize=7, fmt="%.2g")
    ax.plot(0, 0, "k+", markersize=10)  # the trained weights
    ax.set_xlabel(r"$\alpha$ (direction 1)")
    ax.set_ylabel(r"$\beta$ (direction 2)")
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return contour
