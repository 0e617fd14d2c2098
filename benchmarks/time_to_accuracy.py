"""Seconds for ResNet-18 to reach a target CIFAR-10 test accuracy (94 % by default) on this machine.

Trains ``utils.models.resnet18(stem="cifar")`` with ``utils.recipes.RESNET18_CIFAR10`` (the
recipe of chapter 4) on all 50,000 training images with the fast path (data on the device,
channels-last, and on a GPU mixed precision by ``utils.train.default_precision``), evaluates the test set after every epoch, and reports the
training seconds until the target was first reached. Writes the full history, the command, commit,
device and versions to a JSON file. The seconds are those of ``fit``'s epochs, each with its
evaluation pass (which a user of the recipe pays for too); data loading before the first epoch is
not counted.

Choosing a recipe (epochs, learning rate, ...) by its test accuracy would tune on the test set.
``--eval-on val`` is for that choice: it trains on 45,000 images and evaluates on the other 5,000
(a stratified split, as in He et al. Sec. 4.2). Only the final recipe is then timed on the test set.

    python benchmarks/time_to_accuracy.py --eval-on val --epochs 30 --out results/recipe-val-e30.json  # choose, on a GPU
    python benchmarks/time_to_accuracy.py --out results/time-to-accuracy-h100.json                   # time it, on a GPU
    python benchmarks/time_to_accuracy.py --train-images 1000 --test-images 500 --epochs 2 --warmup-epochs 0 --target 0.3

It needs the real CIFAR-10 (see RESNET_DATA in the README) unless --allow-fallback is given.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import numpy as np

from utils import data, models, recipes, results, train


def main(argv: list[str] | None = None) -> dict:
    recipe = recipes.RESNET18_CIFAR10
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=float, default=0.94, help="accuracy to reach (on the set --eval-on names), in (0, 1]")
    parser.add_argument("--epochs", type=int, default=recipe.epochs)
    parser.add_argument("--batch-size", type=int, default=recipe.batch_size)
    parser.add_argument("--lr", type=float, default=recipe.lr)
    parser.add_argument("--warmup-epochs", type=float, default=recipe.warmup_epochs)
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop between epochs after about this long (the report says how far it got)")
    parser.add_argument("--train-images", type=int, default=None, help="use a class-balanced subset (smoke runs)")
    parser.add_argument("--test-images", type=int, default=None, help="evaluate on a class-balanced test subset (smoke runs)")
    parser.add_argument("--eval-on", choices=("test", "val"), default="test",
                        help="val: train on 90 %% of the training images and evaluate on the other 10 %% (choosing a recipe)")
    parser.add_argument("--stop-at-target", action="store_true",
                        help="stop training at the first epoch that reaches --target on the --eval-on set")
    parser.add_argument("--then-test", action="store_true",
                        help="with --eval-on val: evaluate the test set once, after the last epoch trained")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allow-fallback", action="store_true", help="accept the offline digits fallback (smoke runs)")
    parser.add_argument("--out", default=None, help="JSON file (default: results/time-to-accuracy-<device>.json)")
    args = parser.parse_args(argv)
    if not 0 < args.target <= 1:
        parser.error(f"--target {args.target} must be in (0, 1]")
    try:
        recipe = recipe.replace(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                warmup_epochs=args.warmup_epochs)  # fmt: skip
    except ValueError as err:
        parser.error(str(err))
    if args.then_test and args.eval_on != "val":
        parser.error("--then-test needs --eval-on val (the epoch is chosen on the validation split)")
    if args.eval_on == "val" and args.test_images:
        parser.error("--test-images applies to --eval-on test; with --eval-on val the validation set is 10 % of the training images")

    # Taken before the run: the commit's dirty flag must describe the code that ran, not edits made meanwhile.
    report = results.run_metadata(["benchmarks/time_to_accuracy.py", *(sys.argv[1:] if argv is None else argv)])
    report["load_average_before"] = results.load_average()
    device = train.default_device()
    train_set = data.load_cifar10("train")
    if train_set.source.startswith("fallback") and not args.allow_fallback:
        sys.exit("time_to_accuracy: CIFAR-10 is not available (only the digits fallback); set RESNET_DATA, see README")
    if args.train_images:
        train_set = data.class_balanced_subset(train_set, args.train_images // len(train_set.classes), seed=args.seed)
    if args.eval_on == "val":  # the test set stays unseen while the recipe is chosen
        train_set, eval_set = data.train_val_split(train_set, 0.1, seed=args.seed)
    else:
        eval_set = data.load_cifar10("test")
        if args.test_images:
            eval_set = data.class_balanced_subset(eval_set, args.test_images // len(eval_set.classes), seed=args.seed)
    metric = f"{args.eval_on}_acc"

    train.set_seed(args.seed)
    train_loader, evals = data.make_loaders(
        train_set, {args.eval_on: eval_set}, recipe.batch_size, device=device, seed=args.seed
    )
    model = models.resnet18(num_classes=len(train_set.classes), stem="cifar").to(device)
    deadline = None if args.max_minutes is None else time.monotonic() + 60 * args.max_minutes
    def reached_target(history) -> bool:
        return args.stop_at_target and history[metric][-1] >= args.target

    history = train.fit(
        model, train_loader, evals, recipe=recipe, channels_last=True, compile=args.compile,
        deadline=deadline, on_epoch=reached_target, progress=True,
    )
    if not history["epoch"]:
        sys.exit("time_to_accuracy: not one epoch fitted in --max-minutes")

    elapsed = list(itertools.accumulate(history["seconds"]))
    reached = [i for i, acc in enumerate(history[metric]) if acc >= args.target]
    report |= {
        "evaluated_on": args.eval_on,
        "target": args.target,
        "reached": bool(reached),
        "epoch_reached": reached[0] + 1 if reached else None,
        "seconds_to_target": elapsed[reached[0]] if reached else None,
        f"best_{metric}": float(np.max(history[metric])),
        f"final_{metric}": history[metric][-1],
        "total_seconds": elapsed[-1],
        "recipe": recipe.as_dict(),
        "precision": train.default_precision(device),
        "epochs_completed": len(history["epoch"]),
        "train_images": len(train_set),
        f"{args.eval_on}_images": len(eval_set),
        "data_source": train_set.source,
        "history": history,
        "load_average_after": results.load_average(),
    }
    if args.then_test:  # the test set, once, for the epoch chosen on the validation split
        test_set = data.load_cifar10("test")
        test_loader = data.BatchLoader(test_set, 512, *data.channel_stats(train_set), device=device)
        report["test_loss_once"], report["test_acc_once"] = train.evaluate(model, test_loader)
        report["test_images"] = len(test_set)
        print(f"test accuracy, measured once after epoch {len(history['epoch'])}: {report['test_acc_once']:.2%}")
    if reached:
        print(f"reached {args.target:.1%} {args.eval_on} accuracy after {report['seconds_to_target']:.1f} s (epoch {reached[0] + 1})")
    else:
        print(f"did not reach {args.target:.1%}: best {args.eval_on} accuracy {report[f'best_{metric}']:.2%} in {elapsed[-1]:.1f} s")
    slug = results.device_slug(device)
    default_out = f"results/time-to-accuracy-{slug}.json" if args.eval_on == "test" else f"results/recipe-val-{slug}.json"
    if args.then_test:
        default_out = f"results/time-to-accuracy-{slug}-val.json"
    out = results.write_json(args.out or default_out, report)
    print(f"written: {out}")
    return report


if __name__ == "__main__":
    main()
