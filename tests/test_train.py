"""utils.train: the loop learns, repeats exactly, checkpoints, resumes and keeps to a deadline."""

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from utils import data, models, train
from utils.recipes import Recipe, lr_schedule

RECIPE = Recipe(epochs=2, lr=0.05)


def _toy_loaders(seed=0, n_per_class=16, size=8):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), n_per_class)
    # Learnable: each class has its own mean colour, plus noise.
    base = rng.integers(40, 215, (4, 1, 1, 3))
    images = np.clip(base[labels] + rng.normal(0, 25, (len(labels), size, size, 3)), 0, 255).astype(np.uint8)
    toy = data.ImageSet(images, labels, ("a", "b", "c", "d"), "toy")
    return data.make_loaders(toy, {"test": toy}, batch_size=16, seed=seed)


def _tiny_model():
    return models.ResNet(models.BasicBlock, [1, 1], num_classes=4, stem="cifar", widths=(8, 16))


def _run(recipe=RECIPE, **options):
    train.set_seed(0)
    model = _tiny_model()
    train_loader, evals = _toy_loaders()
    history = train.fit(model, train_loader, evals, recipe=recipe, progress=False, **options)
    return model, history


def _without_time(history):
    return {k: v for k, v in history.items() if k != "seconds"}


def test_a_few_steps_on_one_batch_lower_the_loss():
    train.set_seed(0)
    model = _tiny_model()
    x, y = next(iter(_toy_loaders()[0]))
    optimizer = train.make_optimizer(model, RECIPE)
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_fit_returns_a_history_and_learns():
    _, history = _run(RECIPE.replace(epochs=3))
    assert list(history) == ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"]
    assert history["epoch"] == [1, 2, 3] and all(len(v) == 3 for v in history.values())
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history["test_acc"][-1] > 0.5  # 4 classes: chance is 0.25


def test_fit_uses_the_rates_of_lr_schedule_at_every_iteration():
    recipe = Recipe(epochs=3, lr=0.1, schedule="multistep", milestones=(1.5,), warmup_epochs=0.5)
    train.set_seed(0)
    model = _tiny_model()
    train_loader, _ = _toy_loaders()
    seen = []
    original = train.train_one_epoch

    def spy(net, loader, optimizer, rates, *args, **kwargs):
        seen.extend(rates)
        return original(net, loader, optimizer, rates, *args, **kwargs)

    train.train_one_epoch = spy
    try:
        history = train.fit(model, train_loader, recipe=recipe, progress=False)
    finally:
        train.train_one_epoch = original
    expected = lr_schedule(recipe, len(train_loader))
    assert seen == expected
    assert history["lr"] == [expected[(e + 1) * len(train_loader) - 1] for e in range(3)]


def test_two_seeded_cpu_runs_are_identical():
    model_a, history_a = _run()
    model_b, history_b = _run()
    assert _without_time(history_a) == _without_time(history_b)
    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()):
        assert torch.equal(a, b)


def test_fit_changes_nothing_about_the_model_but_its_weights():
    train.set_seed(0)
    model = _tiny_model().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_loader, _ = _toy_loaders()
    train.fit(model, train_loader, recipe=RECIPE, channels_last=True, progress=False)
    assert not model.training, "fit should restore the model's mode"
    assert model.conv1.weight.is_contiguous(), "fit should restore the memory format"
    assert model.conv1.weight.device.type == "cpu"
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items()), "fit should train"


class _Interrupt(Exception):
    pass


class _StopAtEpoch:
    """Wraps a loader and raises once a given epoch starts: a simulated crash."""

    def __init__(self, loader, epoch):
        self.loader, self.stop = loader, epoch

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch):
        if epoch == self.stop:
            raise _Interrupt
        self.loader.set_epoch(epoch)

    def __iter__(self):
        return iter(self.loader)


class _NoisyModel(nn.Module):
    """A tiny net whose forward draws from every RNG a resumed run must restore."""

    def __init__(self):
        super().__init__()
        self.net = _tiny_model()

    def forward(self, x):
        noise = torch.rand(()) + float(np.random.rand()) + random.random()  # CPU, NumPy, Python
        return self.net(x) * (1 + 0.01 * noise)


RESUMED = Recipe(epochs=3, lr=0.05, schedule="multistep", milestones=(1.5,))


