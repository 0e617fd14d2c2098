"""Reproducing the paper's CIFAR-10 experiment (He et al. 2015, Sec. 4.2; cited as [v1]).

Shared by ``scripts/reproduce.py`` and chapters 6 and 7 (and Colab, where only this package
is installed), so none of them copies it:

- ``DataPlan`` says which images a run sees (the paper's 45k/5k split, or class-balanced
  subsets of it); ``load_splits`` and ``make_run_loaders`` make them.
- ``run_reproduction`` trains one net with one seed through ``utils.train.fit`` with
  ``utils.recipes.paper_cifar10`` (or any ``Recipe``), resumably and within a time limit,
  and keeps a JSON record of it (``results/README.md`` has the schema).
- ``load_results``, ``comparison_table``, ``outstanding_runs`` and ``plot_degradation`` turn
  records into the paper's Table 6 and Fig. 6.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import config, data, models, results, runs, train
from .files import read_json, write_json
from .recipes import PAPER_CIFAR10, Recipe, paper_cifar10

__all__ = [
    "PAPER_NETS",
    "PAPER_SEEDS",
    "PAPER_TEST_ERROR",
    "DataPlan",
    "PAPER_DATA",
    "SMOKE_DATA",
    "parse_net",
    "build_net",
    "load_splits",
    "make_run_loaders",
    "default_results_dir",
    "default_checkpoint_dir",
    "committed_results_dir",
    "run_name",
    "run_reproduction",
    "load_results",
    "load_trained",
    "final_errors",
    "comparison_table",
    "outstanding_runs",
    "plot_degradation",
]

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
    """The CIFAR net called ``name`` ([v1] Sec. 4.2): ``resnet_cifar`` or ``plain_cifar``.

    Option A (zero-padding identity shortcuts) is the paper's choice for CIFAR-10: ResNets
    and plain nets then have exactly the same weights.
    """
    residual, depth = parse_net(name)
    if residual:
        return models.resnet_cifar(depth, num_classes, shortcut=shortcut)
    return models.plain_cifar(depth, num_classes)


@dataclass(frozen=True)
class DataPlan:
    """Which CIFAR-10 images a run sees: the defaults are the paper's 45k/5k split and the test set.

    ``val_size`` is a number of images or a fraction; ``None`` for a ``*_per_class`` field
    means "all images of that split", a number a class-balanced subset of it.
    """

    val_size: int | float = 5000
    train_per_class: int | None = None
    val_per_class: int | None = None
    test_per_class: int | None = None


PAPER_DATA = DataPlan()
# scripts/reproduce.py --quick (with recipes.REPRODUCTION_SMOKE): 100 training images.
SMOKE_DATA = DataPlan(val_size=0.1, train_per_class=10, val_per_class=5, test_per_class=10)


def load_splits(plan: DataPlan = PAPER_DATA, *, allow_fallback: bool | None = None) -> dict[str, data.ImageSet]:
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
    train_set, val_set = data.train_val_split(train_all, plan.val_size, seed=0)
    splits = {"train": train_set, "val": val_set, "test": test}
    for name in splits:
        per_class = getattr(plan, f"{name}_per_class")
        if per_class is not None:
            splits[name] = data.class_balanced_subset(splits[name], per_class, seed=0)
    return splits


def make_run_loaders(
    splits: Mapping[str, data.ImageSet],
    recipe: Recipe,
    device: torch.device | str = "cpu",
    seed: int = 0,
    eval_batch_size: int = 512,
) -> tuple[data.BatchLoader, dict[str, data.BatchLoader]]:
    """The training loader (shuffled by ``seed``, augmented as the recipe says) and the val/test loaders.

    All normalise with the training split's channel statistics, so a model loaded from a
    checkpoint must be evaluated with loaders made here from the same splits.
    """
    evals = {name: splits[name] for name in ("val", "test")}
    return data.make_loaders(
        splits["train"], evals, recipe.batch_size, augment=recipe.augment, device=device, seed=seed,
        eval_batch_size=eval_batch_size,
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
    if mode == "full":
        return config.checkpoint_dir() / "cifar10"
    return config.data_dir() / "reproduce-quick" / "checkpoints"


def committed_results_dir() -> Path | None:
    """``results/cifar10`` of the repository: the full runs committed with the course.

    ``RESNET_RESULTS`` (``config.results_root``) names another results folder (the dry run's).
    None where this installation of ``utils`` has no repository beside it.
    """
    root = config.results_root()
    return None if root is None else root / "cifar10"


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
_IDENTITY = ("net", "seed", "recipe", "data", "steps_per_epoch", "precision", "shortcut", "code")


def run_reproduction(
    net: str,
    seed: int,
    recipe: Recipe = PAPER_CIFAR10,
    plan: DataPlan = PAPER_DATA,
    *,
    results_path: str | Path,
    checkpoint_path: str | Path,
    deadline: float | None = None,
    splits: Mapping[str, data.ImageSet] | None = None,
    device: torch.device | str | None = None,
    precision: str = "fp32",
    shortcut: str = "A",
    compile: bool = False,
    progress: bool = False,
    max_batches: int | None = None,
    epochs_now: int | None = None,
    argv: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train ``net`` with ``seed`` by ``recipe``, resuming from ``checkpoint_path``; return its record.

    Nets of 110 layers or more warm up first (``recipes.paper_cifar10``). Training goes
    through ``utils.train.fit`` with ``checkpoint=``: a later call continues from the
    checkpoint (same batches, same random numbers, the history continued). With ``deadline``
    (a ``time.monotonic()`` value) it stops between epochs once the next one would not finish
    in time; the record says how many epochs are done, and ``done`` turns true after the last.
    The record is rewritten atomically after every epoch. ``precision`` is fp32 by default:
    the paper trained in fp32. ``epochs_now`` trains at most that many epochs in this call and
    ``max_batches`` caps every pass over the data (``make runs --dry-run``). A record made by
    other training code (``runs.code_fingerprint``) is never continued: the run starts anew.
    """
    residual, depth = parse_net(net)
    recipe = paper_cifar10(depth, recipe)
    results_path, checkpoint_path = Path(results_path), Path(checkpoint_path)
    splits = load_splits(plan) if splits is None else splits
    device = torch.device(device) if device is not None else train.default_device()
    eval_batch_size = 512 if max_batches is None else recipe.batch_size  # a dry run stays small
    train_loader, evals = make_run_loaders(splits, recipe, device, seed, eval_batch_size)
    if max_batches is not None:
        train_loader = runs.Capped(train_loader, max_batches)
        evals = {name: runs.Capped(loader, max_batches) for name, loader in evals.items()}
    steps = len(train_loader)

    train.set_seed(seed)  # the initial weights; a resumed run replaces them with the checkpoint's
    model = build_net(net, len(splits["train"].classes), shortcut).to(device)
    record = {
        **results.run_metadata(argv),
        "experiment": "He et al. 2015, Sec. 4.2: CIFAR-10, plain vs residual nets",
        "net": net,
        "depth": depth,
        "residual": residual,
        "seed": seed,
        "shortcut": shortcut,
        "parameters": models.count_parameters(model),
        "recipe": recipe.as_dict(),
        "weight_decay_on_norm_and_bias": False,  # utils.train.make_optimizer exempts them
        "precision": precision,
        "data": {
            "dataset": "fallback digits" if splits["train"].source.startswith("fallback") else "CIFAR-10",
            **{f"{name}_images": len(split) for name, split in splits.items()},
        },
        "data_source": splits["train"].source,  # a path on the machine that ran it: not compared on resume
        "steps_per_epoch": steps,
        "epochs_planned": recipe.epochs,
        "iterations_planned": recipe.epochs * steps,
        "checkpoint": str(checkpoint_path),
        "code": runs.code_fingerprint(),
    }

    previous = read_json(results_path) if results_path.exists() else None
    name = run_name(net, seed)
    if previous is not None:
        changed = [k for k in _IDENTITY if previous.get(k) != record[k]]
        if changed == ["code"]:
            log(f"{name}: {results_path} was made by other training code (utils changed): training anew")
            checkpoint_path.unlink(missing_ok=True)
            previous, changed = None, []
        if changed:
            raise ValueError(
                f"{results_path} records a run with different {', '.join(changed)}; continuing it would mix two "
                "experiments. Move it (and its checkpoint) away to start over, or pass other paths."
            )
    if previous is not None:  # None again when other training code made it (above)
        if previous.get("done"):
            log(f"{name}: already done ({previous['epochs_completed']} epochs), see {results_path}")
            return previous
        if previous.get("epochs_completed", 0) > 0 and not checkpoint_path.exists():
            raise FileNotFoundError(
                f"{results_path} records {previous['epochs_completed']} finished epochs, but their checkpoint "
                f"{checkpoint_path} is missing: copy it back (see results/README.md), or move {results_path} away "
                "to start over"
            )
    earlier = train.load_checkpoint(checkpoint_path)["history"] if checkpoint_path.exists() else None
    invocations = list(previous.get("invocations", [])) if previous is not None and earlier is not None else []
    epochs_before = len(earlier["epoch"]) if earlier is not None else 0
    invocation = {k: record[k] for k in ("command", "commit", "date", "device", "torch")}
    invocation["epochs_before"] = epochs_before

    def write(history: Mapping[str, Sequence[float]] | None, stopped: str | None = None) -> dict:
        history = history if history and history["epoch"] else None  # no epoch yet: no history
        done = len(history["epoch"]) if history is not None else 0
        record["epochs_completed"] = done
        record["iterations_completed"] = done * steps
        record["done"] = done >= recipe.epochs
        record["stopped"] = stopped
        record["invocations"] = invocations + [invocation | {"epochs_after": done}]
        record["history"] = _history_record(history, steps) if history is not None else None
        final = record["done"] and record["history"] is not None
        record["final"] = {k: v[-1] for k, v in record["history"].items() if k.endswith("_error")} if final else None
        record["total_seconds"] = float(sum(history["seconds"])) if history is not None else 0.0
        write_json(results_path, record)
        return record

    trained_now: list[int] = []

    def after_epoch(history: Mapping[str, Sequence[float]]) -> bool:
        write(history)
        trained_now.append(len(history["epoch"]))
        errors = {k: f"{v[-1]:.2f}" for k, v in record["history"].items() if k.endswith("_error")}
        log(f"{name}: epoch {len(history['epoch'])}/{recipe.epochs}, error (%) {errors}, "
            f"{history['seconds'][-1]:.1f} s/epoch")  # fmt: skip
        return epochs_now is not None and len(trained_now) >= epochs_now

    write(earlier)
    history = train.fit(
        model, train_loader, evals, recipe=recipe, precision=precision, compile=compile,
        checkpoint=checkpoint_path, deadline=deadline, on_epoch=after_epoch, progress=progress,
    )  # fmt: skip
    stopped = None
    if len(history["epoch"]) < recipe.epochs:
        why = "time limit" if epochs_now is None else f"epochs_now={epochs_now}"
        stopped = f"{why}: stopped after epoch {len(history['epoch'])} of {recipe.epochs}"
        log(f"{name}: stopping ({why}) after epoch {len(history['epoch'])}/{recipe.epochs}; "
            "run again to continue")  # fmt: skip
    return write(history, stopped)


def load_results(folder: str | Path | None, mode: str | None = None) -> list[dict]:
    """Every run record (``*.json``) in ``folder``, sorted by net and seed; [] if there is none.

    ``folder=None`` (no repository here, see ``committed_results_dir``) gives [] too.
    ``mode="full"`` keeps only records made in full mode (the real experiment).
    """
    if folder is None:
        return []
    folder = Path(folder)
    records = [read_json(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
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


