"""Every training the book reads, as one kind of object: a ``RunSpec``, trained by ``execute``.

A full-scale training is too long for a notebook cell. Each one is a ``RunSpec``: a name, a
model of ``utils.models`` with its options, a ``DataPlan`` (which images), a ``Recipe`` and a
seed. ``execute`` trains it (``make runs`` does, for every spec of ``QUEUE``, resumably and
within a time limit) and writes one record, ``results/runs/<name>.json``: the per-epoch
training and validation error, the test error measured once after the last epoch, the
fingerprint, and the command, commit, device, data and library versions. ``finished`` hands a
chapter that record, ``trained_model`` the weights (committed ones for the small nets a page
loads, ``keep_weights=True``; else the checkpoint).

Two tiers of the same experiments, labelled in every record (``tier``):

- ``"paper"``: the paper's schedule ([v1] Sec. 4.2: 64k iterations, 182 epochs) and chapter 4's
  own recipes; GPU work;
- ``"cpu"``: all the data, the schedule shortened (``Recipe.shortened``) to what a 2-core CPU
  trains in the background of a working session (30 epochs for the paper's nets). A page shows
  the paper tier where it exists and says which tier it shows.

**The fingerprint** says which computation a record is the result of: the spec's model, model
options, data plan, recipe and seed, and ``TRAINING_VERSION``, the version of what the training
code computes. It is not a hash of source files, so a refactor, a new recipe, a new spec or a
new plot keeps every finished run. ``tests/test_training_version.py`` holds the other half:
``behaviour()`` trains two tiny nets for a few steps on fixed images, through the same loaders,
initialisation, optimiser and schedule as every run, and compares the numbers with the reference
committed for this version (``results/training-behaviour.json``). Change what training computes
(augmentation, initialisation, the optimiser...) and that test fails until ``TRAINING_VERSION``
is raised and the reference rewritten (``python scripts/runs.py --write-behaviour``): every run
is then trained anew. Recipe and data-plan fields that equal their defaults are left out of the
fingerprint, so adding a field keeps finished runs; the reference pins those defaults too.

A finished run with the same fingerprint is reused, a partial one resumes from its checkpoint
(written atomically after every epoch, every random-number state included, so a resumed run
equals an uninterrupted one), and a record with another fingerprint is never reused.
``RESNET_RESULTS`` names another folder for the records and ``RESNET_CHECKPOINTS`` another for
the checkpoints, which otherwise live under the data directory, never in the repository.

The **dry run** (``RESNET_DRY_RUN=1`` in full mode, ``scripts/dry_run.py``): ``make runs
--dry-run`` trains ``dry_run_spec(spec)`` (the same run, 2 epochs of 2 batches of 16 images:
another recipe, hence another fingerprint, so such a record can never pass for the real one)
into a temporary folder, and ``load_finished`` then reads that spec.

References: He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition" (2015), [v1].
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from . import config, data, models, results, train
from .files import atomic_write, read_json, write_json
from .recipes import MNIST_FULL, PAPER_CIFAR10, RESNET18_CIFAR10, Recipe, paper_cifar10

__all__ = [
    "TRAINING_VERSION",
    "RESULTS_VARIABLE",
    "results_root",
    "DataPlan",
    "RunSpec",
    "TIERS",
    "CPU_EPOCHS",
    "PAPER_NETS",
    "PAPER_SEEDS",
    "parse_net",
    "paper_run",
    "dry_run_spec",
    "DRY_EPOCHS",
    "DRY_BATCHES",
    "DRY_BATCH_SIZE",
    "Capped",
    "load_data",
    "make_loaders",
    "execute",
    "finished",
    "first_finished",
    "trained_model",
    "load_finished",
    "RunMissingError",
    "ChecksumError",
    "behaviour",
    "CH04_CIFAR10",
    "CH04_MNIST",
    "CH04_MNIST_CPU",
    "CH04_CIFAR10_CPU",
    "QUEUE",
    "by_name",
]

# Raise this when what training computes changes (tests/test_training_version.py says when):
# every run is then trained anew. Refactors, new recipes, specs and plots leave it alone.
TRAINING_VERSION = 1
RESULTS_VARIABLE = config.RESULTS_VARIABLE
results_root = config.results_root  # re-exported: the run records' folder
DATASETS = ("cifar10", "mnist")
MODEL_BUILDERS = ("resnet18", "resnet34", "resnet50", "resnet_cifar", "plain_cifar")
TIERS = ("paper", "cpu", "dry")
# The CPU tier of the paper's nets: 30 of the 182 epochs, the milestones scaled with them.
CPU_EPOCHS = 30
# The dry run's size: enough to cross an epoch boundary, save, resume and evaluate.
DRY_EPOCHS, DRY_BATCHES, DRY_BATCH_SIZE = 2, 2, 16

# The nets of [v1] Fig. 6 and Table 6 (ResNet-1202 left out: 19.4M parameters, and the paper
# itself reports that it overfits), and the seeds we train each with.
PAPER_NETS = (
    "plain20", "plain32", "plain44", "plain56",
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
)  # fmt: skip
PAPER_SEEDS = (0, 1)
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


def _without_defaults(value) -> dict:
    """A dataclass's fields as plain values, leaving out those equal to the field's default."""
    plain = value.as_dict()
    return {f.name: plain[f.name] for f in fields(value) if getattr(value, f.name) != f.default}


@dataclass(frozen=True)
class DataPlan:
    """Which images a run sees: the defaults are CIFAR-10's 45k/5k split and its test set.

    ``val_size`` (a number of images or a fraction) is held out of the training images, with
    seed 0 whatever the run's seed, so every run sees the same split ([v1] Sec. 4.2). A number
    in a ``*_per_class`` field takes a class-balanced subset of that split (a smoke test).
    """

    dataset: str = "cifar10"
    val_size: int | float = 5000
    train_per_class: int | None = None
    val_per_class: int | None = None
    test_per_class: int | None = None

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset={self.dataset!r}; expected one of {DATASETS}")
        for name in ("train_per_class", "val_per_class", "test_per_class"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name}={value!r}; expected None (all images) or a positive integer")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunSpec:
    """One named training: ``model`` is a function of ``utils.models`` called with ``model_options``.

    ``tier`` and ``chapter`` label the run and ``keep_weights`` asks ``execute`` to write its
    final weights into ``results/weights/`` (small nets a page loads); none of the three
    changes what it computes, so none is in the fingerprint.
    """

    name: str
    model: str
    recipe: Recipe
    model_options: tuple[tuple[str, object], ...] = ()
    data: DataPlan = field(default_factory=DataPlan)
    seed: int = 0
    tier: str = "paper"
    chapter: str = ""  # the chapter that reads the run
    keep_weights: bool = False

    def __post_init__(self):
        if self.model not in MODEL_BUILDERS:
            raise ValueError(f"model={self.model!r}; expected one of {MODEL_BUILDERS}")
        if not self.name or not re.fullmatch(r"[A-Za-z0-9._-]+", self.name):
            raise ValueError(f"name={self.name!r} must be a non-empty file name (letters, digits, . _ -)")
        if self.tier not in TIERS:
            raise ValueError(f"tier={self.tier!r}; expected one of {TIERS}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r}; expected a non-negative integer")

    def build_model(self, num_classes: int, in_channels: int) -> nn.Module:
        options = dict(self.model_options) | {"num_classes": num_classes}
        if self.model.startswith("resnet") and self.model != "resnet_cifar":
            options["in_channels"] = in_channels
        return getattr(models, self.model)(**options)

    def as_dict(self) -> dict:
        values = asdict(self)
        values["recipe"] = self.recipe.as_dict()
        values["data"] = self.data.as_dict()
        values["model_options"] = dict(self.model_options)
        return values

    def identity(self) -> dict:
        """What decides the numbers this run computes: hashed into ``fingerprint``."""
        return {
            "model": self.model,
            "model_options": dict(self.model_options),
            "data": _without_defaults(self.data),
            "recipe": _without_defaults(self.recipe),
            "seed": self.seed,
            "training_version": TRAINING_VERSION,
        }

    def fingerprint(self) -> str:
        """16 hex digits of the sha256 of ``identity()``."""
        text = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def paper_run(net: str, seed: int = 0, tier: str = "paper", **labels) -> RunSpec:
    """A net of [v1] Sec. 4.2 (``"resnet56"``) on the 45k/5k split, by the paper's recipe.

    Option A shortcuts (zero-padding identities) are the paper's choice for CIFAR-10: ResNets
    and plain nets then have exactly the same weights. Nets of 110 layers warm up first
    (``recipes.paper_cifar10``). ``tier="cpu"`` shortens the schedule to ``CPU_EPOCHS``.
    """
    residual, depth = parse_net(net)
    recipe = PAPER_CIFAR10 if tier == "paper" else PAPER_CIFAR10.shortened(CPU_EPOCHS)
    options = (("depth", depth), ("shortcut", "A")) if residual else (("depth", depth),)
    suffix = f"-cpu{CPU_EPOCHS}" if tier == "cpu" else ""
    return RunSpec(
        f"cifar10-{net}-seed{seed}{suffix}", "resnet_cifar" if residual else "plain_cifar",
        paper_cifar10(depth, recipe), options, seed=seed, tier=tier, **labels,
    )  # fmt: skip


def dry_run_spec(spec: RunSpec) -> RunSpec:
    """The dry-run version of a run: the same spec with a 2-epoch, batch-16 recipe."""
    recipe = spec.recipe.shortened(DRY_EPOCHS).replace(batch_size=DRY_BATCH_SIZE)
    return RunSpec(**(spec.__dict__ | {"recipe": recipe, "tier": "dry", "keep_weights": False}))


class Capped:
    """At most ``batches`` batches of ``loader`` per pass: a dry run's stand-in for the full loader."""

    def __init__(self, loader, batches: int):
        if not isinstance(batches, int) or batches <= 0:
            raise ValueError(f"batches={batches!r} must be a positive integer")
        self.loader, self.batches = loader, batches

    def __len__(self) -> int:
        return min(len(self.loader), self.batches)

    def __iter__(self) -> Iterator:
        return itertools.islice(iter(self.loader), self.batches)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)


