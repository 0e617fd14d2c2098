#!/usr/bin/env python3
"""Choose chapter 1's quick-mode setting: plain-20/56 and ResNet-20/56 on a CPU, over 3 seeds.

    OMP_NUM_THREADS=1 python scripts/study_degradation.py            # every setting, seeds 0 1 2
    python scripts/study_degradation.py --settings w4-250img-400it --seeds 0   # a quick look
    OMP_NUM_THREADS=1 python scripts/study_degradation.py --resume    # add settings to the file

Every net is the paper's CIFAR-10 net with option A shortcuts ([v1] Sec. 4.2), at the widths of
the setting, trained by ``utils.train.fit`` with a ``utils.recipes.Recipe``: SGD with momentum
0.9, weight decay 1e-4, the learning rate scaled to the batch by the linear scaling rule
(0.1 x batch / 128, Goyal et al. 2017) after a linear warm-up of 2 epochs, then cosine decay; no
augmentation. The data: a class-balanced subset of the 45k training split (seed 0, the images
chapter 1 uses), and 30 test images per class. After training, each net is evaluated in
evaluation mode (BatchNorm's running statistics) on its own training images, unaugmented: the
*evaluation-mode training loss*, the quantity the choice is made on. The running training loss
of the last epoch (averaged over its batches while the net trains) and the test error are kept too.

The rule that picks the setting (``choose``), on the evaluation-mode training losses:

1. a setting qualifies if, for every seed, plain-56 > plain-20 + MARGIN and
   ResNet-56 < plain-56 - MARGIN (MARGIN = 0.1 nats: "clearly"), and the four nets of one seed
   took at most MAX_SECONDS;
2. among those, prefer the ones where ResNet-56 <= ResNet-20 for every seed;
3. then the fastest.

Writes ``results/study-degradation-quick.json`` (``--out``): every setting, net and seed, the
rule, the chosen setting, ``run_metadata`` (command, commit, device, versions), the data source
and the seconds. The file is rewritten after every run, so an interrupted study keeps what it had;
``--resume`` keeps the finished settings of an earlier file (same definition, every seed) and
runs only the others, recording every invocation's command under ``invocations``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from utils import data, models, recipes, results, train
from utils.files import read_json, repo_root, write_json

NETS = ("plain-20", "plain-56", "ResNet-20", "ResNet-56")
SEEDS = (0, 1, 2)
MARGIN = 0.1  # nats of evaluation-mode training loss that count as "clearly" above or below
MAX_SECONDS = 150.0  # the four nets of one seed, single-threaded: chapter 1 must stay short
TEST_PER_CLASS = 30
VAL_SIZE = 5000  # the paper's 45k/5k split


def linear_scaled_lr(batch_size: int) -> float:
    """The paper's 0.1 at batch 128, scaled to ``batch_size`` (Goyal et al. 2017)."""
    return 0.1 * batch_size / 128


def recipe_for(batch_size: int, epochs: int, warmup_epochs: float = 2.0) -> recipes.Recipe:
    """The paper's optimiser, the rate scaled to the batch, warm-up then cosine, no augmentation."""
    return recipes.PAPER_CIFAR10.replace(
        epochs=epochs, batch_size=batch_size, lr=linear_scaled_lr(batch_size),
        schedule="cosine", milestones=(), warmup_epochs=warmup_epochs, augment=False,
    )  # fmt: skip


# name -> (training images per class, widths of the three stages, recipe). With 10 classes the
# iterations are epochs x ceil(10 x per_class / batch).
SETTINGS = {
    # The throwaway study (500 images, widths 8/16/32, lr 0.05 at batch 64), cut from
    # 300 to 200 iterations to fit the time limit.
    "w8-500img-200it": (50, (8, 16, 32), recipe_for(64, 25)),
    # Narrower nets and half the images, batch 32 (lr 0.025): 400 iterations.
    "w4-250img-400it": (25, (4, 8, 16), recipe_for(32, 50)),
    # Widths 8/16/32 on 250 images, batch 32, longer: 480 iterations.
    "w8-250img-480it": (25, (8, 16, 32), recipe_for(32, 60)),
}


def build(net: str, widths: tuple[int, ...], num_classes: int = 10) -> models.ResNet:
    """plain-<depth> or ResNet-<depth>: the CIFAR net of [v1] with option A shortcuts, at ``widths``."""
    family, depth = net.split("-")
    build_net = models.resnet_cifar if family == "ResNet" else models.plain_cifar
    return build_net(int(depth), num_classes, widths=widths)


def run_one(net, widths, recipe, train_set, test_set, seed):
    """Train one net with one seed; its final losses and errors and its seconds."""
    train_loader, evals = data.make_loaders(
        train_set, {"train (eval mode)": train_set, "test": test_set}, recipe.batch_size,
        augment=recipe.augment, seed=seed,
    )  # fmt: skip
    train.set_seed(seed)
    model = build(net, widths, len(train_set.classes))
    started = time.perf_counter()
    history = train.fit(model, train_loader, recipe=recipe, channels_last=True, progress=False)
    seconds = time.perf_counter() - started
    eval_loss, eval_acc = train.evaluate(model, evals["train (eval mode)"])
    test_loss, test_acc = train.evaluate(model, evals["test"])
    return {
        "net": net,
        "seed": seed,
        "eval_train_loss": eval_loss,
        "eval_train_error": 100 * (1 - eval_acc),
        "running_train_loss": history["train_loss"][-1],
        "running_train_error": 100 * (1 - history["train_acc"][-1]),
        "running_train_loss_per_epoch": history["train_loss"],
        "test_loss": test_loss,
        "test_error": 100 * (1 - test_acc),
        "iterations": len(train_loader) * len(history["epoch"]),
        "seconds": seconds,
    }


