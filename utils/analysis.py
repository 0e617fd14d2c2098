"""Reproducing the paper's CIFAR-10 experiment, and looking inside the nets it trains.

Three parts, shared by ``scripts/reproduce.py`` and chapters 6 and 7:

**Reproduction** (He et al. 2016, Sec. 4.2; cited below as [v1]).
    ``PAPER_RECIPE`` holds the paper's protocol; ``run_reproduction`` trains one net with one
    seed through ``utils.train.fit``, resumably and within a time limit, and writes a JSON
    record; ``load_results``, ``comparison_table``, ``outstanding_runs`` and ``plot_degradation``
    turn records into the paper's Table 6 and Fig. 6.
**Lesions** (Veit, Wilber and Belongie 2016).
    ``lesion`` returns a copy of a net with some blocks' residual branches removed, so that each
    such block computes only its shortcut (``BlockShortcut``); ``lesion_study`` removes one block
    at a time and measures the accuracy.
**Loss landscapes** (Li, Xu, Taylor, Studer and Goldstein 2018).
    ``filter_normalized_direction`` draws a random direction in weight space with every filter
    scaled to the norm of the trained filter; ``loss_surface`` evaluates the loss on a 1-D or
    2-D grid along such directions; ``plot_loss_contours`` draws a 2-D grid.

The reproduction logic lives here rather than in the script so that the chapters (and Colab,
where only this package is installed) import it instead of copying it.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import config, data, models, results, train

__all__ = [
    "PAPER_NETS",
    "PAPER_SEEDS",
    "PAPER_TEST_ERROR",
    "Recipe",
    "PAPER_RECIPE",
    "QUICK_RECIPE",
    "parse_net",
    "build_net",
    "fit_schedule",
    "load_splits",
    "make_run_loaders",
    "default_results_dir",
    "default_checkpoint_dir",
    "run_name",
    "run_reproduction",
    "load_results",
    "load_trained",
    "final_errors",
    "comparison_table",
    "outstanding_runs",
    "plot_degradation",
    "BLOCK_TYPES",
    "residual_blocks",
    "BlockShortcut",
    "lesion",
    "lesion_study",
    "normalize_filters_",
    "filter_normalized_direction",
    "loss_surface",
    "plot_loss_contours",
]

# ============================================================================ reproduction

# The nets of [v1] Fig. 6 and Table 6 (ResNet-1202 left out: 19.4M parameters, and the paper
# itself reports that it overfits).
PAPER_NETS = (
    "plain20", "plain32", "plain44", "plain56",
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
)  # fmt: skip
PAPER_SEEDS = (0, 1)
# [v1] Table 6, test error in %. Single runs, except ResNet-110: the best of 5 runs (their mean
# and std, 6.61 +- 0.16, are quoted in chapter 6).
PAPER_TEST_ERROR = {"resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97, "resnet110": 6.43}

NET_NAME = re.compile(r"^(resnet|plain)(\d+)$")


def parse_net(name: str) -> tuple[bool, int]:
    """``"resnet56"`` -> (True, 56), ``"plain20"`` -> (False, 20): residual or plain, and depth."""
    match = NET_NAME.match(name)
    if not match or (int(match.group(2)) - 2) % 6 != 0 or int(match.group(2)) < 8:
        raise ValueError(
            f"unknown net {name!r}; expected 'resnet<depth>' or 'plain<depth>' with depth = 6n + 2 "
            f"(8, 14, 20, 32, 44, 56, 110, ...), e.g. {', '.join(PAPER_NETS[:2])}"
        )
    return match.group(1) == "resnet", int(match.group(2))


def build_net(name: str, num_classes: int = 10, shortcut: str = "A") -> models.ResNet:
    """The CIFAR net called ``name`` ([v1] Sec. 4.2): ``resnet_cifar`` or ``plain_cifar``."""
    residual, depth = parse_net(name)
    if residual:
        return models.resnet_cifar(depth, num_classes, shortcut=shortcut)
    return models.plain_cifar(depth, num_classes)


@dataclass(frozen=True)
class Recipe:
    """How one reproduction run trains: the defaults are the paper's ([v1] Sec. 4.2).

    Iterations count mini-batches, as the paper does; ``fit_schedule`` turns them into epochs.
    ``None`` for a ``*_per_class`` field means "all images of that split".
    """

    batch_size: int = 128
    iterations: int = 64_000  # "terminate training at 64k iterations"
    milestones: tuple[int, ...] = (32_000, 48_000)  # "divide it by 10 at 32k and 48k iterations"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # ResNet-110 starts at lr 0.01 "until the training error is below 80% (about 400 iterations)";
    # we warm up for one epoch (352 iterations) at a constant 0.01, then go back to 0.1.
    warmup_depth: int = 110
    warmup_epochs: float = 1.0
    warmup_factor: float = 0.1
    val_size: int | float = 5000  # the 45k/5k train/validation split
    train_per_class: int | None = None
    val_per_class: int | None = None
    test_per_class: int | None = None
    shortcut: str = "A"  # zero-padding identity shortcuts: ResNets and plain nets have equal weights
    augment: bool = True  # pad 4 pixels, random 32x32 crop, random horizontal flip

    def __post_init__(self):
        if self.iterations <= 0 or self.batch_size <= 0:
            raise ValueError(f"iterations={self.iterations} and batch_size={self.batch_size} must be positive")
        if any(not 0 < m < self.iterations for m in self.milestones):
            raise ValueError(f"milestones={self.milestones} must lie strictly inside (0, iterations={self.iterations})")
        if not 0 <= self.warmup_epochs <= 1:
            # fit checks warmup_steps <= total_steps, and resumed runs call it one epoch at a time.
            raise ValueError(f"warmup_epochs={self.warmup_epochs} must be in [0, 1]")


PAPER_RECIPE = Recipe()
# A smoke test of the whole path (``scripts/reproduce.py --quick``): 100 images, 2 epochs.
QUICK_RECIPE = Recipe(
    batch_size=32, iterations=8, milestones=(4, 6), val_size=0.1,
    train_per_class=10, val_per_class=5, test_per_class=10,
)  # fmt: skip


def fit_schedule(recipe: Recipe, depth: int, steps_per_epoch: int) -> dict:
    """The keyword arguments of ``utils.train.fit`` that carry out ``recipe`` for a net of ``depth``.

    ``fit`` counts in epochs: 64k iterations of 352 batches (45,000 images, batch 128) are
    182 epochs (64,064 iterations, the last epoch completed), and the milestones become the
    fractions 90.9 and 136.4 epochs, which ``fit`` turns back into iterations 32,000 and 48,000.
    """
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch={steps_per_epoch} must be positive")
    warm = depth >= recipe.warmup_depth and recipe.warmup_epochs > 0
    return {
        "epochs": math.ceil(recipe.iterations / steps_per_epoch),
        "lr": recipe.lr,
        "momentum": recipe.momentum,
        "weight_decay": recipe.weight_decay,
        "schedule": "multistep",
        "milestones": [m / steps_per_epoch for m in recipe.milestones],
        "gamma": 0.1,
        "warmup_epochs": recipe.warmup_epochs if warm else 0,
        "warmup": "constant",
        "warmup_factor": recipe.warmup_factor,
    }


def load_splits(recipe: Recipe, *, allow_fallback: bool | None = None) -> dict[str, data.ImageSet]:
    """CIFAR-10 as ``{"train", "val", "test"}``: the stratified validation split, then subsets.

    The split and the subsets use seed 0 whatever the run's seed, so every run of a
    reproduction sees the same images. ``allow_fallback`` (default: in quick mode only)
    decides whether the offline digits fallback is acceptable; if not, a
    ``DataUnavailableError`` says what to do.
    """
    allow_fallback = config.is_quick() if allow_fallback is None else allow_fallback
    train_all, test = data.load_cifar10("train"), data.load_cifar10("test")
    if train_all.source.startswith("fallback") and not allow_fallback:
        raise data.DataUnavailableError(
            "refusing to run on the offline digits FALLBACK: a reproduction of the paper needs the real CIFAR-10. "
            f"Put a copy of it in {config.data_dir()} (cifar10.tgz, or torchvision's cifar-10-batches-py/) or set "
            f"{config.DATA_VARIABLE} to a folder that has one; quick mode (--quick) accepts the fallback."
        )
    train_set, val_set = data.train_val_split(train_all, recipe.val_size, seed=0)
    splits = {"train": train_set, "val": val_set, "test": test}
    for name in splits:
        per_class = getattr(recipe, f"{name}_per_class")
        if per_class is not None:
            splits[name] = data.class_balanced_subset(splits[name], per_class, seed=0)
    return splits


def make_run_loaders(
    splits: Mapping[str, data.ImageSet], recipe: Recipe, device: torch.device | str = "cpu", seed: int = 0
) -> tuple[data.BatchLoader, dict[str, data.BatchLoader]]:
    """The training loader (shuffled by ``seed``, augmented) and the validation and test loaders.

    All normalise with the training split's channel statistics, so a model loaded from a
    checkpoint must be evaluated with loaders made here from the same recipe.
    """
    evals = {name: splits[name] for name in ("val", "test")}
    return data.make_loaders(
        splits["train"], evals, recipe.batch_size, augment=recipe.augment, device=device, seed=seed
    )


def default_results_dir(mode: str, repo_root: str | Path) -> Path:
    """Where the JSON records go: ``results/cifar10`` in the repository for full runs only.

    Quick runs are smoke tests and stay out of the repository, under the data directory.
    """
    if mode == "full":
        return Path(repo_root) / "results" / "cifar10"
    return config.data_dir() / "reproduce-quick" / "results"


def default_checkpoint_dir(mode: str) -> Path:
    """Where checkpoints go: under the data directory, never in the repository."""
    return config.data_dir() / ("checkpoints/cifar10" if mode == "full" else "reproduce-quick/checkpoints")


def run_name(net: str, seed: int) -> str:
    """``resnet56-seed0``: the stem of a run's JSON and checkpoint files."""
    return f"{net}-seed{seed}"


