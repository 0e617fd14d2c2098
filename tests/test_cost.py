"""Tests for utils.cost: multiply-add counts against independent counts, and the latency timer."""

import time

import pytest
import torch
import torchinfo
from torch import nn

from utils import cost, models


def conv_macs(c_in, c_out, kernel, h_out, w_out, groups=1, batch=1):
    """Hand formula: every output value is a dot product of length c_in / groups * k * k."""
    return batch * c_out * h_out * w_out * (c_in // groups) * kernel * kernel


@pytest.mark.parametrize(
    "c_in, c_out, kernel, stride, padding, groups, size, batch",
    [
        (16, 32, 3, 1, 1, 1, 8, 1),
        (16, 32, 3, 2, 1, 1, 9, 1),  # odd size, stride 2: output 5x5
        (8, 8, 3, 1, 1, 4, 6, 3),  # grouped, batch of 3
        (3, 64, 7, 2, 3, 1, 32, 2),  # the ImageNet stem on a small image
        (64, 256, 1, 1, 0, 1, 7, 1),  # a bottleneck's 1x1 expansion
    ],
)
def test_single_conv_matches_hand_formula(c_in, c_out, kernel, stride, padding, groups, size, batch):
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, groups=groups, bias=False)
    out = (size + 2 * padding - kernel) // stride + 1
    assert cost.count_macs(conv, (batch, c_in, size, size)) == conv_macs(c_in, c_out, kernel, out, out, groups, batch)


def test_linear_matches_hand_formula():
    assert cost.count_macs(nn.Linear(512, 1000), (4, 512)) == 4 * 512 * 1000


def test_bottleneck_block_matches_hand_formula():
    # He et al. Fig. 5 (right): 256-d input, 64-d bottleneck, on a 56x56 map.
    block = models.Bottleneck(256, 64)
    expected = conv_macs(256, 64, 1, 56, 56) + conv_macs(64, 64, 3, 56, 56) + conv_macs(64, 256, 1, 56, 56)
    assert cost.count_macs(block, (1, 256, 56, 56)) == expected


def test_strided_bottleneck_counts_its_projection_shortcut():
    # The first block of ResNet-50's stage 2: 256 -> 128 -> 512 channels, stride 2 on the 3x3 conv.
    model = models.resnet50()
    block = model.layer2[0]
    expected = (
        conv_macs(256, 128, 1, 56, 56)  # the 1x1 reduce still sees the full 56x56 map
        + conv_macs(128, 128, 3, 28, 28)
        + conv_macs(128, 512, 1, 28, 28)
        + conv_macs(256, 512, 1, 28, 28)  # projection shortcut
    )
    assert cost.count_macs(block, (1, 256, 56, 56)) == expected


@pytest.mark.parametrize("factory", [models.resnet18, models.resnet50])
def test_whole_resnet_matches_torchinfo(factory):
    # torchinfo counts in its own way (hooks on real forward passes); its per-layer MACs of
    # convolutions plus the fc weight's share must equal ours. (torchinfo also adds BatchNorm
    # parameters and the fc bias, which FLOP counters leave out.)
    torch.manual_seed(0)
    model = factory(num_classes=10)
    size = (2, 3, 64, 64)
    summary = torchinfo.summary(model, input_size=size, verbose=0)
    conv = sum(layer.macs for layer in summary.summary_list if layer.class_name == "Conv2d")
    fc_weight = size[0] * model.fc.in_features * model.fc.out_features
    assert cost.count_macs(model, size) == conv + fc_weight


def test_resnet_macs_scale_with_batch_and_area():
    model = models.resnet18()
    one = cost.count_macs(model, (1, 3, 64, 64))
    assert cost.count_macs(model, (3, 3, 64, 64)) == 3 * one
    # Every conv's cost scales with its map area (x4); only the fc layer does not.
    fc = model.fc.in_features * model.fc.out_features
    assert cost.count_macs(model, (1, 3, 128, 128)) - fc == 4 * (one - fc)


def test_resnet18_at_224_matches_a_hand_count():
    # A model built on the meta device has no data at all: counting must still work.
    with torch.device("meta"):
        resnet18 = models.resnet18()
    expected = conv_macs(3, 64, 7, 112, 112) + 512 * 1000  # stem and fc
    c_in = 64
    for width, size in [(64, 56), (128, 28), (256, 14), (512, 7)]:
        # Two basic blocks of two 3x3 convs; the first conv maps c_in -> width.
        expected += conv_macs(c_in, width, 3, size, size) + 3 * conv_macs(width, width, 3, size, size)
        if c_in != width:
            expected += conv_macs(c_in, width, 1, size, size)  # projection shortcut
        c_in = width
    assert cost.count_macs(resnet18, (1, 3, 224, 224)) == expected


