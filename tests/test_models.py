"""utils.models against torchvision (the reference) and against the paper's numbers."""

import pickle

import pytest
import torch
import torchvision
from torch import nn

from utils import models, probes

DEPTHS = [18, 34, 50, 101, 152]
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}
# ResNet v1 (He et al., "Deep Residual Learning", 2015), Sec. 4.2, option A shortcuts: 0.27M / 0.46M / 0.66M / 0.85M / 1.7M.
CIFAR_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}


@pytest.mark.parametrize("depth", DEPTHS)
def test_torchvision_state_dicts_load_both_ways_with_identical_outputs(depth):
    torch.manual_seed(depth)
    ours = getattr(models, f"resnet{depth}")(num_classes=10).train()
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=10)
    differences = models.torchvision_round_trip(ours, reference, (2, 3, 64, 64))
    assert isinstance(differences, models.RoundTrip) and max(differences) <= 1e-5, differences
    assert ours.training, "the round trip restores the training mode"
    # After the round trip both hold the same weights, and BatchNorm is no longer the identity.
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in ours.state_dict().items())
    assert not torch.equal(ours.bn1.running_var, torch.ones(64))
    with torch.no_grad():
        assert ours.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_round_trip_sees_a_different_function_and_refuses_different_names():
    ours = models.resnet18(num_classes=10)
    ours.relu = nn.Identity()  # the same state_dict, but no ReLU after the stem
    differences = models.torchvision_round_trip(ours, torchvision.models.resnet18(weights=None, num_classes=10), (1, 3, 64, 64))
    assert min(differences) > 1e-2, differences
    with pytest.raises(RuntimeError, match="Missing key|Unexpected key"):
        models.torchvision_round_trip(models.resnet18(), torchvision.models.resnet34(weights=None), (1, 3, 32, 32))


@pytest.mark.parametrize("depth", DEPTHS)
def test_parameter_counts_match_torchvision(depth):
    model = getattr(models, f"resnet{depth}")()
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    assert models.count_parameters(model) == TORCHVISION_PARAMS[depth] == models.count_parameters(reference)
    assert list(model.state_dict()) == list(reference.state_dict())


@pytest.mark.parametrize("depth", sorted(CIFAR_PARAMS))
def test_cifar_parameter_counts_option_a_and_plain(depth):
    assert models.count_parameters(models.resnet_cifar(depth)) == CIFAR_PARAMS[depth]
    # Option A adds no parameters, so the plain twin has exactly as many.
    assert models.count_parameters(models.plain_cifar(depth)) == CIFAR_PARAMS[depth]
    # Option B adds two 1x1 projections with their BNs: (16*32 + 2*32) + (32*64 + 2*64).
    assert models.count_parameters(models.resnet_cifar(depth, shortcut="B")) == CIFAR_PARAMS[depth] + 2_752


def _stage_shapes(model: models.ResNet, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    return probes.record_output_shapes(model, x, model.stages())


@pytest.mark.parametrize(
    "builder, expected",
    [
        (models.resnet18, {"maxpool": (1, 64, 56, 56), "layer1": (1, 64, 56, 56), "layer2": (1, 128, 28, 28),
                           "layer3": (1, 256, 14, 14), "layer4": (1, 512, 7, 7), "avgpool": (1, 512, 1, 1)}),
        (models.resnet50, {"maxpool": (1, 64, 56, 56), "layer1": (1, 256, 56, 56), "layer2": (1, 512, 28, 28),
                           "layer3": (1, 1024, 14, 14), "layer4": (1, 2048, 7, 7), "avgpool": (1, 2048, 1, 1)}),
    ],
)  # fmt: skip
def test_stage_output_shapes_imagenet(builder, expected):
    shapes = _stage_shapes(builder(), torch.randn(1, 3, 224, 224))
    assert shapes["conv1"] == (1, 64, 112, 112)
    for name, shape in expected.items():
        assert shapes[name] == shape, name


def test_stage_output_shapes_cifar_and_grayscale():
    shapes = _stage_shapes(models.resnet_cifar(20), torch.randn(2, 3, 32, 32))
    assert shapes["conv1"] == (2, 16, 32, 32)
    assert (shapes["layer1"], shapes["layer2"], shapes["layer3"]) == ((2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8))
    mnist = models.resnet18(num_classes=10, in_channels=1, stem="cifar")
    shapes = _stage_shapes(mnist, torch.randn(2, 1, 28, 28))
    assert shapes["layer4"] == (2, 512, 4, 4)
    # Grayscale changes only conv1: 64*1*7*7 instead of 64*3*7*7 weights.
    assert models.count_parameters(models.resnet18(in_channels=1)) == TORCHVISION_PARAMS[18] - 64 * 2 * 49


def test_plain_nets_have_no_shortcut_path():
    plain, resnet = models.plain_cifar(20).eval(), models.resnet_cifar(20).eval()
    assert not any(isinstance(m, models.PadShortcut) for m in plain.modules())
    assert all(b.downsample is None and not b.residual for b in plain.modules() if isinstance(b, models.BasicBlock))
    # Functional check: with every block's convolutions zeroed, a plain net forgets its input
    # while a residual net still carries it through the shortcuts.
    for net in (plain, resnet):
        for name, m in net.named_modules():
            if name.startswith("layer") and isinstance(m, nn.Conv2d):
                nn.init.zeros_(m.weight)
    x1, x2 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain(x1), plain(x2))
        assert not torch.allclose(resnet(x1), resnet(x2))