def test_resuming_from_a_checkpoint_continues_the_same_run(tmp_path):
    train.set_seed(0)
    straight_model = _NoisyModel()
    train_loader, evals = _toy_loaders()
    straight = train.fit(straight_model, train_loader, evals, recipe=RESUMED, progress=False)

    ckpt = tmp_path / "run.pt"
    train.set_seed(0)
    model = _NoisyModel()
    with pytest.raises(_Interrupt):
        train.fit(model, _StopAtEpoch(train_loader, 2), evals, recipe=RESUMED, progress=False, checkpoint=ckpt)
    assert train.load_checkpoint(ckpt)["history"]["epoch"] == [1, 2]
    assert not [p for p in tmp_path.iterdir() if p.name != "run.pt"]  # no temp files

    train.set_seed(123)  # a fresh process would not share our RNG states
    np.random.seed(123)
    random.seed(123)
    resumed_model = _NoisyModel()
    train_loader, evals = _toy_loaders()
    resumed = train.fit(resumed_model, train_loader, evals, recipe=RESUMED, progress=False, checkpoint=ckpt)
    assert _without_time(resumed) == _without_time(straight)
    for a, b in zip(straight_model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_checkpoint_of_another_run_is_never_resumed(tmp_path):
    ckpt = tmp_path / "run.pt"
    _run(checkpoint=ckpt)
    with pytest.raises(ValueError, match=r"checkpoint of another run \(its recipe differ"):
        _run(RECIPE.replace(lr=0.01), checkpoint=ckpt)
    train_loader, _ = _toy_loaders()
    wider = models.ResNet(models.BasicBlock, [1, 1], num_classes=4, stem="cifar", widths=(8, 32))
    with pytest.raises(ValueError, match="its model differ"):
        train.fit(wider, train_loader, recipe=RECIPE, checkpoint=ckpt, progress=False)


def test_a_finished_checkpoint_trains_no_further(tmp_path):
    ckpt = tmp_path / "run.pt"
    model, first = _run(checkpoint=ckpt)
    again_model, again = _run(checkpoint=ckpt)
    assert again == first
    for a, b in zip(model.state_dict().values(), again_model.state_dict().values()):
        assert torch.equal(a, b)


def test_the_deadline_stops_between_epochs(monkeypatch, tmp_path):
    clock = iter(range(0, 10_000, 10))  # every reading 10 s later than the one before
    monkeypatch.setattr(train, "_clock", lambda: next(clock))
    ckpt = tmp_path / "run.pt"
    # Reading 0 before epoch 1 (deadline 25 s away: try one); epoch 1 takes 10 s by the fake
    # clock (readings 10 and 20); reading 30 before epoch 2 is past the deadline: stop.
    _, history = _run(RECIPE.replace(epochs=5), checkpoint=ckpt, deadline=25)
    assert history["epoch"] == [1]
    _, nothing = _run(RECIPE.replace(epochs=5), checkpoint=tmp_path / "b.pt", deadline=-1)
    assert nothing["epoch"] == []


def test_the_fast_path_options_train_and_checkpoint_plain_weights(tmp_path):
    """compile, bf16 autocast and channels-last are what a GPU run turns on; here they run on the CPU.

    torch.compile with its default backend (Inductor) generates C++ here instead of GPU kernels, so
    this catches what the options do to ``fit`` (wrapping, memory formats, checkpoint keys), not GPU codegen.
    """
    ckpt = tmp_path / "fast.pt"
    model, history = _run(precision="bf16", channels_last=True, compile=True, checkpoint=ckpt)
    assert all(math.isfinite(v) for v in history["train_loss"] + history["test_loss"])
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert model.conv1.weight.dtype == torch.float32, "autocast computes in bf16 but keeps fp32 weights"
    saved = train.load_checkpoint(ckpt)["model"]
    assert list(saved) == list(_tiny_model().state_dict()), "no _orig_mod. prefixes: the checkpoint loads into a plain model"
    # bf16 rounding changes the numbers, but not what is learnt: the plain fp32 run gets about as far.
    _, plain = _run()
    assert abs(history["test_acc"][-1] - plain["test_acc"][-1]) <= 0.25


def test_precision_is_chosen_by_device():
    assert train.default_precision("cpu") == "fp32"
    with pytest.raises(ValueError, match=r"precision='fp8'; expected one of"):
        _run(precision="fp8")


def test_save_and_load_model_round_trip_without_prefixes(tmp_path):
    model = _tiny_model().eval()

    class Wrapper(nn.Module):  # stands in for torch.compile's wrapper
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    train.save_model(Wrapper(model), tmp_path / "model.pt")
    state = train.load_checkpoint(tmp_path / "model.pt")["model"]
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state)
    clone = train.load_model(_tiny_model().eval(), tmp_path / "model.pt")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))


def test_checkpoints_load_with_weights_only(tmp_path):
    torch.save({"model": {}, "payload": _StopAtEpoch(None, 0)}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="(?i)weights.only|unsupported global"):
        train.load_checkpoint(tmp_path / "evil.pt")


def test_rng_state_round_trips_every_generator():
    train.set_seed(5)
    state = train.rng_state()
    first = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    train.set_seed(99)
    train.set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_weight_decay_skips_norm_and_bias_parameters():
    groups = train.make_optimizer(_tiny_model(), Recipe(epochs=1, weight_decay=5e-4)).param_groups
    assert all(p.ndim > 1 for p in groups[0]["params"]) and groups[0]["weight_decay"] == 5e-4
    assert all(p.ndim == 1 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0


def test_evaluate_matches_a_direct_computation():
    model = _tiny_model().eval()
    _, evals = _toy_loaders()
    loss, acc = train.evaluate(model, evals["test"], "cpu")
    xs, ys = zip(*evals["test"])
    with torch.no_grad():
        logits = model(torch.cat(xs))
    y = torch.cat(ys)
    assert loss == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    assert acc == pytest.approx((logits.argmax(1) == y).float().mean().item())
    preds, labels = train.predict(model, evals["test"])
    assert torch.equal(preds, logits.argmax(1)) and torch.equal(labels, y)


def test_layer_grad_norms_cover_every_weight_layer_in_order():
    model = models.plain_cifar(8)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    norms = train.layer_grad_norms(model, x, y)
    expected = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert list(norms) == expected and all(v > 0 and math.isfinite(v) for v in norms.values())
    assert all(p.grad is None for p in model.parameters())


def test_fit_rejects_an_empty_loader():
    with pytest.raises(ValueError, match="steps_per_epoch=0 must be a positive integer"):
        train.fit(_tiny_model(), [], recipe=RECIPE, progress=False)
