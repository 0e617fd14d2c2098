"""What a network costs to run: multiply-adds and forward-pass latency.

``count_macs`` counts the multiply-accumulate operations (MACs, also called
multiply-adds or mult-adds) of one forward pass with PyTorch's own
``torch.utils.flop_counter.FlopCounterMode``. A FLOP counter counts a multiply
and an add as two operations, so FLOPs = 2 x MACs. The "FLOPs" of He et al.'s
Table 1 (3.6 x 10^9 for ResNet-34) are multiply-adds: compare them with MACs.

The count runs the model on PyTorch's "meta" device, where tensors have shapes
but no data: counting ResNet-152 at 224x224 takes a fraction of a second and no
memory, and the model itself is not touched. A model whose forward needs real
numbers (data-dependent control flow such as ``.item()``) is counted with one
ordinary forward pass instead.

Only convolutions and matrix products are counted, as in the paper and in most
published tables. BatchNorm, ReLU, the residual additions and pooling are cheap
element-wise work and are left out; so are the bias additions.

``layer_table`` lists, for each module down to a given depth, its output shape, parameters and
multiply-adds, from one counting pass (a table like torchinfo's summary, narrow enough for a
book page); ``format_layer_table`` makes its numbers readable. ``PAPER_TABLE1_GFLOPS`` holds the
paper's own counts.

``forward_latency`` times forward passes: a few warm-up passes, then the mean
and standard deviation over repeated passes, synchronising a GPU around each
pass so that its asynchronous kernels are timed whole. ``InferenceWrapper`` runs a
model as it is deployed (channels-last inputs, bf16 autocast), and
``seed_post_003_model`` builds the networks of seed post 003's timing comparison
(ResNet-v2-152, VGG-16, Inception-v3), so that chapter 9 and ``benchmarks/latency.py``
time the same ones.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from itertools import chain
from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from .probes import recording_calls

__all__ = [
    "PAPER_TABLE1_GFLOPS",
    "run_flop_counter",
    "count_macs",
    "macs_by_module",
    "layer_table",
    "format_layer_table",
    "Latency",
    "forward_latency",
    "InferenceWrapper",
    "SEED_POST_003_MODELS",
    "SEED_POST_003_IMAGE_SIZES",
    "seed_post_003_model",
    "seed_post_003_image_size",
]

# He et al., "Deep Residual Learning" (2015; ResNet v1, not their initialisation paper of
# the same year), Table 1, bottom row: "FLOPs" of the ImageNet ResNets for one 224x224
# image, in units of 10^9. These "FLOPs" are multiply-adds (ResNet-34's 3.6 x 10^9 is what
# count_macs gives for it), as are the "GFLOPS" torchvision documents for its weights:
# compare them with count_macs / 1e9, not with a FLOP counter's total (twice as large).
PAPER_TABLE1_GFLOPS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6, "resnet152": 11.3}


def _check_size(name: str, size: Sequence[int]) -> tuple[int, ...]:
    size = tuple(size)
    if not size or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in size):
        raise ValueError(f"{name} must be a sequence of positive integers, got {size!r}")
    return size


def _reference_tensor(model: nn.Module) -> torch.Tensor | None:
    """The model's first parameter (or buffer): it tells where and in which dtype the model runs."""
    return next(chain(model.parameters(), model.buffers()), None)