def _history_record(history: Mapping[str, Sequence[float]], steps_per_epoch: int) -> dict[str, list]:
    """``fit``'s history with accuracies as error rates in %, and the iteration of every epoch."""
    record: dict[str, list] = {
        "epoch": list(history["epoch"]),
        "iteration": [int(e) * steps_per_epoch for e in history["epoch"]],
        "lr": list(history["lr"]),
    }
    for split in ("train", "val", "test"):
        if f"{split}_acc" in history:
            record[f"{split}_loss"] = list(history[f"{split}_loss"])
            record[f"{split}_error"] = [100.0 * (1.0 - a) for a in history[f"{split}_acc"]]
    record["seconds"] = list(history["seconds"])
    return record


# Fields that must match between a run's JSON and the run being resumed from its checkpoint.
_IDENTITY = ("net", "seed", "recipe", "data", "steps_per_epoch", "amp")

# The clock of the time limit; a test replaces it with a fake one.
_clock: Callable[[], float] = time.monotonic


def run_reproduction(
    net: str,
    seed: int,
    recipe: Recipe,
    *,
    results_path: str | Path,
    checkpoint_path: str | Path,
    deadline: float | None = None,
    splits: Mapping[str, data.ImageSet] | None = None,
    device: torch.device | str | None = None,
    amp: bool = False,
    compile: bool = False,
    progress: bool = False,
    argv: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train ``net`` with ``seed`` by ``recipe``, resuming from ``checkpoint_path``; return its record.

    Training goes through ``utils.train.fit`` with ``checkpoint=``: the checkpoint is written
    atomically after every epoch and a later call continues from it (same batches, same random
    numbers, the history continued). With ``deadline`` (a value of ``time.monotonic()``), training
    stops between epochs once the next epoch would probably not finish in time; the record
    says how many epochs are done and ``done`` turns true after the last. The record
    (``results.write_json``, atomic) is rewritten after every stretch of epochs, so an
    interrupted run loses at most the epochs since then, and those are in the checkpoint.
    """
    residual, depth = parse_net(net)
    results_path, checkpoint_path = Path(results_path), Path(checkpoint_path)
    splits = load_splits(recipe) if splits is None else splits
    device = torch.device(device) if device is not None else train.default_device()
    train_loader, evals = make_run_loaders(splits, recipe, device, seed)
    steps = len(train_loader)
    schedule = fit_schedule(recipe, depth, steps)
    planned = schedule["epochs"]

    train.set_seed(seed)  # the initial weights; a resumed run replaces them with the checkpoint's
    model = build_net(net, len(splits["train"].classes), recipe.shortcut)
    record = {
        **results.run_metadata(argv),
        "experiment": "He et al. 2016, Sec. 4.2: CIFAR-10, plain vs residual nets",
        "net": net,
        "depth": depth,
        "residual": residual,
        "seed": seed,
        "parameters": models.count_parameters(model),
        # JSON turns tuples into lists: round-trip so that a reloaded record compares equal.
        "recipe": json.loads(json.dumps(asdict(recipe))),
        "weight_decay_on_norm_and_bias": False,  # utils.train.make_optimizer exempts them
        "amp": amp,
        "data": {
            "dataset": "fallback digits" if splits["train"].source.startswith("fallback") else "CIFAR-10",
            **{f"{name}_images": len(split) for name, split in splits.items()},
        },
        "data_source": splits["train"].source,  # a path on the machine that ran it: not compared on resume
        "steps_per_epoch": steps,
        "epochs_planned": planned,
        "iterations_planned": planned * steps,
        "checkpoint": str(checkpoint_path),
    }

    previous = results.read_json(results_path) if results_path.exists() else None
    name = run_name(net, seed)
    if previous is not None:
        changed = [k for k in _IDENTITY if previous.get(k) != record[k]]
        if changed:
            raise ValueError(
                f"{results_path} records a run with different {', '.join(changed)}; continuing it would mix two "
                "experiments. Move it (and its checkpoint) away to start over, or pass other paths."
            )
        if previous.get("done"):
            log(f"{name}: already done ({previous['epochs_completed']} epochs), see {results_path}")
            return previous
        if previous.get("epochs_completed", 0) > 0 and not checkpoint_path.exists():
            raise FileNotFoundError(
                f"{results_path} records {previous['epochs_completed']} finished epochs, but their checkpoint "
                f"{checkpoint_path} is missing: copy it back (see results/README.md), or move {results_path} away "
                "to start over"
            )
    history = train.load_checkpoint(checkpoint_path)["history"] if checkpoint_path.exists() else None
    invocations = list(previous.get("invocations", [])) if previous is not None and history is not None else []
    done = len(history["epoch"]) if history is not None else 0
    invocation = {k: record[k] for k in ("command", "commit", "date", "device", "torch")} | {"epochs_before": done}

    def write(stopped: str | None) -> dict:
        record["epochs_completed"] = done
        record["iterations_completed"] = done * steps
        record["done"] = done >= planned
        record["stopped"] = stopped
        record["invocations"] = invocations + [invocation | {"epochs_after": done}]
        record["history"] = _history_record(history, steps) if history is not None else None
        record["final"] = (
            {k: v[-1] for k, v in record["history"].items() if k.endswith("_error")} if record["done"] else None
        )
        record["total_seconds"] = float(sum(history["seconds"])) if history is not None else 0.0
        results.write_json(results_path, record)
        return record

    seconds_per_epoch = 0.0  # measured in this process: the slowest stretch, per epoch, with overheads
    stopped = None
    while done < planned:
        chunk = planned - done
        if deadline is not None:
            remaining = deadline - _clock()
            if seconds_per_epoch == 0:  # nothing measured yet in this process: try one epoch
                chunk = 1 if remaining > 0 else 0
            else:  # only the epochs that fit, with a 10 % margin
                chunk = min(chunk, int(remaining // (1.1 * seconds_per_epoch)))
            if chunk < 1:
                pace = f", {seconds_per_epoch:.1f} s per epoch here" if seconds_per_epoch else ""
                stopped = f"time limit: stopped after epoch {done} of {planned}{pace}"
                log(f"{name}: stopping at the time limit after epoch {done}/{planned}; run again to continue")
                break
        started = _clock()
        history = train.fit(
            model, train_loader, evals, **(schedule | {"epochs": done + chunk}),
            device=device, amp=amp, compile=compile, checkpoint=checkpoint_path, progress=progress,
        )  # fmt: skip
        seconds_per_epoch = max(seconds_per_epoch, (_clock() - started) / chunk)
        done = len(history["epoch"])
        write(None)
        errors = {k: f"{v[-1]:.2f}" for k, v in record["history"].items() if k.endswith("_error")}
        log(f"{name}: epoch {done}/{planned}, error (%) {errors}, {history['seconds'][-1]:.1f} s/epoch")
    return write(stopped)


def load_results(folder: str | Path, mode: str | None = None) -> list[dict]:
    """Every run record (``*.json``) in ``folder``, sorted by net and seed; [] if there is none.

    ``mode="full"`` keeps only records made in full mode (the real experiment).
    """
    folder = Path(folder)
    records = [results.read_json(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    records = [r for r in records if "net" in r and "history" in r and (mode is None or r.get("mode") == mode)]
    return sorted(records, key=lambda r: (_net_order(r["net"]), r["seed"]))


def _net_order(net: str) -> tuple[int, int]:
    residual, depth = parse_net(net)
    return int(residual), depth


def load_trained(net: str, checkpoint_path: str | Path, num_classes: int = 10, shortcut: str = "A") -> models.ResNet:
    """The net saved in a reproduction checkpoint, in evaluation mode, on the CPU."""
    model = build_net(net, num_classes, shortcut)
    return train.load_model(model, checkpoint_path).eval()


def final_errors(records: Iterable[dict], split: str = "test") -> dict[str, list[float]]:
    """The final ``split`` error (%) of every finished run, by net: ``{"resnet20": [8.6, 8.9], ...}``."""
    errors: dict[str, list[float]] = {}
    for r in records:
        if r.get("done") and r.get("final"):
            errors.setdefault(r["net"], []).append(r["final"][f"{split}_error"])
    return errors


def comparison_table(records: Iterable[dict], tolerance: float = 0.5):
    """Our final test errors (mean and sample std over seeds) beside [v1] Table 6, as a DataFrame.

    One row per net with at least one finished run. ``within`` is True when the mean is within
    ``tolerance`` points of the paper, False when not, and missing for the plain nets (the paper
    gives them as curves only, Fig. 6).
    """
    import pandas as pd  # local: only the tables need it

    rows = []
    for net, errors in sorted(final_errors(records).items(), key=lambda item: _net_order(item[0])):
        paper = PAPER_TEST_ERROR.get(net)
        mean = float(np.mean(errors))
        rows.append({
            "net": net,
            "runs": len(errors),
            "test error (%)": mean,
            "std": float(np.std(errors, ddof=1)) if len(errors) > 1 else float("nan"),
            "paper (%)": paper if paper is not None else float("nan"),
            "difference": mean - paper if paper is not None else float("nan"),
            "within": (abs(mean - paper) <= tolerance) if paper is not None else None,
        })  # fmt: skip
    columns = ["net", "runs", "test error (%)", "std", "paper (%)", "difference", "within"]
    return pd.DataFrame(rows, columns=columns).set_index("net")


def outstanding_runs(
    records: Iterable[dict], nets: Sequence[str] = PAPER_NETS, seeds: Sequence[int] = PAPER_SEEDS
) -> list[str]:
    """The runs of a reproduction that are not finished, e.g. ``["resnet110-seed1 (91/182 epochs)", ...]``."""
    by_run = {(r["net"], r["seed"]): r for r in records}
    missing = []
    for net in nets:
        for seed in seeds:
            r = by_run.get((net, seed))
            if r is None:
                missing.append(f"{run_name(net, seed)} (not started)")
            elif not r.get("done"):
                missing.append(f"{run_name(net, seed)} ({r['epochs_completed']}/{r['epochs_planned']} epochs)")
    return missing


def _mean_curves(records: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Iterations and the seed-mean of ``history[key]`` over the epochs every run has reached."""
    length = min(len(r["history"][key]) for r in records)
    curves = np.array([r["history"][key][:length] for r in records], dtype=float)
    return np.asarray(records[0]["history"]["iteration"][:length]), curves.mean(0)


def plot_degradation(records: Iterable[dict], axes=None, ylim: tuple[float, float] | None = None):
    """[v1] Fig. 6: training (dashed) and test (solid) error vs iterations, plain nets left, ResNets right.

    Each curve is the mean over the seeds of one net. Returns the two axes.
    """
    import matplotlib.pyplot as plt

    groups: dict[tuple[bool, int], list[dict]] = {}
    for r in records:
        if r.get("history"):
            groups.setdefault(parse_net(r["net"]), []).append(r)
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    largest = max((r["history"]["iteration"][-1] for rs in groups.values() for r in rs), default=0)
    scale, unit = (1e4, " (1e4)") if largest >= 2e4 else (1, "")
    depths = sorted({depth for _, depth in groups})
    colours = dict(zip(depths, plt.cm.viridis(np.linspace(0, 0.9, max(1, len(depths))))))
    for ax, residual in zip(axes, (False, True)):
        for (is_residual, depth), runs in sorted(groups.items()):
            if is_residual != residual:
                continue
            label = f"{'ResNet' if residual else 'plain'}-{depth}"
            iterations, train_error = _mean_curves(runs, "train_error")
            ax.plot(iterations / scale, train_error, "--", color=colours[depth], linewidth=1)
            iterations, test_error = _mean_curves(runs, "test_error")
            ax.plot(iterations / scale, test_error, "-", color=colours[depth], linewidth=2, label=label)
        ax.set_title(f"{'residual' if residual else 'plain'} nets")
        ax.set_xlabel(f"iterations{unit}")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    axes[0].set_ylabel("error (%): dashed training, solid test")
    if ylim is not None:
        axes[0].set_ylim(*ylim)
    return axes


# ============================================================================ lesions

BLOCK_TYPES = (models.BasicBlock, models.Bottleneck, models.PreActBasicBlock, models.PreActBottleneck)


def residual_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every block of ``model`` in forward order, named as in ``named_modules()`` (``"layer1.0"``, ...)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, BLOCK_TYPES)]