# ----------------------------------------------------------------------------- data


def _load(dataset: str) -> tuple[data.ImageSet, data.ImageSet]:
    if dataset == "mnist":
        return data.load_mnist("train"), data.load_mnist("test")
    return data.load_cifar10("train"), data.load_cifar10("test")


def load_data(spec_or_plan: RunSpec | DataPlan) -> dict[str, data.ImageSet]:
    """``{"train", "val", "test"}``: the images ``execute`` trains, validates and tests on.

    A chapter that reads a finished run uses these too, so that it normalises and evaluates
    exactly as the run did.
    """
    plan = spec_or_plan.data if isinstance(spec_or_plan, RunSpec) else spec_or_plan
    labelled, test_set = _load(plan.dataset)
    train_set, val_set = data.train_val_split(labelled, plan.val_size, seed=0)
    splits = {"train": train_set, "val": val_set, "test": test_set}
    for name in splits:
        per_class = getattr(plan, f"{name}_per_class")
        if per_class is not None:
            splits[name] = data.class_balanced_subset(splits[name], per_class, seed=0)
    return splits


def make_loaders(spec: RunSpec, splits: dict[str, data.ImageSet], *, device="cpu", eval_batch_size: int = 512):
    """The training loader (shuffled by the seed, augmented as the recipe says), val and test loaders.

    All normalise with the training split's channel statistics.
    """
    train_loader, evals = data.make_loaders(
        splits["train"], {"val": splits["val"], "test": splits["test"]}, spec.recipe.batch_size,
        augment=spec.recipe.augment, device=device, seed=spec.seed, eval_batch_size=eval_batch_size,
    )  # fmt: skip
    return train_loader, evals["val"], evals["test"]


