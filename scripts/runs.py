#!/usr/bin/env python3
"""Run the book's full-scale trainings outside the notebooks: `make runs`.

    python scripts/runs.py --list                    # the queue, in order, with what is done
    python scripts/runs.py --max-minutes 9           # as much of the queue as fits in 9 minutes
    python scripts/runs.py --jobs 4 --max-minutes 9  # four runs side by side on one GPU
    python scripts/runs.py --only ch04-resnet18-cifar10,cifar10/resnet56-seed0
    python scripts/runs.py --dry-run                 # every run for 2 epochs of 2 batches, in a temp folder

The queue, in the order the book needs it:

1. the degradation nets of chapter 1 (plain-20, plain-56, ResNet-20, ResNet-56, seed 0), which
   are runs of the paper's CIFAR-10 experiment (`utils.reproduction`, `results/cifar10/`);
2. the book's own runs (`utils.runs.BOOK_RUNS`, `results/runs/`): chapter 4's ResNet-18 on
   CIFAR-10 and on MNIST;
3. the rest of the paper's Table 6 and Fig. 6 (nine nets, seeds 0 and 1).

Every run is resumable: run the same command again and it continues each unfinished run from its
checkpoint (under the data directory) and skips the finished ones. `--max-minutes` stops cleanly
between epochs. A record made by other training code is never reused (see `utils.runs`).

`--dry-run` is the CPU check of this whole path that `.ci/run` makes: every run of the queue, on
the real data, for 2 epochs of 2 batches of 16 images; each run is stopped after its first epoch,
resumed from its checkpoint, finished, and then found finished. Records and checkpoints go to a
temporary folder (or `--out`), never into results/.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

DEGRADATION_NETS = ("plain20", "plain56", "resnet20", "resnet56")
_splits: dict = {}  # the paper's splits, loaded once per process


@dataclass(frozen=True)
class Item:
    """One entry of the queue: a reproduction run (``net``, ``seed``) or a book run (``spec``)."""

    name: str
    net: str | None = None
    seed: int = 0
    spec: object | None = None


def queue() -> list[Item]:
    from utils import reproduction, runs

    first = [Item(f"cifar10/{reproduction.run_name(net, 0)}", net, 0) for net in DEGRADATION_NETS]
    book = [Item(spec.name, spec=spec) for spec in runs.BOOK_RUNS]
    rest = [
        Item(f"cifar10/{reproduction.run_name(net, seed)}", net, seed)
        for seed in reproduction.PAPER_SEEDS
        for net in reproduction.PAPER_NETS
    ]
    return first + book + [item for item in rest if item not in first]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the queue and what is done, then stop")
    parser.add_argument("--only", default=None, help="comma-separated names from --list")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop between epochs after about this long")
    parser.add_argument("--jobs", type=int, default=1, help="runs at the same time, one process each")
    parser.add_argument("--dry-run", action="store_true", help="2 epochs of 2 batches per run, into a temp folder")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: results/; dry run: a temp one)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None, help="default: under the data directory")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                        help="default: fp32 for the paper's runs (as the paper), by device for the book's")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    names = [item.name for item in queue()]
    if args.only:
        args.only = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in args.only if n not in names]
        if unknown:
            parser.error(f"--only: unknown runs {unknown}; expected names from --list: {', '.join(names)}")
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs} must be at least 1")
    if args.max_minutes is not None and args.max_minutes < 0:
        parser.error(f"--max-minutes {args.max_minutes} must not be negative")
    return args


def _status(item: Item, out: Path | None) -> str:
    from utils import reproduction, runs
    from utils.files import read_json

    if item.spec is not None:
        return "done" if runs.finished(item.spec, out) else "to do"
    folder = (out / "cifar10") if out is not None else reproduction.committed_results_dir()
    path = None if folder is None else folder / f"{reproduction.run_name(item.net, item.seed)}.json"
    if path is None or not path.exists():
        return "to do"
    record = read_json(path)
    return "done" if record.get("done") else f"{record.get('epochs_completed', 0)}/{record.get('epochs_planned')} epochs"


def run_item(item: Item, args: argparse.Namespace, deadline: float | None, epochs_now: int | None = None) -> dict:
    """Train (or resume, or skip) one item of the queue; return its record."""
    import torch

    from utils import recipes, reproduction, runs

    device = torch.device(args.device) if args.device else None
    argv = ["scripts/runs.py", *sys.argv[1:]]
    dry = {"max_batches": runs.DRY_BATCHES, "epochs_now": epochs_now} if args.dry_run else {}
    if item.spec is not None:
        spec = runs.dry_run_spec(item.spec) if args.dry_run else item.spec
        return runs.execute(spec, results_dir=args.out, checkpoint_dir=args.checkpoint_dir, deadline=deadline,
                            device=device, precision=args.precision, argv=argv, **dry)  # fmt: skip
    recipe = recipes.PAPER_CIFAR10
    if args.dry_run:
        recipe = recipe.shortened(runs.DRY_EPOCHS).replace(batch_size=runs.DRY_BATCH_SIZE)
    out = (args.out / "cifar10") if args.out is not None else reproduction.default_results_dir("full", ROOT)
    checkpoints = args.checkpoint_dir or reproduction.default_checkpoint_dir("full")
    name = reproduction.run_name(item.net, item.seed)
    if "paper" not in _splits:
        _splits["paper"] = reproduction.load_splits(reproduction.PAPER_DATA, allow_fallback=False)
    return reproduction.run_reproduction(
        item.net, item.seed, recipe, reproduction.PAPER_DATA, splits=_splits["paper"],
        results_path=out / f"{name}.json", checkpoint_path=Path(checkpoints) / f"{name}.pt",
        deadline=deadline, device=device, precision=args.precision or "fp32", argv=argv, **dry,
    )  # fmt: skip


def _dry_run(items: list[Item], args: argparse.Namespace) -> int:
    """Each run: stop after one epoch, resume, finish, then find it finished. Returns an exit status."""
    from utils.runs import DRY_EPOCHS

    problems = []
    for item in items:
        first = run_item(item, args, None, epochs_now=1)
        second = run_item(item, args, None)
        third = run_item(item, args, None)
        if first["done"] or first["epochs_completed"] != 1:
            problems.append(f"{item.name}: the first pass should stop after epoch 1, not {first['epochs_completed']}")
        if not second["done"] or second["epochs_completed"] != DRY_EPOCHS:
            problems.append(f"{item.name}: the resumed pass should finish all {DRY_EPOCHS} epochs")
        if third != second:
            problems.append(f"{item.name}: a finished run should be reused unchanged")
    print("dry run: " + ("; ".join(problems) if problems else f"all {len(items)} runs stopped, resumed and finished"))
    return 1 if problems else 0


def run_in_parallel(commands: dict[str, list[str]], jobs: int, deadline: float | None) -> int:
    """Run ``{name: command}`` as child processes, at most ``jobs`` at a time; 1 if any failed.

    Each command gets ``--max-minutes`` with what is left of ``deadline`` when it starts; once
    none is left, the commands not started yet are reported and skipped. Shared by this script
    and scripts/reproduce.py.
    """
    waiting, running, failed = list(commands.items()), [], []
    while waiting or running:
        while waiting and len(running) < jobs:
            minutes = None if deadline is None else (deadline - time.monotonic()) / 60
            if minutes is not None and minutes <= 0:
                print(f"time limit reached: {len(waiting)} runs not started")
                waiting = []
                break
            name, command = waiting.pop(0)
            command = command + ([] if minutes is None else ["--max-minutes", f"{minutes:.3f}"])
            running.append((name, subprocess.Popen(command)))
        time.sleep(0.2)
        for entry in [r for r in running if r[1].poll() is not None]:
            running.remove(entry)
            if entry[1].returncode != 0:
                failed.append(f"{entry[0]} (exit status {entry[1].returncode})")
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


def _in_parallel(items: list[Item], args: argparse.Namespace, deadline: float | None) -> int:
    """One child process per run of the queue, at most --jobs at a time."""
    common = []
    for flag, value in (("--out", args.out), ("--checkpoint-dir", args.checkpoint_dir),
                        ("--precision", args.precision), ("--device", args.device)):  # fmt: skip
        common += [flag, str(value)] if value is not None else []
    script = str(Path(__file__).resolve())
    commands = {item.name: [sys.executable, script, "--only", item.name, *common] for item in items}
    return run_in_parallel(commands, args.jobs, deadline)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    os.environ["RESNET_MODE"] = "full"  # the real data, never the digits fallback
    items = [item for item in queue() if args.only is None or item.name in args.only]
    if args.list:
        for item in items:
            print(f"{item.name:32s} {_status(item, args.out)}")
        return 0
    deadline = None if args.max_minutes is None else time.monotonic() + 60 * args.max_minutes
    if args.dry_run:
        if args.out is None:
            with tempfile.TemporaryDirectory(prefix="runs-dry-") as scratch:
                args.out, args.checkpoint_dir = Path(scratch) / "results", Path(scratch) / "checkpoints"
                return _dry_run(items, args)
        return _dry_run(items, args)
    if args.jobs > 1 and len(items) > 1:
        return _in_parallel(items, args, deadline)
    for item in items:
        if deadline is not None and time.monotonic() >= deadline:
            print(f"time limit reached before {item.name}")
            break
        record = run_item(item, args, deadline)
        print(f"{item.name}: {'done' if record.get('done') else 'unfinished'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
