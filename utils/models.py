"""Residual networks, in one readable file.

The layout follows torchvision's ``models/resnet.py`` on purpose: the same class
names (``BasicBlock``, ``Bottleneck``, ``ResNet``), the same ``_make_layer`` and,
above all, the same parameter names, so a torchvision ``state_dict`` loads into
these models and back with ``strict=True``.

On top of torchvision's ImageNet nets this file adds what the course needs:

* a CIFAR stem (3x3 conv, stride 1, no max-pool) and any number of input channels;
* the paper's CIFAR family ``resnet_cifar(depth)`` with 16/32/64 channels and
  shortcut option A (parameter-free zero padding) or B (1x1 projections);
* plain counterparts (same layers, no shortcut) for the degradation experiment;
* pre-activation blocks (ResNet v2, He et al. 2016, "Identity Mappings").

References: He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition"
(CVPR 2016, arXiv:1512.03385), cited below as [v1]; He, Zhang, Ren, Sun,
"Identity Mappings in Deep Residual Networks" (ECCV 2016, arXiv:1603.05027),
cited as [v2].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "PreActBasicBlock",
    "PreActBottleneck",
    "PadShortcut",
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnet_cifar",
    "plain_cifar",
    "count_parameters",
    "conv_output_size",
    "main_path_depth",
    "RoundTrip",
    "torchvision_round_trip",
    "SHORTCUT_OPTIONS",
    "STEMS",
]

SHORTCUT_OPTIONS = ("A", "B", "C")
STEMS = ("imagenet", "cifar")

NormLayer = Callable[[int], nn.Module]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1; no bias, because a BatchNorm follows."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution: changes the channel count (and, with stride 2, the size)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class PadShortcut(nn.Module):
    """Shortcut option A of [v1], Sec. 4.2: identity with zero padding.

    When a stage halves the feature map and widens the channels, the shortcut
    subsamples the input (every ``stride``-th pixel) and appends zero channels.
    It has no parameters, so ResNet-20 and plain-20 have exactly the same
    number of weights. A named module (not a lambda) keeps models picklable.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"PadShortcut can only add channels: got in_channels={in_channels}, "
                f"out_channels={out_channels}; expected out_channels >= in_channels"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - self.in_channels
        # F.pad pads the last dimensions first: (W left, W right, H top, H bottom, C front, C back).
        return F.pad(x, (0, 0, 0, 0, 0, extra))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut: out = ReLU(F(x) + x) ([v1], Fig. 2).

    With ``residual=False`` the block is the "plain" baseline of [v1] Sec. 4.1:
    the same layers with the addition removed.
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: NormLayer | None = None,
        residual: bool = True,
    ):
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        # The first conv carries the stride (it halves the map at a stage's start).
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            if self.downsample is not None:
                identity = self.downsample(x)
            out = out + identity  # H(x) = F(x) + x
        # ReLU comes after the addition ([v1], Fig. 2).
        return self.relu(out)

    def zero_init_last(self) -> None:
        """Start as an identity: F(x) = 0 because the last BN scales by zero."""
        nn.init.zeros_(self.bn2.weight)


class Bottleneck(nn.Module):
    """1x1 (reduce) - 3x3 - 1x1 (expand by 4) with a shortcut ([v1], Fig. 5 right).

    Like torchvision (often called "ResNet v1.5"), the stride sits on the 3x3
    convolution; the paper put it on the first 1x1, which skips 3/4 of the
    input pixels. The 3x3 placement is slightly more accurate.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: NormLayer | None = None,
        residual: bool = True,
    ):
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = norm_layer(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            if self.downsample is not None:
                identity = self.downsample(x)
            out = out + identity
        return self.relu(out)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)


class PreActBasicBlock(nn.Module):
    """Pre-activation basic block ([v2], Fig. 4e): BN-ReLU-conv, twice.

    Nothing touches the identity path: the output is exactly F(x) + x, with no
    ReLU after the addition, so a signal (and its gradient) can travel from any
    block to any other unchanged ([v2], Eq. 4-5).
    """

    expansion = 1
    preactivation = True

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: NormLayer | None = None,
        residual: bool = True,
    ):
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        self.bn1 = norm_layer(inplanes)
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not in place: x itself is the identity path and must stay untouched.
        preact = F.relu(self.bn1(x))
        out = self.conv1(preact)
        out = self.conv2(self.relu(self.bn2(out)))
        if not self.residual:
            return out
        return out + _preact_shortcut(self.downsample, x, preact)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.weight)


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck ([v2], used for ResNet-164 and ResNet-1001)."""

    expansion = 4
    preactivation = True

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: NormLayer | None = None,
        residual: bool = True,
    ):
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        self.bn1 = norm_layer(inplanes)
        self.conv1 = conv1x1(inplanes, planes)
        self.bn2 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = norm_layer(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = F.relu(self.bn1(x))
        out = self.conv1(preact)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        if not self.residual:
            return out
        return out + _preact_shortcut(self.downsample, x, preact)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.weight)