def _block_shape(block: nn.Module) -> tuple[int, int, int]:
    """Input channels, output channels and stride of a block of ``utils.models``."""
    last = block.conv3 if hasattr(block, "conv3") else block.conv2
    return block.conv1.in_channels, last.out_channels, block.stride


def _changes_shape(block: nn.Module) -> bool:
    in_channels, out_channels, stride = _block_shape(block)
    return stride != 1 or in_channels != out_channels


class BlockShortcut(nn.Module):
    """What a block computes once its residual branch F is removed: its shortcut alone.

    A post-activation block computes ReLU(F(x) + s(x)) and becomes ReLU(s(x)); a
    pre-activation block computes F(x) + s(x) and becomes s(x) (a pre-activation projection
    shortcut reads the block's first BN-ReLU, so that stays). ``s`` is the identity, option A's zero
    padding or the projection the block already has.

    A plain block has no shortcut. It is replaced by the parameter-free mapping a residual
    net would have there (the identity, or option A where the shape changes), so that the
    network still runs: the comparison of Veit et al. (2016), who delete layers from VGG.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        if not isinstance(block, BLOCK_TYPES):
            names = ", ".join(t.__name__ for t in BLOCK_TYPES)
            raise TypeError(f"expected a block of utils.models ({names}), got {type(block).__name__}")
        self.preactivation = getattr(block, "preactivation", False)
        if getattr(block, "residual", True):
            shortcut = block.downsample
        else:
            in_channels, out_channels, stride = _block_shape(block)
            shortcut = models.PadShortcut(in_channels, out_channels, stride) if _changes_shape(block) else None
        self.shortcut = shortcut
        # A pre-activation projection shortcut acts on the block's pre-activated input.
        projection = shortcut is not None and not isinstance(shortcut, models.PadShortcut)
        self.preact_norm = block.bn1 if self.preactivation and projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact_norm is not None:
            out = self.shortcut(F.relu(self.preact_norm(x)))
        else:
            out = x if self.shortcut is None else self.shortcut(x)
        return out if self.preactivation else F.relu(out)


def _block_name(model: nn.Module, block: int | str) -> str:
    names = [name for name, _ in residual_blocks(model)]
    if isinstance(block, str):
        if block not in names:
            raise ValueError(f"no block named {block!r}; the blocks are {names}")
        return block
    if isinstance(block, bool) or not isinstance(block, int) or not -len(names) <= block < len(names):
        raise ValueError(f"block index {block!r} out of range: the model has {len(names)} blocks")
    return names[block]


def lesion(model: nn.Module, *blocks: int | str) -> nn.Module:
    """A copy of ``model`` in which each of ``blocks`` (index in forward order, or name) is only its shortcut.

    ``model`` itself is left untouched. ``lesion(model)`` with no block is a plain copy.
    """
    names = [_block_name(model, b) for b in blocks]
    lesioned = copy.deepcopy(model)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = lesioned.get_submodule(parent_name) if parent_name else lesioned
        setattr(parent, child, BlockShortcut(parent.get_submodule(child)))
    return lesioned


def lesion_study(model: nn.Module, loader: Iterable, device: torch.device | str | None = None) -> dict:
    """Test accuracy of ``model`` with each block removed in turn ([Veit et al. 2016], Fig. 3).

    Returns ``{"baseline": accuracy, "blocks": names, "accuracy": one per block,
    "downsampling": whether each block changes the shape}``.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    blocks = residual_blocks(model)
    _, baseline = train.evaluate(model, loader, device)
    accuracy = [train.evaluate(lesion(model, name).to(device), loader, device)[1] for name, _ in blocks]
    return {
        "baseline": baseline,
        "blocks": [name for name, _ in blocks],
        "accuracy": accuracy,
        "downsampling": [_changes_shape(b) for _, b in blocks],
    }


