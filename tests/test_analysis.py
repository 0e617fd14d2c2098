"""utils.analysis: lesions (a block becomes its shortcut) and loss landscapes (filter-normalised directions)."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils import analysis, models, train


def _randomise_batchnorm(model, seed=0):
    """Random BN scales, shifts and statistics, as after training (fresh BN is nearly an identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.weight.uniform_(0.5, 1.5, generator=generator)
            bn.bias.normal_(0.0, 0.2, generator=generator)
            bn.running_mean.normal_(0.0, 0.2, generator=generator)
            bn.running_var.uniform_(0.5, 2.0, generator=generator)
    return model.eval()


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _zero_residual_branch(block):
    """Make F(x) exactly 0 without touching the shortcut: the last BN outputs 0 (post-activation)
    or the last convolution does (pre-activation). An independent way to get 'only the shortcut'."""
    with torch.no_grad():
        if getattr(block, "preactivation", False):
            (block.conv3 if hasattr(block, "conv3") else block.conv2).weight.zero_()
        else:
            last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
            last_bn.weight.zero_()
            last_bn.bias.zero_()


NETS = {
    "resnet20 (option A)": lambda: models.resnet_cifar(20),
    "resnet14 (option B)": lambda: models.resnet_cifar(14, shortcut="B"),
    "pre-activation, option B": lambda: models.resnet_cifar(14, shortcut="B", preact=True),
    "pre-activation, option A": lambda: models.resnet_cifar(14, preact=True),
    "bottleneck, option C": lambda: models.ResNet(
        models.Bottleneck, [1, 2], 10, stem="cifar", widths=(8, 16), shortcut="C"
    ),
}


@pytest.mark.parametrize("name", list(NETS))
def test_a_lesioned_block_computes_its_shortcut_alone(name):
    torch.manual_seed(0)
    model = _randomise_batchnorm(NETS[name]())
    x = torch.randn(3, 3, 16, 16)
    before = _state(model)
    with torch.no_grad():
        expected_logits = model(x)
    blocks = analysis.residual_blocks(model)
    assert [n for n, _ in blocks] == [n for n, m in model.named_modules() if isinstance(m, analysis.BLOCK_TYPES)]
    for index, (block_name, block) in enumerate(blocks):
        lesioned = analysis.lesion(model, index)
        assert isinstance(lesioned.get_submodule(block_name), analysis.BlockShortcut)
        oracle = copy.deepcopy(model)
        _zero_residual_branch(oracle.get_submodule(block_name))
        with torch.no_grad():
            got, want = lesioned(x), oracle(x)
        assert torch.allclose(got, want, atol=1e-5), f"{name}: block {block_name} is not its shortcut alone"
        assert not torch.allclose(got, expected_logits, atol=1e-3), f"{name}: lesioning {block_name} changed nothing"
    # The original model is untouched: same blocks, same weights, same outputs.
    assert [type(m) for _, m in analysis.residual_blocks(model)] == [type(m) for _, m in blocks]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(x), expected_logits)


def test_the_shortcut_of_an_option_a_block_by_hand():
    model = _randomise_batchnorm(models.resnet_cifar(20))
    x = torch.randn(2, 3, 16, 16)
    inputs, outputs = {}, {}
    name = "layer2.0"  # the first block of stage 2: halves the map, 16 -> 32 channels
    model.get_submodule(name).register_forward_hook(lambda m, args, out: inputs.update(x=args[0]))
    lesioned = analysis.lesion(model, name)
    lesioned.get_submodule(name).register_forward_hook(lambda m, args, out: outputs.update(y=out))
    with torch.no_grad():
        model(x)
        lesioned(x)
    block_input = inputs["x"]
    assert block_input.min() >= 0  # the output of a ReLU: ReLU(shortcut) = shortcut
    subsampled = block_input[:, :, ::2, ::2]
    by_hand = torch.cat([subsampled, torch.zeros_like(subsampled)], dim=1)
    assert torch.equal(outputs["y"], by_hand)


