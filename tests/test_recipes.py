"""utils.recipes: one Recipe per configuration, one schedule, validated values."""

import math

import pytest

from utils import recipes
from utils.recipes import Recipe, lr_schedule


def test_multistep_divides_at_each_milestone():
    rates = lr_schedule(Recipe(epochs=4, lr=0.1, schedule="multistep", milestones=(2, 3)), steps_per_epoch=25)
    assert len(rates) == 100
    assert rates[49] == 0.1 and rates[50] == pytest.approx(0.01) and rates[75] == pytest.approx(0.001)


def test_cosine_decays_from_the_peak_to_zero_after_a_linear_warm_up():
    rates = lr_schedule(Recipe(epochs=11, lr=0.2, warmup_epochs=1), steps_per_epoch=10)
    assert rates[0] == pytest.approx(0.02) and rates[5] == pytest.approx(0.11) and rates[10] == pytest.approx(0.2)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    assert rates[60] == pytest.approx(0.1)  # half way through the decay
    assert rates[-1] < 0.001


def test_a_constant_warm_up_stays_low_then_jumps():
    rates = lr_schedule(Recipe(epochs=3, schedule="constant", warmup_epochs=1, warmup="constant"), 10)
    assert rates[:10] == [pytest.approx(0.01)] * 10 and rates[10:] == [0.1] * 20


def test_the_paper_recipe_gives_the_paper_learning_rates():
    """[v1] Sec. 4.2: 0.1, /10 at 32k and 48k iterations, 64k iterations; ResNet-110 warms up at 0.01."""
    assert recipes.PAPER_CIFAR10.epochs == 182  # 64,000 / 352, the last epoch completed
    rates = lr_schedule(recipes.PAPER_CIFAR10, steps_per_epoch=352)
    assert rates[31_999] == 0.1 and rates[32_000] == pytest.approx(0.01)
    assert rates[47_999] == pytest.approx(0.01) and rates[48_000] == pytest.approx(0.001)
    deep = lr_schedule(recipes.paper_cifar10(110), steps_per_epoch=352)
    assert deep[0] == deep[351] == pytest.approx(0.01) and deep[352] == 0.1
    assert recipes.paper_cifar10(56) == recipes.PAPER_CIFAR10


def test_from_iterations_is_the_one_conversion_to_epochs():
    recipe = Recipe.from_iterations(70, steps_per_epoch=9, milestones=(35, 52), lr=0.025)
    assert recipe.epochs == math.ceil(70 / 9) and recipe.schedule == "multistep"
    rates = lr_schedule(recipe, 9)
    assert rates[34] == 0.025 and rates[35] == pytest.approx(0.0025) and rates[52] == pytest.approx(0.00025)


def test_recipes_are_values():
    a = Recipe(epochs=3, schedule="multistep", milestones=[1, 2])
    assert a == Recipe(epochs=3, schedule="multistep", milestones=(1.0, 2.0)) and hash(a)
    assert a.replace(lr=0.2).lr == 0.2 and a.lr == 0.1
    assert a.as_dict()["milestones"] == [1.0, 2.0]


@pytest.mark.parametrize(
    "values, message",
    [
        ({"epochs": 0}, r"epochs=0 must be a positive integer"),
        ({"epochs": 2, "schedule": "linear"}, r"schedule='linear' must be one of"),
        ({"epochs": 2, "warmup": "exp"}, r"warmup='exp' must be one of"),
        ({"epochs": 2, "lr": -0.1}, r"lr=-0.1 must be a positive number"),
        ({"epochs": 2, "label_smoothing": 1.0}, r"label_smoothing=1.0 must be in \[0, 1\)"),
        ({"epochs": 2, "warmup_epochs": 10}, r"warmup_epochs=10 must be in \[0, epochs=2\]"),
        ({"epochs": 2, "schedule": "multistep", "milestones": (3,)}, r"must lie in \(0, epochs=2\]"),
        ({"epochs": 2, "milestones": (1,)}, r"need schedule='multistep'"),
        ({"epochs": 2, "batch_size": 0}, r"batch_size=0 must be a positive integer"),
    ],
)
def test_bad_values_are_named(values, message):
    with pytest.raises(ValueError, match=message):
        Recipe(**values)


def test_schedule_rejects_a_bad_step_count():
    with pytest.raises(ValueError, match="steps_per_epoch=0 must be a positive integer"):
        lr_schedule(Recipe(epochs=1), 0)


def test_a_shortened_recipe_keeps_the_shape_of_its_schedule():
    short = recipes.PAPER_CIFAR10.shortened(4)
    assert short.epochs == 4 and short.lr == recipes.PAPER_CIFAR10.lr
    rates = lr_schedule(short, 10)
    assert rates[19] == 0.1 and rates[20] == pytest.approx(0.01) and rates[30] == pytest.approx(0.001)
    warm = recipes.RESNET18_CIFAR10.shortened(20)
    assert warm.warmup_epochs == 1 and warm.schedule == "cosine"
