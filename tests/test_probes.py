"""utils.probes: shape recording with hooks, random BatchNorm statistics, lesions (a block becomes its
shortcut) and loss landscapes (filter-normalised directions)."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils import models, probes, train


def _trained_looking(model, seed=0):
    """Random BN scales, shifts and statistics, as after training (fresh BN is nearly an identity)."""
    return probes.randomize_batchnorm_(model, torch.Generator().manual_seed(seed)).eval()


# ----------------------------------------------------------------------------- shapes


def test_trace_calls_lists_every_call_in_order_with_shapes():
    block = models.BasicBlock(8, 16, stride=2, downsample=nn.Sequential(nn.Conv2d(8, 16, 1, stride=2), nn.BatchNorm2d(16)))
    calls = probes.trace_calls(block, torch.randn(2, 8, 9, 9))
    # forward: conv1, bn1, relu, conv2, bn2, downsample, relu (one ReLU module, called twice)
    assert [c.name for c in calls] == ["conv1", "bn1", "relu", "conv2", "bn2", "downsample", "relu"]
    by_name = {c.name: c for c in calls}
    assert by_name["conv1"] == probes.ModuleCall("conv1", (2, 8, 9, 9), (2, 16, 5, 5))
    assert by_name["downsample"].input == (2, 8, 9, 9) and by_name["downsample"].output == (2, 16, 5, 5)
    assert calls[2].input == calls[2].output == (2, 16, 5, 5)


@pytest.mark.parametrize(
    "builder, size, expected",
    [
        (models.resnet18, 224, {"conv1": (1, 64, 112, 112), "maxpool": (1, 64, 56, 56), "layer1": (1, 64, 56, 56),
                                "layer2": (1, 128, 28, 28), "layer3": (1, 256, 14, 14), "layer4": (1, 512, 7, 7),
                                "avgpool": (1, 512, 1, 1), "fc": (1, 1000)}),
        (lambda: models.resnet_cifar(20), 32, {"conv1": (1, 16, 32, 32), "layer1": (1, 16, 32, 32),
                                              "layer2": (1, 32, 16, 16), "layer3": (1, 64, 8, 8), "fc": (1, 10)}),
    ],
)  # fmt: skip
def test_record_output_shapes_of_the_children(builder, size, expected):
    with torch.device("meta"):  # shapes need no data
        model = builder()
    shapes = probes.record_output_shapes(model, torch.empty(1, 3, size, size, device="meta"))
    assert set(shapes) == {name for name, _ in model.named_children()}  # in the order of the calls
    for name, shape in expected.items():
        assert shapes[name] == shape, name


def test_modules_can_be_named_paired_or_mapped():
    model = models.resnet_cifar(8)
    x = torch.randn(1, 3, 16, 16)
    by_name = probes.record_output_shapes(model, x, ["layer2.0.conv1", "layer3"])
    assert by_name == {"layer2.0.conv1": (1, 32, 8, 8), "layer3": (1, 64, 4, 4)}
    stages = probes.record_output_shapes(model, x, model.stages())
    assert list(stages) == [name for name, _ in model.stages()]
    mapped = probes.record_output_shapes(model, x, {"first": model.conv1, "last": model.fc})
    assert mapped == {"first": (1, 16, 16, 16), "last": (1, 10)}
    with pytest.raises(ValueError, match="no submodule 'layer4'"):
        probes.record_output_shapes(model, x, ["layer4"])
    with pytest.raises(TypeError, match="names or \\(name, module\\) pairs"):
        probes.record_output_shapes(model, x, [model.conv1])


def _hook_count(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_hooks_are_removed_even_when_the_forward_pass_fails():
    model = models.resnet_cifar(8)
    with pytest.raises(RuntimeError):
        probes.trace_calls(model, torch.randn(1, 5, 16, 16))  # 5 channels: conv1 expects 3
    assert _hook_count(model) == 0
    with pytest.raises(KeyError):
        with probes.recording_calls(model) as calls:
            model(torch.randn(1, 3, 8, 8))
            raise KeyError("inside the block")
    assert _hook_count(model) == 0 and [c.name for c in calls][:2] == ["conv1", "bn1"]
    probes.trace_calls(model, torch.randn(1, 3, 8, 8))
    assert _hook_count(model) == 0


def test_tracing_changes_nothing_in_the_model():
    model = models.resnet_cifar(8).train()
    model.layer2.eval()  # a mixed state must come back as it was
    before = _state(model)
    probes.trace_calls(model, torch.randn(4, 3, 16, 16))
    assert model.training and not model.layer2.training and model.layer1.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "a training-mode pass updated BN"


# ----------------------------------------------------------------------------- BatchNorm


def test_randomize_batchnorm_sets_every_statistic_and_repeats_with_a_seed():
    def fresh():
        torch.manual_seed(0)
        return models.resnet_cifar(8)

    model, again, other = fresh().train(), fresh(), fresh()
    reference = fresh()
    returned = probes.randomize_batchnorm_(model, torch.Generator().manual_seed(3))
    probes.randomize_batchnorm_(again, torch.Generator().manual_seed(3))
    probes.randomize_batchnorm_(other, torch.Generator().manual_seed(4))
    assert returned is model and model.training, "returns the model and leaves its mode alone"
    for name, bn in model.named_modules():
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        assert 0.5 <= bn.weight.min() and bn.weight.max() <= 1.5 and bn.weight.std() > 0.05, name
        assert 0.5 <= bn.running_var.min() and bn.running_var.max() <= 2.0, name
        assert bn.bias.abs().max() > 0 and bn.running_mean.abs().max() > 0, name
        assert torch.equal(bn.running_mean, again.get_submodule(name).running_mean), name
        assert not torch.equal(bn.running_mean, other.get_submodule(name).running_mean), name
    # The convolutions are untouched; in eval mode the network now computes something else.
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(model.eval()(x), reference.eval()(x), atol=1e-3)


def test_randomize_batchnorm_handles_other_layers_and_rejects_models_without_any():
    model = nn.Sequential(nn.BatchNorm1d(4), nn.BatchNorm2d(3, affine=False), nn.BatchNorm2d(2, track_running_stats=False))
    probes.randomize_batchnorm_(model, torch.Generator().manual_seed(0))
    assert not torch.equal(model[0].running_var, torch.ones(4)) and not torch.equal(model[0].weight, torch.ones(4))
    assert not torch.equal(model[1].running_mean, torch.zeros(3))
    assert not torch.equal(model[2].weight, torch.ones(2))
    with pytest.raises(ValueError, match="Sequential has no BatchNorm layer"):
        probes.randomize_batchnorm_(nn.Sequential(nn.Linear(2, 2)), torch.Generator())


# ----------------------------------------------------------------------------- lesions and landscapes


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
    model = _trained_looking(NETS[name]())
    x = torch.randn(3, 3, 16, 16)
    before = _state(model)
    with torch.no_grad():
        expected_logits = model(x)
    blocks = probes.residual_blocks(model)
    assert [n for n, _ in blocks] == [n for n, m in model.named_modules() if isinstance(m, probes.BLOCK_TYPES)]
    for index, (block_name, block) in enumerate(blocks):
        lesioned = probes.lesion(model, index)
        assert isinstance(lesioned.get_submodule(block_name), probes.BlockShortcut)
        oracle = copy.deepcopy(model)
        _zero_residual_branch(oracle.get_submodule(block_name))
        with torch.no_grad():
            got, want = lesioned(x), oracle(x)
        assert torch.allclose(got, want, atol=1e-5), f"{name}: block {block_name} is not its shortcut alone"
        assert not torch.allclose(got, expected_logits, atol=1e-3), f"{name}: lesioning {block_name} changed nothing"
    # The original model is untouched: same blocks, same weights, same outputs.
    assert [type(m) for _, m in probes.residual_blocks(model)] == [type(m) for _, m in blocks]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(x), expected_logits)


def test_the_shortcut_of_an_option_a_block_by_hand():
    model = _trained_looking(models.resnet_cifar(20))
    x = torch.randn(2, 3, 16, 16)
    inputs, outputs = {}, {}
    name = "layer2.0"  # the first block of stage 2: halves the map, 16 -> 32 channels
    model.get_submodule(name).register_forward_hook(lambda m, args, out: inputs.update(x=args[0]))
    lesioned = probes.lesion(model, name)
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
    model = _trained_looking(models.plain_cifar(20))
    names = [n for n, _ in probes.residual_blocks(model)]
    assert len(names) == 9
    lesioned = probes.lesion(model, "layer1.1", "layer3.0")
    assert isinstance(lesioned.layer3[0].shortcut, models.PadShortcut) and lesioned.layer1[1].shortcut is None
    removed = sum(p.numel() for n in ("layer1.1", "layer3.0") for p in model.get_submodule(n).parameters())
    assert models.count_parameters(lesioned) == models.count_parameters(model) - removed
    x = torch.rand(2, 16, 8, 8)
    assert torch.equal(lesioned.layer1[1](x), x)
    assert lesioned(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_lesion_rejects_unknown_blocks():
    model = models.resnet_cifar(8)
    with pytest.raises(ValueError, match="out of range: the model has 3 blocks"):
        probes.lesion(model, 3)
    with pytest.raises(ValueError, match="no block named 'layer4.0'"):
        probes.lesion(model, "layer4.0")
    with pytest.raises(TypeError, match="expected a block"):
        probes.BlockShortcut(nn.Conv2d(3, 3, 3))


def test_lesion_study_removes_each_block_once():
    torch.manual_seed(0)
    model = _trained_looking(models.resnet_cifar(20))
    x, y = torch.randn(20, 3, 16, 16), torch.randint(0, 10, (20,))
    study = probes.lesion_study(model, [(x[:10], y[:10]), (x[10:], y[10:])])
    assert study["blocks"] == [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    assert study["downsampling"] == [False] * 3 + [True, False, False] * 2
    assert study["baseline"] == train.evaluate(model, [(x, y)])[1]
    with torch.no_grad():
        expected = [(probes.lesion(model, i)(x).argmax(1) == y).float().mean().item() for i in range(9)]
    assert study["accuracy"] == pytest.approx(expected)
    # Image by image: the accuracies are the means of the per-image arrays.
    assert study["baseline_correct"].shape == (20,) and study["correct"].shape == (9, 20)
    assert study["correct"].mean(axis=1) == pytest.approx(expected)
    assert study["baseline_correct"].mean() == pytest.approx(study["baseline"])


def test_subset_accuracies_split_the_images_into_disjoint_equal_subsets():
    correct = np.array([[True] * 6 + [False] * 6, [True] * 12])
    accuracies = probes.subset_accuracies(correct, 3, seed=1)
    assert accuracies.shape == (2, 3)
    assert accuracies.mean(axis=1) == pytest.approx([0.5, 1.0])  # every image used once
    assert np.all(accuracies[1] == 1.0)
    assert np.allclose(accuracies, probes.subset_accuracies(correct, 3, seed=1))  # repeats
    # Eleven images in three subsets: three each, the last two left out.
    assert probes.subset_accuracies(np.ones(11, bool), 3).shape == (3,)
    for subsets in (0, 13, 2.0, True):
        with pytest.raises(ValueError, match="subsets"):
            probes.subset_accuracies(correct, subsets)


def test_local_minima_and_nonconvex_share_tell_a_bowl_from_a_bumpy_surface():
    grid = np.linspace(-1, 1, 9)
    x, y = np.meshgrid(grid, grid, indexing="ij")
    bowl = x**2 + y**2
    assert probes.local_minima(bowl) == [(4, 4)]
    assert probes.nonconvex_share(bowl) == 0.0
    assert probes.nonconvex_share(-bowl) == 1.0
    bumpy = bowl + 0.3 * np.sin(9 * x) * np.cos(9 * y)
    assert len(probes.local_minima(bumpy)) > 1
    assert 0 < probes.nonconvex_share(bumpy) < 1
    assert probes.local_minima(grid**2) == [(4,)]  # 1-D
    assert probes.local_minima(np.zeros(5)) == []  # a flat line has no strict minimum
    with pytest.raises(ValueError, match="at least 3"):
        probes.nonconvex_share(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="1-D or 2-D"):
        probes.local_minima(np.zeros((3, 3, 3)))


def test_filter_normalisation_matches_per_filter_norms():
    generator = torch.Generator().manual_seed(1)
    for shape in [(8, 4, 3, 3), (10, 64), (5, 1, 1, 1)]:
        filter_scales = torch.rand(shape[0], *[1] * (len(shape) - 1), generator=generator)
        weight = torch.randn(shape, generator=generator) * filter_scales
        direction = torch.randn(shape, generator=generator)
        original = direction.clone()
        out = probes.normalize_filters_(direction, weight)
        assert out is direction  # in place
        for i in range(shape[0]):
            assert direction[i].norm() == pytest.approx(weight[i].norm().item(), rel=1e-5)
            # only rescaled: each filter keeps its direction
            cosine = F.cosine_similarity(direction[i].flatten(), original[i].flatten(), dim=0)
            assert cosine == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        probes.normalize_filters_(torch.randn(4, 3), torch.randn(3, 4))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        probes.normalize_filters_(torch.randn(4), torch.randn(4))


def test_random_directions_skip_norm_and_bias_and_repeat_with_a_seed():
    model = models.resnet_cifar(8)
    direction = probes.filter_normalized_direction(model, torch.Generator().manual_seed(0))
    again = probes.filter_normalized_direction(model, torch.Generator().manual_seed(0))
    other = probes.filter_normalized_direction(model, torch.Generator().manual_seed(1))
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
    model = _trained_looking(models.resnet_cifar(8)).train()  # in training mode on purpose
    before = _state(model)
    batches = [(torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))) for _ in range(2)]
    d1 = probes.filter_normalized_direction(model, torch.Generator().manual_seed(0))
    d2 = probes.filter_normalized_direction(model, torch.Generator().manual_seed(1))
    alphas = [-0.5, 0.0, 0.25]
    line = probes.loss_surface(model, batches, [d1], [alphas])
    assert line.shape == (3,)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert line[1] == pytest.approx(train.evaluate(model, batches)[0], rel=1e-6)  # alpha = 0: the model's loss
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in moved.named_parameters():
            p.add_(d1[name], alpha=-0.5)
    assert line[0] == pytest.approx(train.evaluate(moved, batches)[0], rel=1e-5)
    assert line[0] != pytest.approx(line[1], rel=1e-3)

    plane = probes.loss_surface(model, batches, [d1, d2], [alphas, [0.0, 0.5]])
    assert plane.shape == (3, 2) and np.allclose(plane[:, 0], line, rtol=1e-6)
    with pytest.raises(ValueError, match="as many of each"):
        probes.loss_surface(model, batches, [d1, d2], [alphas])
