"""utils.models against torchvision (the reference) and against the paper's numbers."""

import pickle

import pytest
import torch
import torchvision
from torch import nn

from utils import models

DEPTHS = [18, 34, 50, 101, 152]
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}
# He et al. 2016, Sec. 4.2, option A shortcuts: 0.27M / 0.46M / 0.66M / 0.85M / 1.7M.
CIFAR_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}


def _randomise_norm_stats(model: nn.Module, seed: int) -> None:
    """Give every BN non-trivial statistics and affine parameters, so eval mode is a real test."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("depth", DEPTHS)
def test_torchvision_state_dicts_load_both_ways_with_identical_outputs(depth):
    torch.manual_seed(depth)
    ours = getattr(models, f"resnet{depth}")(num_classes=10).eval()
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=10).eval()
    _randomise_norm_stats(reference, seed=1)
    x = torch.randn(2, 3, 64, 64)

    ours.load_state_dict(reference.state_dict(), strict=True)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max() <= 1e-5

    # ... and back: fresh weights of ours into a fresh torchvision net.
    torch.manual_seed(depth + 100)
    ours = getattr(models, f"resnet{depth}")(num_classes=10).eval()
    _randomise_norm_stats(ours, seed=2)
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=10).eval()
    reference.load_state_dict(ours.state_dict(), strict=True)
    with torch.no_grad():
        out = ours(x)
        assert (out - reference(x)).abs().max() <= 1e-5
    assert out.shape == (2, 10)


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
    shapes = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape))) for n, m in model.stages()]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return shapes


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
