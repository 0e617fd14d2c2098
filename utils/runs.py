"""Named full-scale runs: trained once, outside the notebooks, and read by the book.

A chapter's full-mode training is too long for a notebook cell. Each such training is a
``RunSpec`` here: a name, the model, the dataset and validation split, a ``Recipe`` and a
seed. ``execute`` trains it (``make runs`` does, for every spec of the book, resumably and
within a time limit) and writes ``results/runs/<name>.json``: the per-epoch history, the
final validation and test accuracy (the test set is evaluated once, after the last epoch),
the fingerprint, and the command, commit, device and versions. ``finished`` hands a chapter
that record, and ``trained_model`` the weights.

Every run has a **fingerprint**: a hash of its spec (model, options, dataset, split, recipe,
seed) and of the course's training code (``TRAINING_CODE``). It is stored with the record and
is part of the checkpoint's name. A finished run with the same fingerprint is reused, a partial
one resumes from its checkpoint, and a run with any other fingerprint is never reused: after a
change to ``utils/train.py``, say, ``finished`` returns None and ``make runs`` trains again.

``RESNET_RESULTS`` names another folder for the records and ``RESNET_CHECKPOINTS`` another for
the checkpoints, which otherwise live under the data directory, never in the repository.

The **dry run** (``RESNET_DRY_RUN=1`` in full mode, ``scripts/dry_run.py``) checks every full-mode
line on a CPU: ``make runs --dry-run`` trains ``dry_run_spec(spec)`` (the same run, 2 epochs of 2
batches of 16 images: another recipe, hence another fingerprint, so such a record can never pass
for the real one) into a temporary folder, and ``load_finished`` then reads that spec.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from . import config, data, models, results, train
from .files import read_json, write_json
from .recipes import MNIST_FULL, RESNET18_CIFAR10, Recipe

__all__ = [
    "TRAINING_CODE",
    "RESULTS_VARIABLE",
    "code_fingerprint",
    "results_root",
    "RunSpec",
    "dry_run_spec",
    "DRY_EPOCHS",
    "DRY_BATCHES",
    "DRY_BATCH_SIZE",
    "Capped",
    "execute",
    "finished",
    "trained_model",
    "load_data",
    "load_finished",
    "RunMissingError",
    "CH04_CIFAR10",
    "CH04_MNIST",
    "BOOK_RUNS",
]

# The files of utils/ that decide what a training computes. Plotting and cost code are left
# out on purpose: changing a figure must not throw away hours of GPU training.
TRAINING_CODE = ("data.py", "files.py", "models.py", "recipes.py", "reproduction.py", "runs.py", "train.py")
RESULTS_VARIABLE = config.RESULTS_VARIABLE
results_root = config.results_root  # re-exported: the run records' folder
# The dry run's size: enough to cross an epoch boundary, save, resume and evaluate.
DRY_EPOCHS, DRY_BATCHES, DRY_BATCH_SIZE = 2, 2, 16
DATASETS = ("cifar10", "mnist")
MODEL_BUILDERS = ("resnet18", "resnet34", "resnet50", "resnet_cifar", "plain_cifar")


def code_fingerprint() -> str:
    """A hash of the training code (``TRAINING_CODE``): 16 hex digits.

    It hashes what the code does, not how it is written: the syntax tree without its
    docstrings (comments and layout are not in it), so rewording a docstring or reformatting
    a file does not throw finished runs away, while any change to the code does.
    """
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for name in TRAINING_CODE:
        tree = ast.parse((package / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and _is_docstring(body[0]):
                node.body = body[1:] or [ast.Pass()]
        digest.update(name.encode() + b"\0" + ast.dump(tree).encode())
    return digest.hexdigest()[:16]


def _is_docstring(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) and isinstance(
        statement.value.value, str
    )


@dataclass(frozen=True)
class RunSpec:
    """One named training: ``model`` is a function of ``utils.models`` called with ``model_options``."""

    name: str
    model: str
    recipe: Recipe
    model_options: tuple[tuple[str, object], ...] = ()
    dataset: str = "cifar10"
    val_size: int = 5000  # held out of the training images; the paper's 45k/5k split
    seed: int = 0
    chapter: str = ""  # the chapter that reads the run

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset={self.dataset!r}; expected one of {DATASETS}")
        if self.model not in MODEL_BUILDERS:
            raise ValueError(f"model={self.model!r}; expected one of {MODEL_BUILDERS}")
        if not self.name or "/" in self.name:
            raise ValueError(f"name={self.name!r} must be a non-empty file name (no '/')")

    def build_model(self, num_classes: int, in_channels: int) -> nn.Module:
        options = dict(self.model_options) | {"num_classes": num_classes}
        if self.model.startswith("resnet") and self.model != "resnet_cifar":
            options["in_channels"] = in_channels
        return getattr(models, self.model)(**options)

    def as_dict(self) -> dict:
        values = asdict(self)
        values["recipe"] = self.recipe.as_dict()
        values["model_options"] = dict(self.model_options)
        return values

    def fingerprint(self) -> str:
        """A hash of everything that decides what this run computes, the training code included."""
        identity = {k: v for k, v in self.as_dict().items() if k != "chapter"} | {"code": code_fingerprint()}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


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


def dry_run_spec(spec: RunSpec) -> RunSpec:
    """The dry-run version of a book run: the same spec with a 2-epoch, batch-16 recipe."""
    recipe = spec.recipe.shortened(DRY_EPOCHS).replace(batch_size=DRY_BATCH_SIZE)
    return RunSpec(**(spec.__dict__ | {"recipe": recipe}))


def _load(dataset: str) -> tuple[data.ImageSet, data.ImageSet]:
    if dataset == "mnist":
        return data.load_mnist("train"), data.load_mnist("test")
    return data.load_cifar10("train"), data.load_cifar10("test")


def load_data(spec: RunSpec) -> tuple[data.ImageSet, data.ImageSet, data.ImageSet]:
    """The training, validation and test images of ``spec``: what ``execute`` trains on.

    A chapter that reads a finished run uses these too, so that it normalises and evaluates
    exactly as the run did.
    """
    labelled, test_set = _load(spec.dataset)
    train_set, val_set = data.train_val_split(labelled, spec.val_size, seed=0)
    return train_set, val_set, test_set


class RunMissingError(RuntimeError):
    """A chapter needs a full-scale run that is not finished here (or was made by other code)."""


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
            f"(fingerprint {spec.fingerprint()}); make it first on a GPU with "
            f"`make runs ARGS=\"--only {spec.name}\"` (or `make runs` for all of them)"
        )
    return record, trained_model(spec, record, checkpoint_dir)


def _record_path(spec: RunSpec, results_dir: Path | None) -> Path:
    folder = results_dir if results_dir is not None else results_root()
    if folder is None:
        raise FileNotFoundError(
            f"no results folder for run {spec.name}: this installation of utils has no repository; "
            f"set {RESULTS_VARIABLE}"
        )
    return Path(folder) / "runs" / f"{spec.name}.json"


def _checkpoint_path(spec: RunSpec, checkpoint_dir: Path | None) -> Path:
    folder = checkpoint_dir if checkpoint_dir is not None else config.checkpoint_dir() / "runs"
    return Path(folder) / f"{spec.name}-{spec.fingerprint()}.pt"


def finished(spec: RunSpec, results_dir: str | os.PathLike | None = None) -> dict | None:
    """The record of ``spec`` if it is finished and has this spec's fingerprint, else None."""
    try:
        path = _record_path(spec, Path(results_dir) if results_dir is not None else None)
    except FileNotFoundError:
        return None
    if not path.exists():
        return None
    record = read_json(path)
    return record if record.get("done") and record.get("fingerprint") == spec.fingerprint() else None


