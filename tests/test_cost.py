"""Tests for utils.cost: multiply-add counts against independent counts, the layer table, and the
latency timer (on a fake clock: no test here depends on how fast the machine is)."""

import pytest
import torch
from torch import nn

from utils import cost, models, probes


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


def _macs_from_hooked_shapes(model, size):
    """An independent count: every conv's and linear layer's output shape, recorded with forward
    hooks, times the length of the dot product behind each output value."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    total = 0
    for call in probes.trace_calls(model, torch.zeros(size), layers):
        layer = dict(layers)[call.name]
        out = torch.Size(call.output).numel()
        if isinstance(layer, nn.Conv2d):
            total += out * layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
        else:
            total += out * layer.in_features
    return total


@pytest.mark.parametrize("factory", [models.resnet18, models.resnet50, models.plain_cifar])
def test_whole_nets_match_a_count_from_hooked_shapes(factory):
    model = factory(20) if factory is models.plain_cifar else factory(num_classes=10)
    size = (2, 3, 64, 64)
    assert cost.count_macs(model, size) == _macs_from_hooked_shapes(model, size)


@pytest.mark.parametrize("depth", [18, 34])
def test_basic_block_nets_match_the_paper_table(depth):
    # ResNet v1 (He et al., "Deep Residual Learning", 2015), Table 1 counts multiply-adds ("FLOPs") at 224x224; the basic-block nets have
    # no stride to move, so ours must agree up to the paper's rounding (it prints 3.66 as 3.6).
    with torch.device("meta"):
        model = getattr(models, f"resnet{depth}")()
    gmacs = cost.count_macs(model, (1, 3, 224, 224)) / 1e9
    assert abs(gmacs - cost.PAPER_TABLE1_GFLOPS[f"resnet{depth}"]) < 0.07, gmacs
    assert list(cost.PAPER_TABLE1_GFLOPS) == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_layer_table_adds_up_to_the_whole_model(depth):
    model = models.resnet50(num_classes=10)
    size = (1, 3, 64, 64)
    table = cost.layer_table(model, size, depth=depth)
    assert list(table.columns) == ["type", "output", "params", "% params", "MACs"]
    assert table["params"].sum() == models.count_parameters(model)
    assert table["MACs"].sum() == cost.count_macs(model, size)
    assert table["% params"].sum() == pytest.approx(100)
    names = dict(model.named_modules())
    for name, row in table.iterrows():
        assert row["type"] == type(names[name]).__name__
        assert row["params"] == models.count_parameters(names[name]), name
        assert name.count(".") == depth - 1 or not list(names[name].children()), f"{name} is not at depth {depth}"
    shapes = probes.record_output_shapes(model, torch.zeros(size), list(table.index))
    assert table["output"].to_dict() == shapes


def test_layer_table_rows_follow_the_forward_pass():
    table = cost.layer_table(models.resnet18(), (1, 3, 224, 224))
    # torchvision's layout registers maxpool before bn1; the table lists them as they run.
    assert list(table.index) == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
                                 "final_act", "avgpool", "fc"]  # fmt: skip
    assert table.loc["layer4", "output"] == (1, 512, 7, 7)
    assert table.loc["fc", "params"] == 512 * 1000 + 1000 and table.loc["fc", "MACs"] == 512 * 1000
    assert table.loc["conv1", "MACs"] == conv_macs(3, 64, 7, 112, 112)


@pytest.mark.parametrize("name, depth", [("resnet18", 1), ("resnet50", 2), ("resnet152", 1), ("resnet152", 2)])
def test_formatted_layer_table_fits_a_page_and_says_its_units(name, depth):
    with torch.device("meta"):
        model = getattr(models, name)()
    table = cost.layer_table(model, (1, 3, 224, 224), depth=depth)
    shown = cost.format_layer_table(table)
    text = shown.to_string()
    width = max(len(line) for line in text.splitlines())
    assert width <= 88, f"{name} at depth {depth}: {width} characters\n{text}"
    assert shown.loc["conv1", "params"] == "9,408" and shown.loc["conv1", "output"] == "1x64x112x112"
    assert shown.loc["conv1", "MACs"] == f"{conv_macs(3, 64, 7, 112, 112):,}"
    assert "9,408" in shown.to_html()
    assert table.loc["conv1", "params"] == 9408, "the table itself keeps exact numbers"


def test_layer_table_does_not_touch_the_model_and_rejects_bad_depths():
    model = models.resnet_cifar(8).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cost.layer_table(model, (2, 3, 16, 16), depth=2)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0, "hooks left behind"
    for depth in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="depth must be a positive integer"):
            cost.layer_table(model, (1, 3, 16, 16), depth=depth)


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
    """A model whose n-th forward pass takes seconds[n] on a fake clock; it records how it was called.

    It advances ``clock["now"]`` instead of sleeping, so timings are exact and independent of the
    machine's load.
    """

    def __init__(self, seconds=(0.0,), clock=None):
        super().__init__()
        self.seconds = list(seconds)
        self.clock = clock if clock is not None else {"now": 0.0}
        self.calls = 0
        self.shapes = set()
        self.grad_enabled = set()

    def forward(self, x):
        self.clock["now"] += self.seconds[min(self.calls, len(self.seconds) - 1)]
        self.calls += 1
        self.shapes.add(tuple(x.shape))
        self.grad_enabled.add(torch.is_grad_enabled())
        return x


def test_forward_latency_times_the_repeats_only(monkeypatch):
    # Three slow warm-up passes (0.3 s), then four fast ones (0.01 s): only the fast ones may count.
    clock = {"now": 0.0}
    monkeypatch.setattr(cost.time, "perf_counter", lambda: clock["now"])
    model = Sleeper([0.3] * 3 + [0.01] * 4, clock=clock).train()
    latency = cost.forward_latency(model, batch_size=2, image_size=(8, 6), device="cpu", repeats=4, warmup=3)
    assert model.calls == 3 + 4
    assert model.shapes == {(2, 3, 8, 6)}
    assert model.grad_enabled == {False}
    assert model.training, "forward_latency must restore training mode"
    assert latency.repeats == 4
    assert latency.min == pytest.approx(0.01) and latency.mean == pytest.approx(0.01), latency
    assert latency.std == pytest.approx(0.0, abs=1e-12)
    assert str(latency) == "10.0 ± 0.0 ms per batch (n=4)"


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
    # A real network runs; only the structure of the result is checked, never its speed.
    latency = cost.forward_latency(models.resnet18(num_classes=10), image_size=32, repeats=1, warmup=0)
    assert latency.mean == latency.min and latency.std == 0.0 and latency.repeats == 1


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"warmup": -1}, {"batch_size": 0}, {"image_size": (8,)}])
def test_forward_latency_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        cost.forward_latency(Sleeper(), **kwargs)


def test_inference_wrapper_converts_inside_the_pass_and_rejects_unknown_settings():
    seen = []

    class Recorder(nn.Module):
        def forward(self, x):
            seen.append((x.is_contiguous(memory_format=torch.channels_last), torch.is_autocast_enabled("cpu")))
            return x

    x = torch.randn(2, 3, 4, 4)
    cost.InferenceWrapper(Recorder(), "fp32", "contiguous")(x)
    cost.InferenceWrapper(Recorder(), "bf16", "channels_last")(x)
    assert seen == [(False, False), (True, True)]
    with pytest.raises(ValueError, match="precision"):
        cost.InferenceWrapper(Recorder(), "fp16")
    with pytest.raises(ValueError, match="memory_format"):
        cost.InferenceWrapper(Recorder(), "fp32", "nhwc")


def test_seed_post_003_models_are_the_posts_and_torchvisions():
    from torchvision.models import get_model_weights

    assert cost.SEED_POST_003_MODELS == ("resnet_v2_152", "vgg16", "inception_v3")
    with torch.device("meta"):
        built = {name: cost.seed_post_003_model(name) for name in cost.SEED_POST_003_MODELS}
    resnet = built["resnet_v2_152"]
    assert isinstance(resnet.layer1[0], models.PreActBottleneck)
    assert [len(resnet.get_submodule(f"layer{i}")) for i in range(1, 5)] == [3, 8, 36, 3]
    assert models.main_path_depth(resnet) == 152 and resnet.fc.out_features == 1000
    # torchvision documents VGG-16's size and its "GFLOPS", which are multiply-adds (as for the
    # ResNets, chapter 5): count_macs must give them, not half or twice them.
    documented = get_model_weights("vgg16").IMAGENET1K_V1.meta
    assert models.count_parameters(built["vgg16"]) == documented["num_params"]
    assert round(cost.count_macs(built["vgg16"], (1, 3, 224, 224)) / 1e9, 2) == documented["_ops"]
    assert built["inception_v3"].AuxLogits is None, "inference does not run the auxiliary head"
    with pytest.raises(ValueError, match="unknown model"):
        cost.seed_post_003_model("vgg19")


def test_seed_post_003_networks_are_timed_at_their_design_size():
    # Inception-v3 was designed for 299x299: at 224 it does half the work it does in use.
    assert cost.SEED_POST_003_IMAGE_SIZES["inception_v3"] == 299
    assert [cost.seed_post_003_image_size(n) for n in cost.SEED_POST_003_MODELS] == [224, 224, 299]
    assert cost.seed_post_003_image_size("inception_v3", 96) == 128
    with pytest.raises(ValueError, match="resnet_v2_152"):
        cost.seed_post_003_image_size("alexnet")