def _preact_shortcut(downsample: nn.Module | None, x: torch.Tensor, preact: torch.Tensor) -> torch.Tensor:
    """The shortcut of a pre-activation block.

    Identity and option A act on the raw input, keeping the path clean. A
    projection acts on the pre-activated input, sharing the block's first
    BN-ReLU as in the authors' code for [v2].
    """
    if downsample is None:
        return x
    if isinstance(downsample, PadShortcut):
        return downsample(x)
    return downsample(preact)


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class ResNet(nn.Module):
    """A residual network: stem, stages of blocks, global average pooling, a linear head.

    Args:
        block: ``BasicBlock``, ``Bottleneck`` or a pre-activation block.
        layers: blocks per stage, e.g. ``[2, 2, 2, 2]`` for ResNet-18.
        num_classes: outputs of the head. The model returns logits (no softmax):
            ``nn.CrossEntropyLoss`` applies log-softmax itself.
        in_channels: 3 for colour images, 1 for MNIST.
        stem: ``"imagenet"`` (7x7 conv stride 2 + 3x3 max-pool, for 224x224) or
            ``"cifar"`` (3x3 conv stride 1, no pooling, for 32x32 inputs).
        widths: channels of each stage before expansion; one entry per stage.
            The stem outputs ``widths[0]`` channels.
        shortcut: ``"A"`` zero-padding identity, ``"B"`` projection only where the
            shape changes (torchvision's choice), ``"C"`` projection everywhere
            ([v1], Sec. 3.3 and Table 3).
        residual: ``False`` builds the plain counterpart (no shortcuts at all).
        zero_init_residual: zero the last BN scale (or conv, for pre-activation
            blocks) of every block so each block starts as the identity
            (Goyal et al. 2017); torchvision's flag of the same name.
        norm_layer: normalisation layer factory, ``nn.BatchNorm2d`` by default.
    """

    def __init__(
        self,
        block: type[nn.Module],
        layers: Sequence[int],
        num_classes: int = 1000,
        *,
        in_channels: int = 3,
        stem: str = "imagenet",
        widths: Sequence[int] = (64, 128, 256, 512),
        shortcut: str = "B",
        residual: bool = True,
        zero_init_residual: bool = False,
        norm_layer: NormLayer | None = None,
    ):
        super().__init__()
        layers, widths = list(layers), list(widths)
        if len(layers) == 0 or len(layers) != len(widths):
            raise ValueError(
                f"layers={layers} must have one entry per stage, i.e. {len(widths)} entries "
                f"to match widths={widths}"
            )
        for i, n in enumerate(layers):
            _check_positive_int(f"layers[{i}]", n)
        for i, w in enumerate(widths):
            _check_positive_int(f"widths[{i}]", w)
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("in_channels", in_channels)
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; expected one of {STEMS}")
        if zero_init_residual and not residual:
            raise ValueError(
                "zero_init_residual=True with residual=False would zero every block of a plain net "
                "(its output would not depend on the input); expected zero_init_residual=False for plain nets"
            )
        if shortcut not in SHORTCUT_OPTIONS:
            raise ValueError(f"unknown shortcut option {shortcut!r}; expected one of {SHORTCUT_OPTIONS}")

        self._norm_layer = norm_layer or nn.BatchNorm2d
        self.shortcut = shortcut
        self.residual = residual
        preact = getattr(block, "preactivation", False)
        self.inplanes = widths[0]

        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            # 32x32 inputs are too small to shrink 4x right away ([v1], Sec. 4.2).
            self.conv1 = conv3x3(in_channels, self.inplanes)
            self.maxpool = nn.Identity()
        # A pre-activation net starts every block with BN-ReLU, so its stem is a bare conv,
        # and it needs one BN-ReLU after the last block instead ([v2], Fig. 4e).
        self.bn1 = nn.Identity() if preact else self._norm_layer(self.inplanes)
        self.relu = nn.Identity() if preact else nn.ReLU(inplace=True)

        for i, (planes, blocks) in enumerate(zip(widths, layers)):
            stride = 1 if i == 0 else 2  # every stage after the first halves the map
            setattr(self, f"layer{i + 1}", self._make_layer(block, planes, blocks, stride))
        self.num_stages = len(layers)
        out_channels = widths[-1] * block.expansion
        self.final_act = (
            nn.Sequential(self._norm_layer(out_channels), nn.ReLU(inplace=True)) if preact else nn.Identity()
        )
        # Adaptive pooling: any input size works (no hard-coded 4 or 7).
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(out_channels, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He initialisation for ReLU nets (He et al. 2015, "Delving deep into rectifiers").
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if hasattr(m, "zero_init_last"):
                    m.zero_init_last()

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        out_channels = planes * block.expansion
        preact = getattr(block, "preactivation", False)
        downsample = None
        shape_changes = stride != 1 or self.inplanes != out_channels
        if self.residual and (shape_changes or self.shortcut == "C"):
            if self.shortcut == "A":
                downsample = PadShortcut(self.inplanes, out_channels, stride) if shape_changes else None
            elif preact:
                # The next block normalises its input, so no BN on this projection ([v2]).
                downsample = nn.Sequential(conv1x1(self.inplanes, out_channels, stride))
            else:
                downsample = nn.Sequential(
                    conv1x1(self.inplanes, out_channels, stride), self._norm_layer(out_channels)
                )

        layers = [block(self.inplanes, planes, stride, downsample, self._norm_layer, self.residual)]
        self.inplanes = out_channels
        for _ in range(1, blocks):
            downsample = None
            if self.residual and self.shortcut == "C":
                downsample = nn.Sequential(conv1x1(self.inplanes, out_channels))
                if not preact:
                    downsample.append(self._norm_layer(out_channels))
            layers.append(block(self.inplanes, planes, 1, downsample, self._norm_layer, self.residual))
        return nn.Sequential(*layers)

    def stages(self) -> list[tuple[str, nn.Module]]:
        """The network as named pieces in forward order (for shape tables and hooks)."""
        names = ["conv1", "bn1", "relu", "maxpool"] + [f"layer{i + 1}" for i in range(self.num_stages)]
        names += ["final_act", "avgpool"]
        return [(name, getattr(self, name)) for name in names]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Everything up to (and including) the global average pooling, flattened."""
        for _, module in self.stages():
            x = module(x)
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def _resnet(block: type[nn.Module], layers: list[int], num_classes: int, **kwargs) -> ResNet:
    return ResNet(block, layers, num_classes, **kwargs)


def resnet18(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-18: basic blocks, [2, 2, 2, 2] ([v1], Table 1)."""
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes, **kwargs)


