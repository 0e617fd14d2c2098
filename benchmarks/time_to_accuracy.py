"""Seconds for ResNet-18 to reach a target CIFAR-10 test accuracy (94 % by default) on this machine.

Trains ``utils.models.resnet18(stem="cifar")`` with ``utils.train.RESNET18_CIFAR10_RECIPE`` (the
recipe of chapter 4, chosen on a validation split) on all 50,000 training images with the fast
path (data on the device, bf16 autocast and channels-last on a GPU), evaluates the test set after
every epoch, and reports the training seconds until the target was first reached. Writes the full
history, the command, commit, device and versions to a JSON file.

    python benchmarks/time_to_accuracy.py --out results/time-to-94-h100.json       # a GPU
    python benchmarks/time_to_accuracy.py --train-images 1000 --test-images 500 --epochs 2 --warmup-epochs 0 --target 0.3

It needs the real CIFAR-10 (see RESNET_DATA in the README) unless --allow-fallback is given.
"""

from __future__ import annotations

import argparse
import itertools
import sys

import numpy as np

from utils import data, models, results, train


def main(argv: list[str] | None = None) -> dict:
    recipe = train.RESNET18_CIFAR10_RECIPE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=float, default=0.94, help="test accuracy to reach, in [0, 1]")
    parser.add_argument("--epochs", type=int, default=recipe["epochs"])
    parser.add_argument("--batch-size", type=int, default=recipe["batch_size"])
    parser.add_argument("--lr", type=float, default=recipe["lr"])
    parser.add_argument("--warmup-epochs", type=float, default=recipe["warmup_epochs"])
    parser.add_argument("--train-images", type=int, default=None, help="use a class-balanced subset (smoke runs)")
    parser.add_argument("--test-images", type=int, default=None, help="evaluate on a class-balanced test subset (smoke runs)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allow-fallback", action="store_true", help="accept the offline digits fallback (smoke runs)")
    parser.add_argument("--out", default=None, help="JSON file (default: results/time-to-accuracy-<device>.json)")
    args = parser.parse_args(argv)
    if not 0 < args.target <= 1:
        parser.error(f"--target {args.target} must be in (0, 1]")

    device = train.default_device()
    train_set, test_set = data.load_cifar10("train"), data.load_cifar10("test")
    if train_set.source.startswith("fallback") and not args.allow_fallback:
        sys.exit("time_to_accuracy: CIFAR-10 is not available (only the digits fallback); set RESNET_DATA, see README")
    if args.train_images:
        train_set = data.class_balanced_subset(train_set, args.train_images // len(train_set.classes), seed=args.seed)
    if args.test_images:
        test_set = data.class_balanced_subset(test_set, args.test_images // len(test_set.classes), seed=args.seed)

    train.set_seed(args.seed)
    train_loader, evals = data.make_loaders(train_set, {"test": test_set}, args.batch_size, device=device, seed=args.seed)
    model = models.resnet18(num_classes=len(train_set.classes), stem="cifar")
    options = {k: v for k, v in recipe.items() if k not in ("batch_size", "epochs", "lr", "warmup_epochs")}
    history = train.fit(
        model, train_loader, evals, epochs=args.epochs, lr=args.lr, warmup_epochs=args.warmup_epochs, device=device,
        channels_last=device.type == "cuda", compile=args.compile, **options,
    )  # fmt: skip

    elapsed = list(itertools.accumulate(history["seconds"]))
    reached = [i for i, acc in enumerate(history["test_acc"]) if acc >= args.target]
    report = results.run_metadata(["benchmarks/time_to_accuracy.py", *(sys.argv[1:] if argv is None else argv)])
    report |= {
        "target": args.target,
        "reached": bool(reached),
        "epoch_reached": reached[0] + 1 if reached else None,
        "seconds_to_target": elapsed[reached[0]] if reached else None,
        "best_test_acc": float(np.max(history["test_acc"])),
        "final_test_acc": history["test_acc"][-1],
        "total_seconds": elapsed[-1],
        "recipe": recipe | {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                            "warmup_epochs": args.warmup_epochs},
        "train_images": len(train_set),
        "test_images": len(test_set),
        "data_source": train_set.source,
        "history": history,
    }
    if reached:
        print(f"reached {args.target:.1%} test accuracy after {report['seconds_to_target']:.1f} s (epoch {reached[0] + 1})")
    else:
        print(f"did not reach {args.target:.1%}: best {report['best_test_acc']:.2%} in {elapsed[-1]:.1f} s")
    slug = "cpu" if device.type != "cuda" else report["device"].lower().replace("nvidia ", "").replace(" ", "-")
    out = results.write_json(args.out or f"results/time-to-accuracy-{slug}.json", report)
    print(f"written: {out}")
    return report


if __name__ == "__main__":
    main()
