"""utils.train: the loop learns, repeats exactly, checkpoints and resumes."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from utils import data, models, train


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


def _run(epochs=2, **kwargs):
    train.set_seed(0)
    model = _tiny_model()
    train_loader, evals = _toy_loaders()
    history = train.fit(model, train_loader, evals, epochs=epochs, lr=0.05, progress=False, device="cpu", **kwargs)
    return model, history


def _without_time(history):
    return {k: v for k, v in history.items() if k != "seconds"}


def test_a_few_steps_on_one_batch_lower_the_loss():
    train.set_seed(0)
    model = _tiny_model()
    x, y = next(iter(_toy_loaders()[0]))
    optimizer = train.make_optimizer(model, lr=0.05)
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_fit_returns_a_history_and_learns():
    _, history = _run(epochs=3)
    assert list(history) == ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"]
    assert history["epoch"] == [1, 2, 3] and all(len(v) == 3 for v in history.values())
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history["test_acc"][-1] > 0.5  # 4 classes: chance is 0.25
    assert history["lr"][-1] == pytest.approx(0.0, abs=1e-12)  # cosine ends at zero


def test_two_seeded_cpu_runs_are_identical():
    model_a, history_a = _run()
    model_b, history_b = _run()
    assert _without_time(history_a) == _without_time(history_b)
    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()):
        assert torch.equal(a, b)


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


def test_resuming_from_a_checkpoint_continues_the_same_run(tmp_path):
    straight_model, straight = _run(epochs=3, schedule="multistep", milestones=[1.5])

    ckpt = tmp_path / "run.pt"
    train.set_seed(0)
    model = _tiny_model()
    train_loader, evals = _toy_loaders()
    with pytest.raises(_Interrupt):
        train.fit(model, _StopAtEpoch(train_loader, 2), evals, epochs=3, lr=0.05, schedule="multistep",
                  milestones=[1.5], progress=False, device="cpu", checkpoint=ckpt)  # fmt: skip
    assert train.load_checkpoint(ckpt)["history"]["epoch"] == [1, 2]
    assert not [p for p in tmp_path.iterdir() if p.name != "run.pt"]  # no temp files

    train.set_seed(123)  # a fresh process would not share our RNG state
    resumed_model = _tiny_model()
    train_loader, evals = _toy_loaders()
    resumed = train.fit(resumed_model, train_loader, evals, epochs=3, lr=0.05, schedule="multistep",
                        milestones=[1.5], progress=False, device="cpu", checkpoint=ckpt)  # fmt: skip
    assert _without_time(resumed) == _without_time(straight)
    for a, b in zip(straight_model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)


def test_the_fast_path_options_train_and_checkpoint_plain_weights(tmp_path):
    """compile, bf16 autocast and channels-last are what a GPU run turns on; here they run on the CPU.

    torch.compile with its default backend (Inductor) generates C++ here instead of GPU kernels, so
    this catches what the options do to ``fit`` (wrapping, memory formats, checkpoint keys), not GPU codegen.
    """
    ckpt = tmp_path / "fast.pt"
    model, history = _run(epochs=2, amp=True, channels_last=True, compile=True, checkpoint=ckpt)
    assert all(math.isfinite(v) for v in history["train_loss"] + history["test_loss"])
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.conv1.weight.dtype == torch.float32, "autocast computes in bf16 but keeps fp32 weights"
    saved = train.load_checkpoint(ckpt)["model"]
    assert list(saved) == list(_tiny_model().state_dict()), "no _orig_mod. prefixes: the checkpoint loads into a plain model"
    # bf16 rounding changes the numbers, but not what is learnt: the plain fp32 run gets about as far.
    _, plain = _run(epochs=2)
    assert abs(history["test_acc"][-1] - plain["test_acc"][-1]) <= 0.25


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


def test_learning_rate_factors():
    steps = 100
    multistep = [train.lr_factor(s, total_steps=steps, schedule="multistep", milestones=(50, 75)) for s in range(steps)]
    assert multistep[49] == 1.0 and multistep[50] == pytest.approx(0.1) and multistep[75] == pytest.approx(0.01)
    cosine = [train.lr_factor(s, total_steps=steps, schedule="cosine") for s in range(steps + 1)]
    assert cosine[0] == 1.0 and cosine[50] == pytest.approx(0.5) and cosine[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(cosine, cosine[1:]))
    constant_warmup = [train.lr_factor(s, total_steps=steps, schedule="constant", warmup_steps=10, warmup="constant",
                                       warmup_factor=0.1) for s in range(12)]  # fmt: skip
    assert constant_warmup[:10] == [0.1] * 10 and constant_warmup[10:] == [1.0, 1.0]
    linear = [train.lr_factor(s, total_steps=steps, warmup_steps=10) for s in range(11)]
    assert linear[0] == pytest.approx(0.1) and linear[10] == 1.0 and linear[5] == pytest.approx(0.55)


def test_scheduler_drives_the_optimizer_per_iteration():
    model = _tiny_model()
    optimizer = train.make_optimizer(model, lr=0.1)
    scheduler = train.make_scheduler(optimizer, total_steps=10, schedule="multistep", milestones=[3])
    rates = []
    for _ in range(5):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01])


def test_weight_decay_skips_norm_and_bias_parameters():
    groups = train.make_optimizer(_tiny_model(), lr=0.1, weight_decay=5e-4).param_groups
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


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 0}, "epochs must be a positive integer, got 0"),
        ({"schedule": "linear"}, r"unknown schedule 'linear'; expected one of \('constant', 'multistep', 'cosine'\)"),
        ({"warmup": "exp"}, r"unknown warmup 'exp'"),
        ({"lr": -0.1}, "lr must be positive, got -0.1"),
        ({"label_smoothing": 1.0}, r"label_smoothing=1.0 must be in \[0, 1\)"),
        ({"warmup_epochs": 10}, r"warmup_steps=40 must be in \[0, total_steps=8\]"),
    ],
)
def test_fit_rejects_bad_arguments(kwargs, message):
    args = {"epochs": 2} | kwargs
    train_loader, _ = _toy_loaders()
    with pytest.raises(ValueError, match=message):
        train.fit(_tiny_model(), train_loader, epochs=args.pop("epochs"), progress=False, device="cpu", **args)