def resnet34(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-34: basic blocks, [3, 4, 6, 3]."""
    return _resnet(BasicBlock, [3, 4, 6, 3], num_classes, **kwargs)


def resnet50(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-50: bottleneck blocks, [3, 4, 6, 3]."""
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes, **kwargs)


def resnet101(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-101: bottleneck blocks, [3, 4, 23, 3]."""
    return _resnet(Bottleneck, [3, 4, 23, 3], num_classes, **kwargs)


def resnet152(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-152: bottleneck blocks, [3, 8, 36, 3]."""
    return _resnet(Bottleneck, [3, 8, 36, 3], num_classes, **kwargs)


def resnet_cifar(
    depth: int,
    num_classes: int = 10,
    *,
    shortcut: str = "A",
    residual: bool = True,
    preact: bool = False,
    widths: Sequence[int] = (16, 32, 64),
    **kwargs,
) -> ResNet:
    """The CIFAR-10 nets of [v1], Sec. 4.2: depth = 6n + 2.

    A 3x3 conv with 16 channels, then three stages of n basic blocks with
    16, 32 and 64 channels on 32x32, 16x16 and 8x8 maps, global average pooling
    and a 10-way linear layer. 6n + 2 counts the 2n convolutions per stage, the
    first conv and the final linear layer. ``widths`` narrows or widens the three
    stages (a narrow net trains faster on a CPU); the default is the paper's.
    """
    if len(widths) != 3:
        raise ValueError(f"widths={tuple(widths)} must give the channels of the three stages, e.g. (16, 32, 64)")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(
            f"depth={depth!r} is not of the form 6n + 2 with n >= 1; expected 8, 14, 20, 32, 44, 56, 110, ..."
        )
    n = (depth - 2) // 6
    block = PreActBasicBlock if preact else BasicBlock
    return ResNet(
        block,
        [n, n, n],
        num_classes,
        stem="cifar",
        widths=tuple(widths),
        shortcut=shortcut,
        residual=residual,
        **kwargs,
    )


def plain_cifar(depth: int, num_classes: int = 10, **kwargs) -> ResNet:
    """The plain CIFAR net of [v1], Sec. 4.2: ``resnet_cifar`` without shortcuts."""
    return resnet_cifar(depth, num_classes, residual=False, **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int | tuple[int, int] = 0) -> int:
    """Output length along one axis of a convolution or pooling layer: floor((n + 2p - k) / s) + 1.

    ``padding`` is the zeros added on each side, or a pair (before, after) for asymmetric padding
    such as TensorFlow's ``'same'``: then floor((n + before + after - k) / s) + 1.

    >>> conv_output_size(224, kernel_size=7, stride=2, padding=3)
    112
    """
    before, after = (padding, padding) if not isinstance(padding, (tuple, list)) else tuple(padding)
    for name, value in (("size", size), ("kernel_size", kernel_size), ("stride", stride)):
        _check_positive_int(name, value)
    for value in (before, after):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"padding must be a non-negative integer or a pair of them, got {padding!r}")
    padded = size + before + after
    if kernel_size > padded:
        raise ValueError(
            f"kernel_size={kernel_size} is larger than the padded input ({size} + padding {before} + {after} "
            f"= {padded}); expected kernel_size <= {padded}"
        )
    return (padded - kernel_size) // stride + 1