def verdict(runs: list[dict], seeds) -> dict:
    """Which of the rule's conditions hold, seed by seed, on the evaluation-mode training loss."""
    loss = {(r["net"], r["seed"]): r["eval_train_loss"] for r in runs}
    seconds = {s: sum(r["seconds"] for r in runs if r["seed"] == s) for s in seeds}
    complete = [s for s in seeds if all((net, s) in loss for net in NETS)]
    checks = {
        "plain-56 > plain-20 + margin": [loss["plain-56", s] > loss["plain-20", s] + MARGIN for s in complete],
        "ResNet-56 < plain-56 - margin": [loss["ResNet-56", s] < loss["plain-56", s] - MARGIN for s in complete],
        "ResNet-56 <= ResNet-20": [loss["ResNet-56", s] <= loss["ResNet-20", s] for s in complete],
        "seconds per seed <= max": [seconds[s] <= MAX_SECONDS for s in complete],
    }
    holds = {name: len(complete) == len(seeds) and all(values) for name, values in checks.items()}
    return {"seeds": complete, "per_seed": checks, "holds_for_all_seeds": holds,
            "seconds_per_seed": [seconds[s] for s in complete]}  # fmt: skip


def choose(verdicts: dict[str, dict]) -> str | None:
    """The rule of the module docstring: qualifying settings, then ResNet-56 <= ResNet-20, then time."""
    required = ("plain-56 > plain-20 + margin", "ResNet-56 < plain-56 - margin", "seconds per seed <= max")
    qualifying = [name for name, v in verdicts.items() if all(v["holds_for_all_seeds"][c] for c in required)]
    if not qualifying:
        return None

    def key(name):
        v = verdicts[name]
        return (not v["holds_for_all_seeds"]["ResNet-56 <= ResNet-20"], max(v["seconds_per_seed"]))

    return min(qualifying, key=key)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    default_out = Path(repo_root() or ".") / "results" / "study-degradation-quick.json"
    parser.add_argument("--out", default=str(default_out))
    parser.add_argument("--resume", action="store_true", help="keep finished settings of --out")
    args = parser.parse_args(argv)
    names = args.settings.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; expected some of {list(SETTINGS)}")

    metadata = results.run_metadata(None if argv is None else [sys.argv[0], *argv])
    metadata["threads"] = torch.get_num_threads()
    train_all, test_all = data.load_cifar10("train"), data.load_cifar10("test")
    train_pool, _ = data.train_val_split(train_all, VAL_SIZE, seed=0)
    test_set = data.class_balanced_subset(test_all, TEST_PER_CLASS, seed=0)
    earlier = read_json(args.out) if args.resume and Path(args.out).exists() else None
    payload = {
        "what": "chapter 1's quick-mode setting: evaluation-mode training loss of plain-20/56 and ResNet-20/56",
        **metadata,
        "data": train_all.source,
        "rule": {
            "margin": MARGIN,
            "max_seconds_per_seed": MAX_SECONDS,
            "text": choose.__doc__ + "; see scripts/study_degradation.py",
        },
        "nets": list(NETS),
        "seeds": seeds,
        "settings": {},
        "chosen": None,
    }
    invocation = {k: metadata[k] for k in ("command", "commit", "date", "device", "threads")}
    payload["invocations"] = (earlier or {}).get("invocations", [])
    if earlier is not None and not payload["invocations"]:
        payload["invocations"] = [{k: earlier.get(k) for k in invocation}]
    payload["invocations"].append(invocation)
    verdicts = {}
    started = time.perf_counter()
    before = earlier.get("seconds", 0.0) if earlier is not None else 0.0
    for name in names:
        per_class, widths, recipe = SETTINGS[name]
        train_set = data.class_balanced_subset(train_pool, per_class, seed=0)
        entry = {
            "train_images": len(train_set), "train_per_class": per_class, "widths": list(widths),
            "test_images": len(test_set), "recipe": recipe.as_dict(), "runs": [],
        }  # fmt: skip
        old = (earlier or {}).get("settings", {}).get(name)
        if old is not None and all(old[k] == entry[k] for k in entry if k != "runs"):
            if sorted({r["seed"] for r in old["runs"]}) == sorted(seeds) and len(old["runs"]) == len(seeds) * len(NETS):
                payload["settings"][name] = old
                verdicts[name] = old["verdict"] = verdict(old["runs"], seeds)
                print(f"{name}: kept from {args.out}", flush=True)
                continue
        payload["settings"][name] = entry
        for seed in seeds:
            for net in NETS:
                run = run_one(net, widths, recipe, train_set, test_set, seed)
                entry["runs"].append(run)
                print(f"{name} seed {seed} {net:10s} eval-mode train loss {run['eval_train_loss']:.3f} "
                      f"running {run['running_train_loss']:.3f} test error {run['test_error']:.1f} % "
                      f"({run['seconds']:.0f} s)", flush=True)  # fmt: skip
                payload["seconds"] = before + time.perf_counter() - started
                write_json(args.out, payload)
        verdicts[name] = entry["verdict"] = verdict(entry["runs"], seeds)
        print(f"{name}: {verdicts[name]['holds_for_all_seeds']}", flush=True)
    payload["chosen"] = choose(verdicts)
    payload["seconds"] = before + time.perf_counter() - started
    write_json(args.out, payload)
    print(f"chosen: {payload['chosen']}  ({payload['seconds']:.0f} s) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
