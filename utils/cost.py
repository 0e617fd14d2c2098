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

``forward_latency`` times forward passes: a few warm-up passes, then the mean
and standard deviation over repeated passes, synchronising a GPU around each
pass so that its asynchronous kernels are timed whole.
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

__all__ = ["run_flop_counter", "count_macs", "macs_by_module", "Latency", "forward_latency"]


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
    counts = run_flop_counter(model, input_size).get_flop_counts()
    # The counter names modules "<RootClass>.layer1.0.conv1" and adds a "Global" total: drop both.
    return {
        name.partition(".")[2]: sum(per_op.values()) // 2 for name, per_op in counts.items() if name != "Global"
    }


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