_WEIGHTED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def main_path_depth(model: nn.Module) -> int:
    """The depth in a ResNet's name: its weighted layers on the main path ([v1], Table 1).

    Counts every convolution and fully connected layer except those of the projection shortcuts
    (the modules registered as ``downsample``, torchvision's name and ours): the stem convolution,
    the convolutions of every residual branch and the final linear layer. ResNet-18 has
    1 + 2 * 8 + 1 = 18; the CIFAR nets of [v1] Sec. 4.2 have 6n + 2. BatchNorm and pooling layers
    have no weights in this sense and are not counted, as in the paper.
    """
    shortcut_layers = {
        id(inner)
        for name, module in model.named_modules()
        if name.rpartition(".")[2] == "downsample"
        for inner in module.modules()
    }
    return sum(isinstance(m, _WEIGHTED_LAYERS) and id(m) not in shortcut_layers for m in model.modules())


class RoundTrip(NamedTuple):
    """Largest absolute difference of the logits after each load of ``torchvision_round_trip``.

    ``max(round_trip)`` is the larger of the two.
    """

    into_ours: float
    into_theirs: float


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()  # BatchNorm with its running statistics: the network as a function of x
    try:
        with torch.no_grad():
            return model(x)
    finally:
        model.train(was_training)


def torchvision_round_trip(
    ours: nn.Module, theirs: nn.Module, input_size: Sequence[int], generator: torch.Generator | None = None
) -> RoundTrip:
    """Load each model's ``state_dict`` into the other with ``strict=True`` and compare the outputs.

    First ``theirs`` (e.g. ``torchvision.models.resnet50(weights=None)``) gets random BatchNorm
    statistics and is loaded into ``ours``; then ``ours`` gets new random BatchNorm statistics and
    is loaded into ``theirs``. After each load both models run in evaluation mode on the same
    random batch of shape ``input_size``. A fresh BatchNorm is nearly the identity, so the random
    statistics (``probes.randomize_batchnorm_``) make a BatchNorm in the wrong place visible.

    ``strict=True`` raises a ``RuntimeError`` that lists the missing and unexpected names when
    the two models do not have the same parameters and buffers. Both models are overwritten.
    Returns the largest absolute difference of the logits after each load: the same network
    gives differences of float rounding (about 1e-6), a different one differences of order 1.
    """
    from .probes import randomize_batchnorm_  # probes imports this module: import it when called

    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    x = torch.randn(tuple(input_size), generator=generator)
    x = x.to(next(ours.parameters()).device)
    differences = []
    for source, target in ((theirs, ours), (ours, theirs)):
        randomize_batchnorm_(source, generator)
        target.load_state_dict(source.state_dict(), strict=True)
        differences.append((_logits(target, x) - _logits(source, x)).abs().max().item())
    return RoundTrip(*differences)
