"""How the course trains its networks: one small ``Recipe`` object, and every recipe it uses.

A ``Recipe`` holds the plain values of one training configuration (batch size, epochs,
optimiser, learning-rate schedule, label smoothing, augmentation), and nothing about the
model or the data. ``utils.train.fit`` takes one; so do the chapters, the benchmarks and the
reproduction of the paper, so each configuration below is written down exactly once.

``lr_schedule(recipe, steps_per_epoch)`` is the one function that turns a recipe into the
learning rate of every iteration: ``fit`` uses it, the chapters plot it, the tests check it.
``Recipe.from_iterations`` is the one place where iterations (the paper counts those) become
epochs (``fit`` counts those).

References: He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition" (2015),
cited as [v1]; Goyal et al., "Accurate, Large Minibatch SGD" (2017); Loshchilov and Hutter,
"SGDR" (2017); Szegedy et al., "Rethinking the Inception Architecture" (2016).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

__all__ = [
    "SCHEDULES",
    "WARMUPS",
    "Recipe",
    "lr_schedule",
    "PAPER_CIFAR10",
    "paper_cifar10",
    "RESNET18_CIFAR10",
    "RESNET18_QUICK",
    "MNIST_QUICK",
    "MNIST_FULL",
    "DEGRADATION_QUICK",
    "MINIATURE",
    "ANALYSIS_CIFAR10",
    "REPRODUCTION_SMOKE",
    "ADAM_VS_SGD_SGD",
    "ADAM_VS_SGD_ADAM",
]

SCHEDULES = ("constant", "multistep", "cosine")
WARMUPS = ("linear", "constant")


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class Recipe:
    """One training configuration: SGD with momentum, a per-iteration learning-rate schedule.

    Epochs, milestones and the warm-up are counted in epochs (fractions allowed for the
    last two); ``lr_schedule`` turns them into iterations. ``lr`` is the peak rate, reached
    after the warm-up. Weight decay applies to convolution and linear weights only
    (``utils.train.make_optimizer`` explains why).
    """

    epochs: int
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # "constant", "multistep" (x gamma at each milestone) or "cosine"
    milestones: tuple[float, ...] = ()  # in epochs, for "multistep"
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    warmup: str = "linear"  # "linear": ramp from warmup_factor * lr to lr; "constant": stay there
    warmup_factor: float = 0.1
    label_smoothing: float = 0.0
    augment: bool = True  # [v1] Sec. 4.2: pad 4 pixels, random 32x32 crop, random horizontal flip

    def __post_init__(self):
        # Frozen dataclass: normalise lists to tuples so that recipes compare and hash by value.
        object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))
        problems = []
        if not _is_positive_int(self.epochs):
            problems.append(f"epochs={self.epochs!r} must be a positive integer")
        if not _is_positive_int(self.batch_size):
            problems.append(f"batch_size={self.batch_size!r} must be a positive integer")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            problems.append(f"lr={self.lr!r} must be a positive number")
        if not 0 <= self.momentum < 1:
            problems.append(f"momentum={self.momentum!r} must be in [0, 1)")
        if self.weight_decay < 0:
            problems.append(f"weight_decay={self.weight_decay!r} must not be negative")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule={self.schedule!r} must be one of {SCHEDULES}")
        if self.warmup not in WARMUPS:
            problems.append(f"warmup={self.warmup!r} must be one of {WARMUPS}")
        if self.milestones and self.schedule != "multistep":
            problems.append(f"milestones={self.milestones} need schedule='multistep', not {self.schedule!r}")
        if _is_positive_int(self.epochs) and any(not 0 < m <= self.epochs for m in self.milestones):
            problems.append(f"milestones={self.milestones} must lie in (0, epochs={self.epochs}]")
        if _is_positive_int(self.epochs) and not 0 <= self.warmup_epochs <= self.epochs:
            problems.append(f"warmup_epochs={self.warmup_epochs!r} must be in [0, epochs={self.epochs}]")
        if not 0 < self.warmup_factor <= 1:
            problems.append(f"warmup_factor={self.warmup_factor!r} must be in (0, 1]")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing={self.label_smoothing!r} must be in [0, 1)")
        if problems:
            raise ValueError("invalid Recipe: " + "; ".join(problems))

    @classmethod
    def from_iterations(
        cls,
        iterations: int,
        *,
        steps_per_epoch: int,
        milestones: tuple[int, ...] = (),
        **values,
    ) -> Recipe:
        """A recipe given in iterations, as the paper gives its own ([v1] Sec. 4.2).

        ``fit`` completes whole epochs: 64k iterations of 352 per epoch become 182
        epochs (64,064 iterations), and the milestones 32k and 48k become the fractions
        90.9 and 136.4 epochs, which ``lr_schedule`` turns back into iterations 32,000
        and 48,000.
        """
        if not _is_positive_int(iterations) or not _is_positive_int(steps_per_epoch):
            raise ValueError(
                f"iterations={iterations!r} and steps_per_epoch={steps_per_epoch!r} "
                "must be positive integers"
            )
        if milestones and "schedule" not in values:
            values["schedule"] = "multistep"
        return cls(
            epochs=math.ceil(iterations / steps_per_epoch),
            milestones=tuple(m / steps_per_epoch for m in milestones),
            **values,
        )

    def replace(self, **changes) -> Recipe:
        """A copy with some values changed (validated again)."""
        return replace(self, **changes)

    def shortened(self, epochs: int) -> Recipe:
        """The same recipe over ``epochs`` epochs: milestones and warm-up scaled in proportion."""
        if not _is_positive_int(epochs):
            raise ValueError(f"epochs={epochs!r} must be a positive integer")
        scale = epochs / self.epochs
        return self.replace(
            epochs=epochs,
            milestones=tuple(m * scale for m in self.milestones),
            warmup_epochs=self.warmup_epochs * scale,
        )

    def as_dict(self) -> dict:
        """Plain values, as stored in result files and checkpoints (tuples become lists)."""
        values = asdict(self)
        values["milestones"] = list(values["milestones"])
        return values


def lr_schedule(recipe: Recipe, steps_per_epoch: int) -> list[float]:
    """The learning rate of every iteration of a run of ``recipe``, from iteration 0.

    A linear warm-up ramps from ``warmup_factor * lr`` to ``lr`` over ``warmup_epochs``
    (Goyal et al. 2017); a constant one stays at ``warmup_factor * lr`` ([v1]'s 0.01 for
    ResNet-110). Then ``multistep`` multiplies by ``gamma`` at every milestone ([v1]: /10 at
    32k and 48k iterations) and ``cosine`` decays to zero over the rest (Loshchilov and
    Hutter 2017). Epoch counts become iterations by rounding, here and nowhere else.
    """
    if not _is_positive_int(steps_per_epoch):
        raise ValueError(f"steps_per_epoch={steps_per_epoch!r} must be a positive integer")
    total = recipe.epochs * steps_per_epoch
    warmup = round(recipe.warmup_epochs * steps_per_epoch)
    milestones = [round(m * steps_per_epoch) for m in recipe.milestones]
    rates = []
    for step in range(total):
        if step < warmup:
            if recipe.warmup == "constant":
                factor = recipe.warmup_factor
            else:
                factor = recipe.warmup_factor + (1 - recipe.warmup_factor) * step / warmup
        elif recipe.schedule == "multistep":
            factor = recipe.gamma ** sum(step >= m for m in milestones)
        elif recipe.schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            factor = 0.5 * (1 + math.cos(math.pi * progress))
        else:
            factor = 1.0
        rates.append(recipe.lr * factor)
    return rates


# ----------------------------------------------------------------------------- the recipes

# [v1] Sec. 4.2, CIFAR-10: "a weight decay of 0.0001 and momentum of 0.9 ... mini-batch size of
# 128 ... start with a learning rate of 0.1, divide it by 10 at 32k and 48k iterations, and
# terminate training at 64k iterations, which is determined on a 45k/5k train/val split", with
# pad-4 crop and flip augmentation. 45,000 images at batch 128 are 352 iterations per epoch.
PAPER_CIFAR10 = Recipe.from_iterations(
    64_000,
    steps_per_epoch=math.ceil(45_000 / 128),
    milestones=(32_000, 48_000),
    batch_size=128,
    lr=0.1,
    momentum=0.9,
    weight_decay=1e-4,
)


def paper_cifar10(depth: int, recipe: Recipe = PAPER_CIFAR10) -> Recipe:
    """``recipe`` for a net of ``depth`` layers: ResNet-110 and deeper warm up first.

    [v1] Sec. 4.2: for ResNet-110 "0.1 is slightly too large to start converging. So we use
    0.01 to warm up the training until the training error is below 80% (about 400
    iterations), and then go back to 0.1". We warm up for one epoch at a constant 0.01
    (352 iterations in full mode).
    """
    if depth >= 110:
        return recipe.replace(warmup_epochs=min(1.0, recipe.epochs), warmup="constant", warmup_factor=0.1)
    return recipe


# ResNet-18 (CIFAR stem) on CIFAR-10, chapter 4 and benchmarks/time_to_accuracy.py: a large batch
# with a proportionally larger rate and a short linear warm-up (Goyal et al. 2017), cosine decay,
# Nesterov momentum, label smoothing 0.1 (Szegedy et al. 2016). Assembled from that practice and
# not yet run in full: the GPU check on the 45k/5k split is outstanding (results/README.md).
RESNET18_CIFAR10 = Recipe(
    epochs=40,
    batch_size=512,
    lr=0.2,
    nesterov=True,
    weight_decay=5e-4,
    schedule="cosine",
    warmup_epochs=2,
    label_smoothing=0.1,
)
# Chapter 4 in quick mode: the same shape of schedule, a few epochs on a CPU.
RESNET18_QUICK = RESNET18_CIFAR10.replace(epochs=5, batch_size=64, lr=0.1, warmup_epochs=0.5)
# Chapter 4's MNIST section: no augmentation (a flipped digit is another digit).
MNIST_QUICK = RESNET18_QUICK.replace(epochs=3, augment=False)
MNIST_FULL = RESNET18_CIFAR10.replace(epochs=5, augment=False)

# Chapter 1 in quick mode, chosen by scripts/study_degradation.py over 3 seeds (committed in
# results/study-degradation-quick.json): the paper's optimiser (momentum 0.9, weight decay 1e-4)
# at batch 32 with the rate scaled to the batch by the linear scaling rule, 0.1 x 32 / 128 = 0.025
# (Goyal et al. 2017), reached by a linear warm-up over 2 epochs, then cosine decay to zero; 60
# epochs, no augmentation. On the chapter's 250 images (its knob) that is 480 iterations of 8 per
# epoch; the chapter's other knob is the widths of the nets (8, 16, 32 channels in quick mode).
DEGRADATION_QUICK = PAPER_CIFAR10.replace(
    epochs=60, batch_size=32, lr=0.1 * 32 / 128, schedule="cosine", milestones=(), warmup_epochs=2.0,
    augment=False,
)

# Chapter 6's live miniature of the paper's experiment, on 300 training images at batch 32 (10
# iterations per epoch): 70 iterations at the paper's rate scaled to the batch, 0.1 x 32 / 128
# (the linear scaling rule of Goyal et al. 2017), divided by 10 at half and three quarters of
# the run, as 32k and 48k are of 64k.
MINIATURE = Recipe.from_iterations(
    70, steps_per_epoch=10, milestones=(35, 52), batch_size=32, lr=0.1 * 32 / 128, weight_decay=1e-4
)

# Chapter 7's committed nets (scripts/train_analysis_nets.py, results/weights/): ResNet-20 and
# plain-20 on all 50,000 training images for two epochs (782 iterations), what a shared CPU
# allowed, at the paper's batch 128, rate 0.1, momentum 0.9 and weight decay 1e-4 ([v1] Sec.
# 4.2), reached by a linear warm-up over a tenth of the run and then decayed to zero by a cosine,
# which makes the most of a short run (Loshchilov and Hutter 2017).
ANALYSIS_CIFAR10 = Recipe(
    epochs=2, batch_size=128, lr=0.1, weight_decay=1e-4, schedule="cosine", warmup_epochs=0.2
)

# scripts/reproduce.py --quick: a smoke test of the whole path (100 images, 2 epochs).
REPRODUCTION_SMOKE = Recipe.from_iterations(
    8, steps_per_epoch=4, milestones=(4, 6), batch_size=32, lr=0.1, weight_decay=1e-4
)

# Chapter 8's exercise 8.1, the seed posts' two optimisers on seed post 004's 256 randomly drawn
# digits, at Keras's default batch of 32 (8 iterations per epoch) for 6 short epochs, with no
# augmentation, schedule or weight decay (Keras's SGD and Adam have none by default).
# ADAM_VS_SGD_SGD is post 004's `SGD(learning_rate=0.01, momentum=0.0)`. ADAM_VS_SGD_ADAM gives
# post 000's `Adam(lr=1e-3)` its rate and the same batches; the chapter builds the Adam optimiser
# itself (a Recipe describes SGD, so its momentum is unused there).
ADAM_VS_SGD_SGD = Recipe(
    epochs=6, batch_size=32, lr=0.01, momentum=0.0, weight_decay=0.0, schedule="constant",
    augment=False,
)
ADAM_VS_SGD_ADAM = ADAM_VS_SGD_SGD.replace(lr=1e-3)