def test_option_b_projects_only_where_the_shape_changes_and_c_everywhere():
    b = models.resnet_cifar(20, shortcut="B")
    c = models.resnet_cifar(20, shortcut="C")
    count = lambda m: sum(isinstance(blk, models.BasicBlock) and blk.downsample is not None for blk in m.modules())  # noqa: E731
    assert count(b) == 2
    assert count(c) == 9


def test_pad_shortcut_subsamples_and_zero_pads():
    x = torch.randn(2, 16, 8, 8)
    out = models.PadShortcut(16, 32, stride=2)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(out[:, 16:]) == 0


def test_zero_initialised_block_passes_non_negative_input_unchanged():
    block = models.BasicBlock(8, 8).eval()
    block.zero_init_last()
    x = torch.rand(2, 8, 5, 5)  # non-negative, like the output of a previous ReLU
    with torch.no_grad():
        assert torch.equal(block(x), x)
        assert not torch.equal(block(-x), -x)  # the ReLU after the addition clips negatives


def test_zero_init_residual_makes_preactivation_blocks_exact_identities():
    for block in (models.PreActBasicBlock(8, 8), models.PreActBottleneck(32, 8)):
        block.zero_init_last()
        x = torch.randn(2, block.bn1.num_features, 6, 6)  # negative values too: no ReLU on the path
        with torch.no_grad():
            assert torch.equal(block.eval()(x), x)


def test_zero_init_residual_flag_zeroes_last_bn_like_torchvision():
    ours = models.resnet50(zero_init_residual=True)
    reference = torchvision.models.resnet50(weights=None, zero_init_residual=True)
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in ours.modules() if isinstance(b, models.Bottleneck))
    zeroed = lambda m: {k for k, v in m.state_dict().items() if v.ndim and v.abs().sum() == 0 and "weight" in k}  # noqa: E731
    assert zeroed(ours) == zeroed(reference)


def test_preactivation_net_trains_a_step_and_has_a_final_bn():
    net = models.resnet_cifar(20, preact=True)
    assert isinstance(net.bn1, nn.Identity) and isinstance(net.final_act[0], nn.BatchNorm2d)
    out = net(torch.randn(4, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (4, 10) and net.conv1.weight.grad is not None


def test_models_return_logits_and_pickle():
    net = models.resnet_cifar(8)
    assert isinstance(net.fc, nn.Linear) and not any(isinstance(m, nn.Softmax) for m in net.modules())
    clone = pickle.loads(pickle.dumps(net))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(clone.eval()(x), net.eval()(x))


def test_any_input_size_works():
    net = models.resnet18(num_classes=3).eval()
    with torch.no_grad():
        for size in (32, 57, 96):
            assert net(torch.randn(1, 3, size, size)).shape == (1, 3)


@pytest.mark.parametrize("depth", [21, 0, 2, -4, 20.0, "20", True])
def test_resnet_cifar_rejects_bad_depths(depth):
    with pytest.raises(ValueError, match=r"depth=.*6n \+ 2"):
        models.resnet_cifar(depth)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layers": [2, 2, 2]}, r"layers=\[2, 2, 2\] must have one entry per stage, i.e. 4"),
        ({"layers": []}, r"layers=\[\]"),
        ({"layers": [2, 0, 2, 2]}, r"layers\[1\] must be a positive integer, got 0"),
        ({"layers": [2, 2, -1, 2]}, r"layers\[2\] must be a positive integer, got -1"),
        ({"num_classes": 0}, r"num_classes must be a positive integer, got 0"),
        ({"in_channels": 0}, r"in_channels must be a positive integer, got 0"),
        ({"widths": (64, 0, 256, 512)}, r"widths\[1\] must be a positive integer, got 0"),
        ({"shortcut": "D"}, r"unknown shortcut option 'D'; expected one of \('A', 'B', 'C'\)"),
        ({"stem": "mnist"}, r"unknown stem 'mnist'; expected one of \('imagenet', 'cifar'\)"),
        ({"residual": False, "zero_init_residual": True}, r"zero_init_residual=True with residual=False"),
    ],
)
def test_resnet_rejects_bad_arguments(kwargs, message):
    args = {"layers": [2, 2, 2, 2], "num_classes": 10} | kwargs
    layers, num_classes = args.pop("layers"), args.pop("num_classes")
    with pytest.raises(ValueError, match=message):
        models.ResNet(models.BasicBlock, layers, num_classes, **args)


