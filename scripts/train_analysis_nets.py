#!/usr/bin/env python3
"""Train the two nets chapter 7 analyses and commit their weights: ResNet-20 and plain-20.

    python scripts/train_analysis_nets.py --nets resnet20 --threads 1 &  # one net a core
    python scripts/train_analysis_nets.py --nets plain20 --threads 1
    python scripts/train_analysis_nets.py --per-class 10 --out /tmp/weights  # a smoke test

The nets are the paper's CIFAR-10 nets of depth 20 ([v1] Sec. 4.2), with option A shortcuts
(``utils.reproduction.build_net``), so the two have exactly the same weights and differ only
in the shortcuts. Each is trained by ``utils.train.fit`` with ``recipes.ANALYSIS_CIFAR10``
(two epochs unless ``--epochs`` says otherwise: a short warm-up, cosine decay, batch 128 at the
paper's rate 0.1) on all 50,000 CIFAR-10 training images (pad-and-crop, flip), or on
``--iterations`` random batches of them an epoch (a shorter run), and evaluated on the 10,000
test images. The committed nets took about 25 minutes each, side by side on two CPU cores shared
with other work.

For each net the script writes, into ``--out`` (default ``results/weights``):

- ``<net>.pt``: the bare ``state_dict`` (``torch.save(model.state_dict())``), about 1 MB;
- ``<net>.json``: its provenance, from ``utils.results.run_metadata`` (command, commit, device,
  library versions), the data by name, the recipe, the epochs, the training time, the history,
  the final train and test accuracy (also on the 1,000 test images of ``accuracy_slice``, which
  ``tests/test_analysis_weights.py`` re-measures), the training set's channel statistics the
  net's inputs are normalised with, and the ``.pt`` file's sha256.

Both files are written atomically (a temporary file, then a rename). Training checkpoints after
every epoch into ``--checkpoint-dir`` and resumes from there when run again with the same
arguments. ``utils.weights.load_committed(name)`` loads the result and checks its sha256.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from utils import config, data, recipes, reproduction, results, runs, train
from utils import weights as weights_module
from utils.files import atomic_write, repo_root, write_json

NETS = ("resnet20", "plain20")
TRAIN_EVAL_PER_CLASS = 200
SLICE_PER_CLASS = 100  # the test images a class the test suite re-measures accuracy on
DATA_NAME = "CIFAR-10 (local JPEG re-encoded copy)"


def accuracy_slice(test: data.ImageSet) -> data.ImageSet:
    """The 1,000 test images (100 a class) whose accuracy the JSON records for the tests."""
    return data.class_balanced_subset(test, SLICE_PER_CLASS, seed=0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=recipes.ANALYSIS_CIFAR10.epochs)
    parser.add_argument("--nets", nargs="+", default=list(NETS), choices=NETS)
    parser.add_argument("--out", type=Path, default=None, help="default: results/weights")
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="per-epoch checkpoints to resume from (default: under the data directory)",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="batches an epoch, drawn from the whole shuffled training set (default: all)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--per-class",
        type=int,
        default=None,
        help="a class-balanced subset of the training set, for a smoke test (default: all)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    return parser.parse_args(argv)


def train_net(net: str, args: argparse.Namespace, recipe: recipes.Recipe) -> dict:
    """Train ``net``, write its weights and provenance into ``args.out``; return the record."""
    train_all, test = data.load_cifar10("train"), data.load_cifar10("test")
    if train_all.source.startswith("fallback"):
        raise data.DataUnavailableError(
            "the committed analysis nets need the real CIFAR-10, not the digits fallback: "
            f"put a copy in {config.data_dir()} or set {config.DATA_VARIABLE}"
        )
    if args.per_class is not None:
        train_all = data.class_balanced_subset(train_all, args.per_class, seed=0)
    device = train.default_device()
    train.set_seed(args.seed)
    model = reproduction.build_net(net, len(train_all.classes)).to(device)
    # The training accuracy is measured in evaluation mode on unaugmented training images
    # (fit's running accuracy is taken on augmented batches while the weights still move);
    # 200 a class keep that cheap.
    per_class = min(TRAIN_EVAL_PER_CLASS, len(train_all) // len(train_all.classes))
    train_eval = data.class_balanced_subset(train_all, per_class, seed=0)
    train_loader, eval_loaders = data.make_loaders(
        train_all,
        {"test": test, "test_slice": accuracy_slice(test), "train_eval": train_eval},
        recipe.batch_size,
        augment=recipe.augment,
        device=device,
        seed=args.seed,
    )
    if args.iterations is not None:
        if not 1 <= args.iterations <= len(train_loader):
            raise ValueError(f"--iterations {args.iterations}: expected 1 to the {len(train_loader)} batches an epoch")
        # The loader reshuffles every epoch, so its first batches are random ones from all of it.
        train_loader = runs.Capped(train_loader, args.iterations)
    iterations = len(train_loader)
    checkpoint = args.checkpoint_dir / f"{net}-{recipe.epochs}x{iterations}it-seed{args.seed}.pt"
    started = time.perf_counter()
    history = train.fit(
        model,
        train_loader,
        {"test": eval_loaders["test"]},
        recipe=recipe,
        channels_last=device.type == "cpu",  # faster convolutions on a CPU (oneDNN)
        checkpoint=checkpoint,
    )
    seconds = time.perf_counter() - started
    model.eval()
    mean, std = data.channel_stats(train_all)
    train_loss, train_acc = train.evaluate(model, eval_loaders["train_eval"])
    _, slice_acc = train.evaluate(model, eval_loaders["test_slice"])

    weights = args.out / f"{net}.pt"
    with atomic_write(weights) as f:
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, f)
    record = {
        "name": net,
        "architecture": f"reproduction.build_net({net!r}): [v1] Sec. 4.2, option A shortcuts",
        "data": DATA_NAME,
        "num_classes": len(train_all.classes),
        "train_images": len(train_all),
        "train_acc_measured_on": f"{len(train_eval)} training images, unaugmented",
        "test_images": len(test),
        "normalisation": {"mean": list(mean), "std": list(std)},
        "seed": args.seed,
        "recipe": recipe.as_dict(),
        "epochs": len(history["epoch"]),
        "iterations_per_epoch": iterations,
        "images_seen": len(history["epoch"]) * iterations * recipe.batch_size,
        "training_seconds": round(seconds, 1),
        "history": history,
        "final": {
            "train_loss": train_loss,
            "train_acc": train_acc,
            "test_loss": history["test_loss"][-1],
            "test_acc": history["test_acc"][-1],
            "test_slice_acc": slice_acc,
        },
        "test_slice": f"data.class_balanced_subset(test, {SLICE_PER_CLASS}, seed=0)",
        "sha256": weights_module.sha256_of(weights),
        "bytes": weights.stat().st_size,
        **results.run_metadata(),
    }
    write_json(weights.with_suffix(".json"), record)
    print(
        f"{net}: {record['epochs']} x {iterations} iterations in {seconds / 60:.1f} min, train accuracy "
        f"{100 * train_acc:.1f} %, test accuracy {100 * record['final']['test_acc']:.1f} % -> {weights}"
    )
    return record


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = repo_root()
    if args.out is None:
        if root is None:
            raise SystemExit("no repository found: pass --out")
        args.out = root / "results" / "weights"
    if args.checkpoint_dir is None:
        args.checkpoint_dir = config.data_dir() / "checkpoints" / "analysis"
    recipe = recipes.ANALYSIS_CIFAR10.shortened(args.epochs)
    for net in args.nets:
        train_net(net, args, recipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