def test_lesioning_a_plain_net_uses_the_parameter_free_shortcut():
    model = _randomise_batchnorm(models.plain_cifar(20))
    names = [n for n, _ in analysis.residual_blocks(model)]
    assert len(names) == 9
    lesioned = analysis.lesion(model, "layer1.1", "layer3.0")
    assert isinstance(lesioned.layer3[0].shortcut, models.PadShortcut) and lesioned.layer1[1].shortcut is None
    removed = sum(p.numel() for n in ("layer1.1", "layer3.0") for p in model.get_submodule(n).parameters())
    assert models.count_parameters(lesioned) == models.count_parameters(model) - removed
    x = torch.rand(2, 16, 8, 8)
    assert torch.equal(lesioned.layer1[1](x), x)
    assert lesioned(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_lesion_rejects_unknown_blocks():
    model = models.resnet_cifar(8)
    with pytest.raises(ValueError, match="out of range: the model has 3 blocks"):
        analysis.lesion(model, 3)
    with pytest.raises(ValueError, match="no block named 'layer4.0'"):
        analysis.lesion(model, "layer4.0")
    with pytest.raises(TypeError, match="expected a block"):
        analysis.BlockShortcut(nn.Conv2d(3, 3, 3))


def test_lesion_study_removes_each_block_once():
    torch.manual_seed(0)
    model = _randomise_batchnorm(models.resnet_cifar(20))
    x, y = torch.randn(20, 3, 16, 16), torch.randint(0, 10, (20,))
    study = analysis.lesion_study(model, [(x[:10], y[:10]), (x[10:], y[10:])])
    assert study["blocks"] == [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    assert study["downsampling"] == [False] * 3 + [True, False, False] * 2
    assert study["baseline"] == train.evaluate(model, [(x, y)])[1]
    with torch.no_grad():
        expected = [(analysis.lesion(model, i)(x).argmax(1) == y).float().mean().item() for i in range(9)]
    assert study["accuracy"] == pytest.approx(expected)


def test_filter_normalisation_matches_per_filter_norms():
    generator = torch.Generator().manual_seed(1)
    for shape in [(8, 4, 3, 3), (10, 64), (5, 1, 1, 1)]:
        filter_scales = torch.rand(shape[0], *[1] * (len(shape) - 1), generator=generator)
        weight = torch.randn(shape, generator=generator) * filter_scales
        direction = torch.randn(shape, generator=generator)
        original = direction.clone()
        out = analysis.normalize_filters_(direction, weight)
        assert out is direction  # in place
        for i in range(shape[0]):
            assert direction[i].norm() == pytest.approx(weight[i].norm().item(), rel=1e-5)
            # only rescaled: each filter keeps its direction
            cosine = F.cosine_similarity(direction[i].flatten(), original[i].flatten(), dim=0)
            assert cosine == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        analysis.normalize_filters_(torch.randn(4, 3), torch.randn(3, 4))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        analysis.normalize_filters_(torch.randn(4), torch.randn(4))


def test_random_directions_skip_norm_and_bias_and_repeat_with_a_seed():
    model = models.resnet_cifar(8)
    direction = analysis.filter_normalized_direction(model, torch.Generator().manual_seed(0))
    again = analysis.filter_normalized_direction(model, torch.Generator().manual_seed(0))
    other = analysis.filter_normalized_direction(model, torch.Generator().manual_seed(1))
    assert list(direction) == [n for n, _ in model.named_parameters()]
    for name, p in model.named_parameters():
        d = direction[name]
        assert d.shape == p.shape and torch.equal(d, again[name])
        if p.ndim <= 1:
            assert not d.any(), f"{name}: BN parameters and biases must not move"
        else:
            assert torch.allclose(d.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1), rtol=1e-5)
            assert not torch.equal(d, other[name])


def test_loss_surface_passes_through_the_model_and_leaves_it_alone():
    torch.manual_seed(0)
    model = _randomise_batchnorm(models.resnet_cifar(8)).train()  # in training mode on purpose
    before = _state(model)
    batches = [(torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))) for _ in range(2)]
    d1 = analysis.filter_normalized_direction(model, torch.Generator().manual_seed(0))
    d2 = analysis.filter_normalized_direction(model, torch.Generator().manual_seed(1))
    alphas = [-0.5, 0.0, 0.25]
    line = analysis.loss_surface(model, batches, [d1], [alphas])
    assert line.shape == (3,)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert line[1] == pytest.approx(train.evaluate(model, batches)[0], rel=1e-6)  # alpha = 0: the model's loss
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in moved.named_parameters():
            p.add_(d1[name], alpha=-0.5)
    assert line[0] == pytest.approx(train.evaluate(moved, batches)[0], rel=1e-5)
    assert line[0] != pytest.approx(line[1], rel=1e-3)

    plane = analysis.loss_surface(model, batches, [d1, d2], [alphas, [0.0, 0.5]])
    assert plane.shape == (3, 2) and np.allclose(plane[:, 0], line, rtol=1e-6)
    with pytest.raises(ValueError, match="as many of each"):
        analysis.loss_surface(model, batches, [d1, d2], [alphas])