def run_flop_counter(model: nn.Module, input_size: Sequence[int]) -> FlopCounterMode:
    """Run one forward pass of an ``input_size`` batch under a ``FlopCounterMode`` and return the counter.

    The pass runs on the meta device when it can (no data, no memory, the model untouched),
    else as one ordinary pass in eval mode where the model lives.
    """
    input_size = _check_size("input_size", input_size)
    reference = _reference_tensor(model)
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    was_training = model.training
    # Eval mode: a real forward in training mode would update BatchNorm's running statistics.
    model.eval()
    try:
        # Shape-only stand-ins for every weight; functional_call swaps them in for one call
        # and puts the real ones back, so the model is never copied or moved.
        stand_ins = {
            name: torch.empty_like(t, device="meta")
            for name, t in chain(model.named_parameters(), model.named_buffers())
        }
        counter = FlopCounterMode(display=False)
        try:
            with counter, torch.no_grad():
                functional_call(model, stand_ins, (torch.empty(input_size, dtype=dtype, device="meta"),))
        except (NotImplementedError, RuntimeError):
            # Some forward needs real numbers (e.g. `.item()`): count one real pass instead.
            device = reference.device if reference is not None else torch.device("cpu")
            counter = FlopCounterMode(display=False)
            with counter, torch.no_grad():
                model(torch.zeros(input_size, dtype=dtype, device=device))
    finally:
        model.train(was_training)
    return counter