# ----------------------------------------------------------------------------- records


class RunMissingError(RuntimeError):
    """A chapter needs a full-scale run that is not finished here (or was made by other code)."""


class ChecksumError(ValueError):
    """A committed weights file whose sha256 is not the one its run record names."""


def _results_folder(results_dir) -> Path:
    folder = Path(results_dir) if results_dir is not None else results_root()
    if folder is None:
        raise FileNotFoundError(
            f"no results folder: this installation of utils has no repository; set {RESULTS_VARIABLE}"
        )
    return folder


def _record_path(spec: RunSpec, results_dir) -> Path:
    return _results_folder(results_dir) / "runs" / f"{spec.name}.json"


def _weights_path(spec: RunSpec, results_dir) -> Path:
    return _results_folder(results_dir) / "weights" / f"{spec.name}.pt"


def _checkpoint_path(spec: RunSpec, checkpoint_dir) -> Path:
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else config.checkpoint_dir() / "runs"
    return folder / f"{spec.name}-{spec.fingerprint()}.pt"


def finished(spec: RunSpec, results_dir: str | os.PathLike | None = None) -> dict | None:
    """The record of ``spec`` if it is finished and has this spec's fingerprint, else None."""
    try:
        path = _record_path(spec, results_dir)
    except FileNotFoundError:
        return None
    if not path.exists():
        return None
    record = read_json(path)
    return record if record.get("done") and record.get("fingerprint") == spec.fingerprint() else None