def test_count_does_not_touch_the_model():
    model = models.resnet18(num_classes=10)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cost.count_macs(model, (2, 3, 32, 32))
    assert model.training, "count_macs must restore training mode"
    after = model.state_dict()
    for name, value in before.items():
        assert after[name].device.type == "cpu", f"{name} moved to {after[name].device}"
        assert torch.equal(after[name], value), f"{name} changed"


class DataDependent(nn.Module):
    """A forward that branches on a value: it cannot run on the meta device."""

    def __init__(self):
        super().__init__()
        self.small = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.large = nn.Conv2d(3, 4, 5, padding=2, bias=False)

    def forward(self, x):
        return self.small(x) if x.abs().sum().item() == 0 else self.large(x)


def test_falls_back_to_a_real_forward():
    model = DataDependent()
    # The fallback feeds zeros, so the 3x3 branch runs.
    assert cost.count_macs(model, (1, 3, 10, 10)) == conv_macs(3, 4, 3, 10, 10)


def test_macs_by_module_names_and_totals():
    model = models.resnet50()
    size = (1, 3, 64, 64)
    per_module = cost.macs_by_module(model, size)
    names = dict(model.named_modules())
    assert set(per_module) <= set(names), set(per_module) - set(names)
    assert per_module[""] == cost.count_macs(model, size)
    leaves = [n for n, m in names.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert sorted(n for n in per_module if n in leaves) == sorted(leaves)
    assert sum(per_module[n] for n in leaves) == per_module[""]
    stages = ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert sum(per_module[n] for n in stages) == per_module[""]
    assert per_module["layer1.0"] == cost.count_macs(model.layer1[0], (1, 64, 16, 16))


@pytest.mark.parametrize("size", [(), (1, 3, 0, 8), (1, 3, 8.0, 8), (1, 3, True, 8)])
def test_bad_input_size_is_rejected(size):
    with pytest.raises(ValueError, match="input_size"):
        cost.count_macs(nn.Conv2d(3, 4, 3), size)


class Sleeper(nn.Module):
    """A model whose n-th forward pass takes seconds[n]; it records how it was called.

    With a ``clock`` it advances that fake clock instead of sleeping, which makes timings exact.
    """

    def __init__(self, seconds=(0.0,), clock=None):
        super().__init__()
        self.seconds = list(seconds)
        self.clock = clock
        self.calls = 0
        self.shapes = set()
        self.grad_enabled = set()

    def forward(self, x):
        duration = self.seconds[min(self.calls, len(self.seconds) - 1)]
        if self.clock is None:
            time.sleep(duration)
        else:
            self.clock["now"] += duration
        self.calls += 1
        self.shapes.add(tuple(x.shape))
        self.grad_enabled.add(torch.is_grad_enabled())
        return x


def test_forward_latency_times_the_repeats_only():
    # Three slow warm-up passes (0.3 s), then four fast ones (0.01 s): only the fast ones may count.
    model = Sleeper([0.3] * 3 + [0.01] * 4).train()
    latency = cost.forward_latency(model, batch_size=2, image_size=(8, 6), device="cpu", repeats=4, warmup=3)
    assert model.calls == 3 + 4
    assert model.shapes == {(2, 3, 8, 6)}
    assert model.grad_enabled == {False}
    assert model.training, "forward_latency must restore training mode"
    assert latency.repeats == 4
    assert 0.01 <= latency.min <= latency.mean < 0.2, latency
    assert 0 <= latency.std < latency.mean
    assert "ms per batch (n=4)" in str(latency)


def test_forward_latency_statistics_on_a_fake_clock(monkeypatch):
    clock = {"now": 0.0}
    monkeypatch.setattr(cost.time, "perf_counter", lambda: clock["now"])
    model = Sleeper([5.0, 0.01, 0.05, 0.01, 0.05], clock=clock)  # one warm-up pass, four timed ones
    latency = cost.forward_latency(model, image_size=4, repeats=4, warmup=1)
    assert latency.min == pytest.approx(0.01)
    assert latency.mean == pytest.approx(0.03)
    # The sample standard deviation: squared deviations of 0.02, divided by n - 1 = 3.
    assert latency.std == pytest.approx((4 * 0.02**2 / 3) ** 0.5)


def test_forward_latency_one_repeat_and_real_model():
    latency = cost.forward_latency(models.resnet18(num_classes=10), image_size=32, repeats=1, warmup=0)
    assert latency.mean == latency.min > 0 and latency.std == 0.0 and latency.repeats == 1


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"warmup": -1}, {"batch_size": 0}, {"image_size": (8,)}])
def test_forward_latency_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        cost.forward_latency(Sleeper(), **kwargs)