def test_pad_shortcut_rejects_fewer_channels():
    with pytest.raises(ValueError, match="out_channels=8"):
        models.PadShortcut(16, 8)


@pytest.mark.parametrize(
    "size, kernel, stride, padding, expected",
    [
        (224, 7, 2, 3, 112),  # the ImageNet stem
        (112, 3, 2, 1, 56),  # its max-pool
        (56, 3, 2, 1, 28),
        (57, 3, 2, 1, 29),  # odd sizes round up
        (32, 3, 1, 1, 32),  # "same" at stride 1
        (7, 7, 1, 0, 1),
        (56, 3, 2, (0, 1), 28),  # TensorFlow's asymmetric 'same' padding
        (224, 7, 2, (2, 3), 112),
    ],
)
def test_conv_output_size_matches_real_layers(size, kernel, stride, padding, expected):
    assert models.conv_output_size(size, kernel, stride, padding) == expected
    before, after = padding if isinstance(padding, tuple) else (padding, padding)
    x = torch.nn.functional.pad(torch.zeros(1, 1, size, size), (before, after, before, after))
    assert nn.Conv2d(1, 1, kernel, stride=stride)(x).shape[-1] == expected


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 3), "size must be a positive integer, got 0"),
        ((8, 3, 0), "stride must be a positive integer, got 0"),
        ((8, 3, 1, -1), r"padding must be a non-negative integer or a pair of them, got -1"),
        ((8, 3, 1, (1, -1)), r"got \(1, -1\)"),
        ((2, 5, 1, 1), r"kernel_size=5 is larger than the padded input \(2 \+ padding 1 \+ 1 = 4\)"),
        ((8.0, 3), "size must be a positive integer, got 8.0"),
    ],
)
def test_conv_output_size_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        models.conv_output_size(*args)


@pytest.mark.parametrize(
    "builder, depth",
    [
        (models.resnet18, 18), (models.resnet34, 34), (models.resnet50, 50), (models.resnet101, 101),
        (models.resnet152, 152),
        (lambda: models.resnet_cifar(20), 20), (lambda: models.resnet_cifar(56, shortcut="C"), 56),
        (lambda: models.resnet_cifar(110, shortcut="B", preact=True), 110), (lambda: models.plain_cifar(32), 32),
        (lambda: models.ResNet(models.PreActBottleneck, [1, 2, 1], widths=(8, 16, 32), shortcut="C"), 14),
    ],
)  # fmt: skip
def test_main_path_depth_is_the_number_in_the_name(builder, depth):
    with torch.device("meta"):
        model = builder()
    assert models.main_path_depth(model) == depth
    # The projections are the only weighted layers left out.
    weighted = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    projections = sum(isinstance(m, nn.Conv2d) for name, m in model.named_modules() if ".downsample." in f".{name}.")
    assert weighted - projections == depth


def test_cifar_nets_take_narrower_widths():
    narrow = models.resnet_cifar(20, widths=(8, 16, 32))
    assert [narrow.layer1[0].conv1.out_channels, narrow.layer3[0].conv1.out_channels] == [8, 32]
    assert models.count_parameters(models.resnet_cifar(20)) == CIFAR_PARAMS[20], "default: the paper's widths"
    assert models.count_parameters(models.plain_cifar(20, widths=(8, 16, 32))) == models.count_parameters(narrow)
    with pytest.raises(ValueError, match=r"widths=\(8, 16\) must give the channels of the three stages"):
        models.resnet_cifar(20, widths=(8, 16))