def first_finished(specs: Sequence[RunSpec], results_dir=None) -> tuple[RunSpec, dict] | tuple[None, None]:
    """The first of ``specs`` that is finished, with its record: the paper tier before the CPU tier."""
    for spec in specs:
        record = finished(spec, results_dir)
        if record is not None:
            return spec, record
    return None, None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def trained_model(spec: RunSpec, record: dict, checkpoint_dir=None, results_dir=None) -> nn.Module:
    """The weights of a finished run, in evaluation mode on the CPU.

    Committed weights (``record["weights"]``) are loaded with ``weights_only=True`` after their
    sha256 is checked against the record; otherwise the run's checkpoint is read.
    """
    model = spec.build_model(record["data"]["classes"], record["data"]["channels"])
    committed = record.get("weights")
    if committed is not None:
        path = _weights_path(spec, results_dir)
        if not path.exists():
            raise FileNotFoundError(f"the committed weights of run {spec.name} ({path.name}) are missing")
        actual = _sha256(path)
        if actual != committed["sha256"]:
            raise ChecksumError(
                f"{path.name}: sha256 {actual} does not match {committed['sha256']}, the one its run "
                "record names; the file is damaged or not the one trained (get it again from the "
                f"repository, or retrain it with `make runs ARGS=\"--only {spec.name}\"`)"
            )
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    path = _checkpoint_path(spec, checkpoint_dir)
    if not path.exists():
        raise FileNotFoundError(
            f"the checkpoint of run {spec.name} ({path.name}) is not under {path.parent}: it stays on the "
            f"machine that trained it; run `make runs ARGS=\"--only {spec.name}\"` there or copy it here"
        )
    return train.load_model(model, path).eval()


def load_finished(spec: RunSpec, results_dir=None, checkpoint_dir=None) -> tuple[dict, nn.Module]:
    """The record and trained model of a finished run, or a ``RunMissingError`` naming the command.

    Full-mode chapters call this instead of training: ``make runs`` trains, the book reads.
    In the dry run (``config.is_dry_run()``) it reads the capped run ``dry_run_spec(spec)``.
    """
    if config.is_dry_run():
        spec = dry_run_spec(spec)
    record = finished(spec, results_dir)
    if record is None:
        raise RunMissingError(
            f"full mode reads the finished run {spec.name!r}, which is not here for this code "
            f"(fingerprint {spec.fingerprint()}); make it first with "
            f"`make runs ARGS=\"--only {spec.name}\"` (or `make runs` for all of them)"
        )
    return record, trained_model(spec, record, checkpoint_dir, results_dir)


def _history_record(history: dict, steps_per_epoch: int) -> dict:
    """``fit``'s history with accuracies as error rates in % (as the paper plots them)."""
    record = {"epoch": list(history["epoch"]),
              "iteration": [int(e) * steps_per_epoch for e in history["epoch"]],
              "lr": list(history["lr"])}  # fmt: skip
    for split in ("train", "val"):
        record[f"{split}_loss"] = list(history[f"{split}_loss"])
        record[f"{split}_error"] = [100.0 * (1.0 - a) for a in history[f"{split}_acc"]]
    record["seconds"] = list(history["seconds"])
    return record