def trained_model(spec: RunSpec, record: dict, checkpoint_dir: str | os.PathLike | None = None) -> nn.Module:
    """The weights of a finished run, from its checkpoint, in evaluation mode on the CPU."""
    path = _checkpoint_path(spec, Path(checkpoint_dir) if checkpoint_dir is not None else None)
    if not path.exists():
        raise FileNotFoundError(
            f"the checkpoint of run {spec.name} ({path.name}) is not under {path.parent}: it stays on the "
            f"machine that trained it; run `make runs ARGS=\"--only {spec.name}\"` there or copy it here"
        )
    model = spec.build_model(record["data"]["classes"], record["data"]["channels"])
    return train.load_model(model, path).eval()


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
    argv: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train ``spec`` (or resume it, or reuse it when finished) and return its record.

    ``deadline`` (a ``time.monotonic()`` value) and ``epochs_now`` (at most this many epochs
    in this call) stop between epochs; run again to continue. ``max_batches`` caps every pass
    over the data (dry runs). Full mode refuses the offline digits fallback.
    """
    results_dir = Path(results_dir) if results_dir is not None else None
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    record_path = _record_path(spec, results_dir)
    fingerprint = spec.fingerprint()
    previous = read_json(record_path) if record_path.exists() else None
    if previous is not None and previous.get("fingerprint") != fingerprint:
        log(f"{spec.name}: the committed record has another fingerprint (code or spec changed): training anew")
        previous = None
    if previous is not None and previous.get("done"):
        log(f"{spec.name}: already done, see {record_path}")
        return previous

    train_set, val_set, test_set = load_data(spec)
    if train_set.source.startswith("fallback") and not config.is_quick():
        raise data.DataUnavailableError(f"run {spec.name} needs the real {spec.dataset}, not the offline FALLBACK")
    device = torch.device(device) if device is not None else train.default_device()
    train_loader, evals = data.make_loaders(
        train_set, {"val": val_set, "test": test_set}, spec.recipe.batch_size,
        augment=spec.recipe.augment, device=device, seed=spec.seed,
        eval_batch_size=512 if max_batches is None else spec.recipe.batch_size,
    )
    test_loader = evals.pop("test")  # evaluated once, after the last epoch
    if max_batches is not None:
        train_loader, test_loader = Capped(train_loader, max_batches), Capped(test_loader, max_batches)
        evals = {name: Capped(loader, max_batches) for name, loader in evals.items()}

    train.set_seed(spec.seed)
    model = spec.build_model(len(train_set.classes), train_set.images.shape[-1]).to(device)
    record = results.run_metadata(argv) | {
        "run": spec.as_dict(),
        "fingerprint": fingerprint,
        "code": code_fingerprint(),
        "parameters": models.count_parameters(model),
        "data": {
            "dataset": "fallback digits" if train_set.source.startswith("fallback") else spec.dataset,
            "train_images": len(train_set), "val_images": len(val_set), "test_images": len(test_set),
            "classes": len(train_set.classes), "channels": int(train_set.images.shape[-1]),
            "max_batches": max_batches,
        },
        "checkpoint": str(_checkpoint_path(spec, checkpoint_dir)),
    }  # fmt: skip

    def write(history: dict, final: dict | None = None) -> dict:
        record.update(epochs_completed=len(history["epoch"]), epochs_planned=spec.recipe.epochs,
                      done=final is not None, history=history, final=final)  # fmt: skip
        write_json(record_path, record)
        return record

    epochs_before: list[int] = []

    def after_epoch(history: dict) -> bool:
        epochs_before.append(len(history["epoch"]))
        write(history)
        log(f"{spec.name}: epoch {len(history['epoch'])}/{spec.recipe.epochs}, "
            f"val acc {history['val_acc'][-1]:.4f}")  # fmt: skip
        return epochs_now is not None and len(epochs_before) >= epochs_now

    history = train.fit(
        model, train_loader, evals, recipe=spec.recipe, precision=precision,
        channels_last=device.type == "cuda", checkpoint=record["checkpoint"], deadline=deadline,
        on_epoch=after_epoch, progress=False,
    )  # fmt: skip
    if len(history["epoch"]) < spec.recipe.epochs:
        log(f"{spec.name}: stopped after epoch {len(history['epoch'])}/{spec.recipe.epochs}; run again to continue")
        return write(history)
    test_loss, test_acc = train.evaluate(model, test_loader, precision=precision or "fp32")
    final = {"val_acc": history["val_acc"][-1], "test_acc": test_acc, "test_loss": test_loss}
    log(f"{spec.name}: done, validation accuracy {final['val_acc']:.4f}, test accuracy {test_acc:.4f}")
    return write(history, final)


# ----------------------------------------------------------------------------- the book's runs

# Chapter 4: ResNet-18 (CIFAR stem, full width) by the chapter's recipe, and on MNIST.
CH04_CIFAR10 = RunSpec(
    "ch04-resnet18-cifar10", "resnet18", RESNET18_CIFAR10, (("stem", "cifar"),), chapter="04_training"
)
CH04_MNIST = RunSpec(
    "ch04-resnet18-mnist", "resnet18", MNIST_FULL, (("stem", "cifar"),), dataset="mnist", chapter="04_training"
)
BOOK_RUNS: tuple[RunSpec, ...] = (CH04_CIFAR10, CH04_MNIST)