# ============================================================================ loss landscapes


@torch.no_grad()
def normalize_filters_(direction: torch.Tensor, weight: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Scale every filter of ``direction`` (in place) to the norm of the same filter of ``weight``.

    A filter is a slice along dimension 0: one output channel of a convolution, one output
    unit (row) of a linear layer. Li et al. (2018, Sec. 4): d_ij <- d_ij ||w_ij|| / ||d_ij||.
    """
    if direction.shape != weight.shape or direction.ndim < 2:
        raise ValueError(
            f"direction {tuple(direction.shape)} and weight {tuple(weight.shape)} must have the same shape, "
            "with at least 2 dimensions (filters along dimension 0)"
        )
    flat = direction.view(len(direction), -1)  # a view: scaling it scales direction
    target = weight.reshape(len(weight), -1).norm(dim=1, keepdim=True)
    flat.mul_(target / (flat.norm(dim=1, keepdim=True) + eps))
    return direction


def filter_normalized_direction(model: nn.Module, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """A random Gaussian direction in the weight space of ``model``, filter-normalised.

    One tensor per parameter, by name. Weights with filters are normalised with
    ``normalize_filters_``; 1-D parameters (BatchNorm scales and shifts, biases) get a zero
    direction, as in Li et al.'s code (``--xignore biasbn``): the plots move only the
    convolution and linear weights.
    """
    direction = {}
    for name, p in model.named_parameters():
        d = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        direction[name] = d.zero_() if p.ndim <= 1 else normalize_filters_(d, p.detach())
    return direction


@torch.no_grad()
def loss_surface(
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    directions: Sequence[Mapping[str, torch.Tensor]],
    coordinates: Sequence[Sequence[float]],
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Mean cross-entropy over ``batches`` at theta + sum_k c_k d_k, for every point of a grid.

    ``directions`` holds one or two directions (``filter_normalized_direction``) and
    ``coordinates`` the values along each; the result has shape ``(len(c_1), len(c_2), ...)``.
    The model is evaluated in evaluation mode (BatchNorm with its running statistics) on a
    copy: ``model`` is left untouched.
    """
    if len(directions) != len(coordinates) or not directions:
        raise ValueError(
            f"got {len(directions)} directions and {len(coordinates)} coordinate lists; "
            "expected as many of each, at least one"
        )
    device = torch.device(device) if device is not None else next(model.parameters()).device
    probe = copy.deepcopy(model).to(device).eval()
    params = dict(probe.named_parameters())
    origin = {name: p.detach().clone() for name, p in params.items()}
    moved = [{name: d[name].to(device) for name in params} for d in directions]
    grid = np.empty([len(c) for c in coordinates])
    for index in np.ndindex(*grid.shape):
        for name, p in params.items():
            p.copy_(origin[name])
            for k, direction in enumerate(moved):
                p.add_(direction[name], alpha=float(coordinates[k][index[k]]))
        grid[index] = train.evaluate(probe, batches, device)[0]
    return grid


def plot_loss_contours(
    ax, alphas: Sequence[float], betas: Sequence[float], losses: np.ndarray, levels: int = 12, title: str = ""
):
    """Contours of a 2-D loss surface (``losses[i, j]`` at ``alphas[i]``, ``betas[j]``), log-spaced levels."""
    losses = np.asarray(losses, dtype=float)
    lo, hi = float(losses.min()), float(losses.max())
    contour = ax.contour(alphas, betas, losses.T, levels=np.geomspace(lo, hi, levels), cmap="viridis")
    ax.clabel(contour, fontsize=7, fmt="%.2g")
    ax.plot(0, 0, "k+", markersize=10)  # the trained weights
    ax.set_xlabel(r"$\alpha$ (direction 1)")
    ax.set_ylabel(r"$\beta$ (direction 2)")
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return contour