# ----------------------------------------------------------------------------- training


def execute(
    spec: RunSpec,
    *,
    results_dir: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    deadline: float | None = None,
    device: torch.device | str | None = None,
    precision: str | None = None,
    max_batches: int | None = None,
    epochs_now: int | None = None,
    splits: dict[str, data.ImageSet] | None = None,
    argv: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train ``spec`` (or resume it, or reuse it when finished) and return its record.

    ``deadline`` (a ``time.monotonic()`` value) and ``epochs_now`` (at most this many epochs
    in this call) stop between epochs; run again to continue. ``max_batches`` caps every pass
    over the data (dry runs). ``precision`` defaults to fp32 for the paper's nets (as the paper
    trained) and to ``train.default_precision`` for the others. Only quick mode accepts the
    offline digits fallback.
    """
    record_path = _record_path(spec, results_dir)
    checkpoint = _checkpoint_path(spec, checkpoint_dir)
    fingerprint = spec.fingerprint()
    previous = read_json(record_path) if record_path.exists() else None
    if previous is not None and previous.get("fingerprint") != fingerprint:
        log(f"{spec.name}: the record has another fingerprint (spec or training version changed): training anew")
        previous = None
    if previous is not None and previous.get("done"):
        log(f"{spec.name}: already done, see {record_path.name}")
        return previous

    splits = load_data(spec) if splits is None else splits
    if splits["train"].source.startswith("fallback") and not config.is_quick():
        raise data.DataUnavailableError(
            f"run {spec.name} needs the real {spec.data.dataset}, not the offline digits FALLBACK: put a copy "
            f"in {config.data_dir()} or set {config.DATA_VARIABLE} to a folder that has one"
        )
    device = torch.device(device) if device is not None else train.default_device()
    paper_net = spec.model in ("resnet_cifar", "plain_cifar")
    precision = precision or ("fp32" if paper_net else train.default_precision(device))
    train_loader, val_loader, test_loader = make_loaders(
        spec, splits, device=device, eval_batch_size=512 if max_batches is None else spec.recipe.batch_size
    )
    if max_batches is not None:
        train_loader, val_loader, test_loader = (Capped(x, max_batches) for x in (train_loader, val_loader, test_loader))
    steps = len(train_loader)

    train.set_seed(spec.seed)  # the initial weights; a resumed run replaces them with the checkpoint's
    model = spec.build_model(len(splits["train"].classes), splits["train"].images.shape[-1]).to(device)
    mean, std = data.channel_stats(splits["train"])
    resuming = previous is not None and checkpoint.exists()
    invocations = list(previous.get("invocations", [])) if resuming else []
    record = results.run_metadata(argv) | {
        "run": spec.as_dict(),
        "tier": spec.tier,
        "fingerprint": fingerprint,
        "training_version": TRAINING_VERSION,
        "parameters": models.count_parameters(model),
        "weight_decay_on_norm_and_bias": False,  # utils.train.make_optimizer exempts them
        "precision": precision,
        "data": {
            "dataset": "fallback digits" if splits["train"].source.startswith("fallback") else
                       {"cifar10": "CIFAR-10", "mnist": "MNIST"}[spec.data.dataset],
            "source": splits["train"].origin,
            **{f"{name}_images": len(images) for name, images in splits.items()},
            "classes": len(splits["train"].classes), "channels": int(splits["train"].images.shape[-1]),
            "normalisation": {"mean": list(mean), "std": list(std)},
            "max_batches": max_batches,
        },
        "steps_per_epoch": steps,
        "epochs_planned": spec.recipe.epochs,
        "checkpoint": checkpoint.name,  # under the trainer's checkpoint folder, never committed
    }  # fmt: skip
    invocation = {k: record[k] for k in ("command", "commit", "date", "device", "torch")}
    invocation["epochs_before"] = previous.get("epochs_completed", 0) if resuming else 0

    def write(history: dict, final: dict | None = None) -> dict:
        done = len(history["epoch"])
        record.update(epochs_completed=done, done=final is not None,
                      history=_history_record(history, steps), final=final,
                      total_seconds=float(sum(history["seconds"])),
                      invocations=invocations + [invocation | {"epochs_after": done}])  # fmt: skip
        write_json(record_path, record)
        return record

    trained_now: list[int] = []

    def after_epoch(history: dict) -> bool:
        write(history)
        trained_now.append(len(history["epoch"]))
        log(f"{spec.name}: epoch {len(history['epoch'])}/{spec.recipe.epochs}, "
            f"train error {100 * (1 - history['train_acc'][-1]):.2f} %, "
            f"val error {100 * (1 - history['val_acc'][-1]):.2f} %, {history['seconds'][-1]:.0f} s")  # fmt: skip
        return epochs_now is not None and len(trained_now) >= epochs_now

    history = train.fit(
        model, train_loader, {"val": val_loader}, recipe=spec.recipe, precision=precision,
        channels_last=True, checkpoint=checkpoint, deadline=deadline, on_epoch=after_epoch,
        progress=False,
    )  # fmt: skip
    if len(history["epoch"]) < spec.recipe.epochs:
        log(f"{spec.name}: stopped after epoch {len(history['epoch'])}/{spec.recipe.epochs}; run again to continue")
        return write(history)
    test_loss, test_acc = train.evaluate(model, test_loader, precision=precision)
    final = {"train_error": 100.0 * (1.0 - history["train_acc"][-1]),
             "val_error": 100.0 * (1.0 - history["val_acc"][-1]),
             "test_error": 100.0 * (1.0 - test_acc), "test_loss": test_loss}  # fmt: skip
    if spec.keep_weights:
        path = _weights_path(spec, results_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            torch.save(train.unwrap(model).state_dict(), f)
        record["weights"] = {"file": f"weights/{path.name}", "sha256": _sha256(path)}
    log(f"{spec.name}: done, validation error {final['val_error']:.2f} %, test error {final['test_error']:.2f} %")
    return write(history, final)


# ----------------------------------------------------------------------------- behaviour


def behaviour() -> dict:
    """What training computes, in numbers: two tiny nets trained a few steps on fixed images.

    The images and labels come from a seeded generator, so no data set is needed. Each net is
    built, loaded, initialised and trained exactly as ``execute`` does it (``make_loaders``,
    ``train.set_seed``, ``train.fit`` with its optimiser and schedule), with recipes that use
    every option the book's recipes use: augmentation, warm-up, milestones and cosine decay,
    Nesterov momentum, label smoothing, weight decay. Returns the first augmented batch's pixel
    sum, the initial and final sum of squares of every parameter tensor, and the history.
    ``tests/test_training_version.py`` compares the result with the committed reference.
    """
    generator = torch.Generator().manual_seed(0)
    cases = {
        "paper_cifar_net": (
            RunSpec("behaviour-a", "resnet_cifar", PAPER_CIFAR10.shortened(3).replace(batch_size=16,
                    weight_decay=0.01), (("depth", 8), ("shortcut", "A"), ("widths", (4, 8, 16))), seed=1),
            3,
        ),
        "resnet18_recipe": (
            RunSpec("behaviour-b", "resnet18", RESNET18_CIFAR10.shortened(2).replace(batch_size=16, augment=False),
                    (("stem", "cifar"), ("widths", (4, 8, 16, 32))), seed=2),
            1,
        ),
    }  # fmt: skip
    out = {}
    for name, (spec, channels) in cases.items():
        images = torch.randint(0, 256, (64, 32, 32, channels), generator=generator, dtype=torch.uint8).numpy()
        labels = torch.randint(0, 10, (64,), generator=generator).numpy()
        imageset = data.ImageSet(images, labels, tuple(str(i) for i in range(10)), "generated")
        splits = {"train": imageset.subset(range(48)), "val": imageset.subset(range(48, 64))}
        splits["test"] = splits["val"]
        train_loader, val_loader, _ = make_loaders(spec, splits, eval_batch_size=16)
        train_loader.set_epoch(0)
        first_batch = next(iter(train_loader))[0]
        train.set_seed(spec.seed)
        model = spec.build_model(10, channels)
        before = [float(p.detach().double().pow(2).sum()) for p in model.parameters()]
        history = train.fit(model, train_loader, {"val": val_loader}, recipe=spec.recipe, precision="fp32",
                            progress=False)  # fmt: skip
        out[name] = {
            "first_batch_sum": float(first_batch.double().sum()),
            "first_batch_abs_sum": float(first_batch.double().abs().sum()),
            "weights_before": before,
            "weights_after": [float(p.detach().double().pow(2).sum()) for p in model.parameters()],
            "buffers_after": [float(b.double().sum()) for b in model.buffers() if b.is_floating_point()],
            "history": {k: [float(v) for v in vs] for k, vs in history.items() if k != "seconds"},
        }
    out["recipe_defaults"] = {f.name: _plain(f.default) for f in fields(Recipe)}
    out["data_plan_defaults"] = {f.name: _plain(f.default) for f in fields(DataPlan)}
    return out


def _plain(value):
    if value is MISSING:
        return "required"
    return list(value) if isinstance(value, tuple) else value


# ----------------------------------------------------------------------------- the book's runs

# Chapter 4: ResNet-18 (CIFAR stem, full width) by the chapter's recipe, on CIFAR-10 and on MNIST,
# and their CPU tier: MNIST for 2 of its 5 epochs (the seed posts' task), CIFAR-10 for 15 of 40.
CH04_CIFAR10 = RunSpec(
    "ch04-resnet18-cifar10", "resnet18", RESNET18_CIFAR10, (("stem", "cifar"),), chapter="04_training"
)
CH04_MNIST = RunSpec(
    "ch04-resnet18-mnist", "resnet18", MNIST_FULL, (("stem", "cifar"),), DataPlan("mnist"),
    chapter="04_training",
)  # fmt: skip
CH04_MNIST_CPU = RunSpec(
    "ch04-resnet18-mnist-cpu2", "resnet18", MNIST_FULL.shortened(2), (("stem", "cifar"),), DataPlan("mnist"),
    tier="cpu", chapter="04_training",
)  # fmt: skip
CH04_CIFAR10_CPU = RunSpec(
    "ch04-resnet18-cifar10-cpu15", "resnet18", RESNET18_CIFAR10.shortened(15), (("stem", "cifar"),),
    tier="cpu", chapter="04_training",
)  # fmt: skip

_DEGRADATION = ("resnet20", "plain20", "resnet56", "plain56")  # chapter 1, cheapest first
_REST = tuple(net for net in PAPER_NETS if net not in _DEGRADATION)


def _cpu(net: str, seed: int) -> RunSpec:
    # Chapter 7 analyses the depth-20 pair: their weights are committed (about 1 MB each).
    return paper_run(net, seed, "cpu", chapter="01_degradation", keep_weights=net.endswith("20") and seed == 0)


# The order of ``make runs``: what a CPU can train first (the degradation nets, then MNIST, then
# the rest of Table 6 and chapter 4's CIFAR-10 net), then the paper tier, GPU work.
QUEUE: tuple[RunSpec, ...] = (
    *(_cpu(net, 0) for net in _DEGRADATION[:2]),
    CH04_MNIST_CPU,
    *(_cpu(net, 0) for net in _DEGRADATION[2:]),
    *(_cpu(net, 1) for net in _DEGRADATION),
    *(_cpu(net, seed) for seed in PAPER_SEEDS for net in _REST),
    CH04_CIFAR10_CPU,
    CH04_CIFAR10,
    CH04_MNIST,
    *(paper_run(net, seed, chapter="06_reproduction") for seed in PAPER_SEEDS for net in PAPER_NETS),
)


def by_name(name: str) -> RunSpec:
    """The spec of ``QUEUE`` called ``name``; a ``KeyError`` lists the names."""
    for spec in QUEUE:
        if spec.name == name:
            return spec
    raise KeyError(f"no run {name!r} in the queue; expected one of: {', '.join(s.name for s in QUEUE)}")