def count_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-adds of one forward pass of a batch of shape ``input_size``.

    ``input_size`` includes the batch dimension, as in torchinfo: pass
    ``(1, 3, 224, 224)`` for the cost of one ImageNet image. Only convolutions
    and matrix products count (see the module docstring); FLOPs are twice this.

    >>> count_macs(nn.Conv2d(16, 32, 3, padding=1, bias=False), (1, 16, 8, 8)) == 16 * 32 * 9 * 8 * 8
    True
    """
    # Every counted op does one multiply and one add per MAC, so the FLOP total is even.
    return run_flop_counter(model, input_size).get_total_flops() // 2


def macs_by_module(model: nn.Module, input_size: Sequence[int]) -> dict[str, int]:
    """Multiply-adds of every module that does counted work, keyed by ``model.named_modules()`` names.

    A module's count includes its submodules', so ``result[""]`` is the whole
    model (``count_macs``), ``result["layer1"]`` a whole stage and
    ``result["layer1.0.conv1"]`` one convolution. Modules without convolutions
    or matrix products (BatchNorm, ReLU, pooling) are left out.
    """
    return _macs_by_name(run_flop_counter(model, input_size))


def _macs_by_name(counter: FlopCounterMode) -> dict[str, int]:
    # The counter names modules "<RootClass>.layer1.0.conv1" and adds a "Global" total: drop both.
    counts = counter.get_flop_counts()
    return {
        name.partition(".")[2]: sum(per_op.values()) // 2 for name, per_op in counts.items() if name != "Global"
    }


def _table_modules(model: nn.Module, depth: int) -> list[tuple[str, nn.Module]]:
    """The modules ``depth`` levels below ``model``, and the leaves above that level, in order.

    Together they cover the whole model once: depth 1 gives the direct children, depth 2 the
    children's children (a child without children stays as it is), and so on.
    """
    rows = []

    def visit(prefix: str, module: nn.Module, level: int) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if level == depth or next(child.children(), None) is None:
                rows.append((full, child))
            else:
                visit(f"{full}.", child, level + 1)

    visit("", model, 1)
    return rows


def layer_table(model: nn.Module, input_size: Sequence[int], depth: int = 1):
    """One row per module ``depth`` levels down: its type, output shape, parameters and multiply-adds.

    A pandas DataFrame indexed by module name (``"layer1"``, or ``"layer1.0"`` at depth 2) with
    the columns ``type``, ``output`` (the output shape, batch first, as a tuple), ``params``,
    ``% params`` (of the whole model) and ``MACs`` (multiply-adds for a batch of shape
    ``input_size``, see ``count_macs``). The numbers are exact, so the rows add up to
    ``count_parameters`` and ``count_macs``; ``format_layer_table`` prints them readably.
    Rows follow the order of the forward pass. Modules without children above ``depth`` are rows
    of their own, so the rows always cover the whole model once. Parameters that a module holds
    directly next to its children (none in ``utils.models``) are not in any row.

    Shapes and counts come from one pass on the meta device (``run_flop_counter``) with forward
    hooks on the rows' modules (``utils.probes.recording_calls``): the model is not touched.
    torchinfo's ``summary(model, input_size, depth=1)`` prints a similar table.
    """
    import pandas as pd  # local: only the tables need pandas

    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive integer (1: the direct children), got {depth!r}")
    rows = _table_modules(model, depth)
    with recording_calls(model, rows) as calls:
        counter = run_flop_counter(model, input_size)
    # A pass that fell back from the meta device to a real one recorded some calls twice: the last one counts.
    outputs = {call.name: call.output for call in calls}
    # Rows in the order the forward pass runs them (registration order can differ: torchvision's
    # ResNet registers maxpool before bn1); modules that never ran go last.
    first_call = {}
    for index, call in enumerate(calls):
        first_call.setdefault(call.name, index)
    rows.sort(key=lambda row: first_call.get(row[0], len(calls)))
    macs = _macs_by_name(counter)
    total_params = sum(p.numel() for p in model.parameters())
    table = pd.DataFrame(
        [
            {
                "layer": name,
                "type": type(module).__name__,
                "output": outputs.get(name),
                "params": sum(p.numel() for p in module.parameters()),
                "MACs": macs.get(name, 0),
            }
            for name, module in rows
        ],
        columns=["layer", "type", "output", "params", "MACs"],
    ).set_index("layer")
    table.insert(3, "% params", 100 * table["params"] / max(total_params, 1))
    return table


def _shape_text(shape) -> str:
    if shape is None:
        return "-"
    if shape and isinstance(shape[0], tuple):  # several outputs
        return ", ".join(_shape_text(s) for s in shape)
    return "x".join(str(s) for s in shape)


def format_layer_table(table):
    """``layer_table``'s numbers as text for reading: ``11,689,512``, ``1x64x56x56``, ``4.8``.

    Returns a new DataFrame of strings whose printed and HTML forms stay narrow (under 88
    characters for the ImageNet ResNets at depth 1 and 2): compute with ``table``, show this.
    """
    shown = table.copy()
    shown["output"] = [_shape_text(shape) for shape in table["output"]]
    shown["params"] = [f"{n:,}" for n in table["params"]]
    shown["% params"] = [f"{share:.1f}" for share in table["% params"]]
    shown["MACs"] = [f"{n:,}" for n in table["MACs"]]
    return shown


class Latency(NamedTuple):
    """Seconds per forward pass of one batch over ``repeats`` passes: mean, standard deviation, fastest.

    On a busy machine other processes can only slow a pass down, so ``min`` is the most
    stable of the three (the advice of Python's ``timeit``); mean ± std is what papers report.
    """

    mean: float
    std: float
    min: float
    repeats: int

    def __str__(self) -> str:
        return f"{1e3 * self.mean:.1f} ± {1e3 * self.std:.1f} ms per batch (n={self.repeats})"


def _synchronize(device: torch.device) -> None:
    # CUDA kernels run asynchronously: without waiting, a timer measures only their launch.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_latency(
    model: nn.Module,
    batch_size: int = 1,
    image_size: int | Sequence[int] = 224,
    device: torch.device | str | None = None,
    repeats: int = 20,
    warmup: int = 5,
    channels: int = 3,
) -> Latency:
    """Time inference (eval mode, no autograd) on a random ``(batch_size, channels, H, W)`` batch.

    ``warmup`` untimed passes come first (they pay for memory allocation, cuDNN's
    algorithm search and lazy initialisation), then ``repeats`` timed ones. With
    ``device`` given, the model is moved there (in place, like ``model.to``);
    otherwise it runs where its parameters are. The model's training mode is
    restored afterwards. The standard deviation is the sample one (0 for one repeat).
    """
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    image_size = _check_size("image_size", image_size)
    if len(image_size) != 2:
        raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    height, width = image_size
    _check_size("batch_size and channels", (batch_size, channels))
    _check_size("repeats", (repeats,))
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")

    if device is not None:
        device = torch.device(device)
        model.to(device)
    else:
        reference = _reference_tensor(model)
        device = reference.device if reference is not None else torch.device("cpu")
    x = torch.randn(batch_size, channels, height, width, device=device)

    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.inference_mode():
            for step in range(warmup + repeats):
                _synchronize(device)
                start = time.perf_counter()
                model(x)
                _synchronize(device)
                if step >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    std = statistics.stdev(times) if repeats > 1 else 0.0
    return Latency(statistics.fmean(times), std, min(times), repeats)


class InferenceWrapper(nn.Module):
    """Runs a model the way it is deployed: inputs in its memory format, under bf16 autocast if asked.

    ``precision`` is ``"fp32"`` or ``"bf16"`` (autocast: convolutions and matrix products in
    bfloat16, reductions kept in fp32); ``memory_format`` is ``"contiguous"`` (NCHW) or
    ``"channels_last"`` (NHWC; move the model itself with ``model.to(memory_format=...)`` too).
    ``forward_latency`` feeds a plain fp32 NCHW batch; converting it here puts the conversion
    inside the timed pass, as it would be in a real serving loop.
    """

    PRECISIONS = ("fp32", "bf16")
    MEMORY_FORMATS = ("contiguous", "channels_last")

    def __init__(self, model: nn.Module, precision: str = "fp32", memory_format: str = "contiguous"):
        super().__init__()
        if precision not in self.PRECISIONS:
            raise ValueError(f"precision must be one of {self.PRECISIONS}, got {precision!r}")
        if memory_format not in self.MEMORY_FORMATS:
            raise ValueError(f"memory_format must be one of {self.MEMORY_FORMATS}, got {memory_format!r}")
        self.model = model
        self.precision = precision
        self.memory_format = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return self.model(x)


# Seed post 003 times TF-slim's ResNet-v2-152 (batch 32, 224x224, 10 burn-in steps, 100 batches) and
# says its forward pass takes "only about 50 % more" time than VGGNet's and Inception-v3's.
SEED_POST_003_MODELS = ("resnet_v2_152", "vgg16", "inception_v3")
# The input each was designed for: Inception-v3's is 299x299 (Szegedy et al. 2016), where it
# does about twice its work at 224x224 (5.7 against 2.8 G multiply-adds); timed at 224 it
# would look about twice as fast as it is in use.
SEED_POST_003_IMAGE_SIZES = {"resnet_v2_152": 224, "vgg16": 224, "inception_v3": 299}


def seed_post_003_image_size(name: str, resnet_size: int = 224) -> int:
    """The side of the image to time ``name`` at when the ResNets get ``resnet_size``.

    Each network keeps its design size relative to the ResNets' 224: Inception-v3 gets 299
    for 224 (and 128 for a smoke test's 96), VGG-16 and ResNet-v2-152 ``resnet_size`` itself.
    """
    if name not in SEED_POST_003_IMAGE_SIZES:
        raise ValueError(f"unknown model {name!r}; expected one of {SEED_POST_003_MODELS}")
    return round(resnet_size * SEED_POST_003_IMAGE_SIZES[name] / 224)


def seed_post_003_model(name: str) -> nn.Module:
    """One network of seed post 003's comparison, 1000 classes, random weights (nothing is downloaded).

    ``resnet_v2_152``: pre-activation bottlenecks, [3, 8, 36, 3] blocks, as the post's TF-slim
    net (``utils.models.PreActBottleneck``); ``vgg16`` and ``inception_v3``: torchvision's (the
    latter without its auxiliary head, which inference does not run; its adaptive pooling takes
    224x224 inputs as well as the 299x299 it was designed for).
    """
    import torchvision  # local: only this comparison needs torchvision's other families

    from . import models

    if name == "resnet_v2_152":
        return models.ResNet(models.PreActBottleneck, [3, 8, 36, 3], num_classes=1000)
    if name == "vgg16":
        return torchvision.models.vgg16(weights=None)
    if name == "inception_v3":
        return torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    raise ValueError(f"unknown model {name!r}; expected one of {SEED_POST_003_MODELS}")
