#!/usr/bin/env python3
"""Run every training the book reads, outside the notebooks: `make runs`.

    python scripts/runs.py --list                    # the queue, in order, with what is done
    python scripts/runs.py --tier cpu                # the CPU tier (full data, shortened schedule)
    python scripts/runs.py --max-minutes 9           # as much of the queue as fits in 9 minutes
    python scripts/runs.py --jobs 4 --max-minutes 9  # four runs side by side on one GPU
    python scripts/runs.py --only ch04-resnet18-mnist-cpu2,cifar10-resnet56-seed0
    python scripts/runs.py --dry-run                 # every run for 2 epochs of 2 batches, in a temp folder
    python scripts/runs.py --write-behaviour         # the training-behaviour reference (utils.runs)

The queue is `utils.runs.QUEUE`, one `RunSpec` per run, in the order the book needs them and a
CPU can train them: the CPU tier first (chapter 1's degradation nets, chapter 4's MNIST run, the
rest of Table 6, chapter 4's CIFAR-10 net), then the paper tier (the paper's schedule: GPU work).
Every record goes to `results/runs/<name>.json`; the small nets a page loads also leave their
weights in `results/weights/`.

Every run is resumable: run the same command again and it continues each unfinished run from its
checkpoint (under the data directory) and skips the finished ones. `--max-minutes` stops cleanly
between epochs. A record with another fingerprint (another spec or training version) is never
reused (see `utils.runs`).

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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))



def queue():
    from utils import runs

    return list(runs.QUEUE)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    from utils import runs

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the queue and what is done, then stop")
    parser.add_argument("--only", default=None, help="comma-separated names from --list")
    parser.add_argument("--tier", choices=("paper", "cpu"), default=None, help="only the runs of this tier")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop between epochs after about this long")
    parser.add_argument("--jobs", type=int, default=1, help="runs at the same time, one process each")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per process (torch.set_num_threads)")
    parser.add_argument("--dry-run", action="store_true", help="2 epochs of 2 batches per run, into a temp folder")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: results/; dry run: a temp one)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None, help="default: under the data directory")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                        help="default: fp32 for the paper's nets (as the paper), by device for the others")
    parser.add_argument("--device", default=None)
    parser.add_argument("--write-behaviour", action="store_true",
                        help="write results/training-behaviour.json for utils.runs.TRAINING_VERSION, then stop")
    args = parser.parse_args(argv)
    names = [spec.name for spec in runs.QUEUE]
    if args.only:
        args.only = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in args.only if n not in names]
        if unknown:
            parser.error(f"--only: unknown runs {unknown}; expected names from --list: {', '.join(names)}")
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs} must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads {args.threads} must be at least 1")
    if args.max_minutes is not None and args.max_minutes < 0:
        parser.error(f"--max-minutes {args.max_minutes} must not be negative")
    return args


def _status(spec, out: Path | None) -> str:
    from utils import runs
    from utils.files import read_json

    if runs.finished(spec, out):
        return "done"
    try:
        path = runs._record_path(spec, out)
    except FileNotFoundError:
        return "to do"
    if not path.exists():
        return "to do"
    record = read_json(path)
    if record.get("fingerprint") != spec.fingerprint():
        return "to do (its record was made by another spec or training version)"
    return f"{record.get('epochs_completed', 0)}/{record.get('epochs_planned')} epochs"


_splits: dict = {}  # each data plan's images, loaded once per process


def run_item(spec, args: argparse.Namespace, deadline: float | None, epochs_now: int | None = None) -> dict:
    """Train (or resume, or skip) one run of the queue; return its record."""
    from utils import runs

    argv = ["scripts/runs.py", *sys.argv[1:]]
    dry = {"max_batches": runs.DRY_BATCHES, "epochs_now": epochs_now} if args.dry_run else {}
    spec = runs.dry_run_spec(spec) if args.dry_run else spec
    if runs.finished(spec, args.out) is None and spec.data not in _splits:
        _splits[spec.data] = runs.load_data(spec)
    return runs.execute(
        spec, results_dir=args.out, checkpoint_dir=args.checkpoint_dir, deadline=deadline,
        device=args.device, precision=args.precision, splits=_splits.get(spec.data), argv=argv, **dry,
    )  # fmt: skip


def _dry_run(items: list, args: argparse.Namespace) -> int:
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
    none is left, the commands not started yet are reported and skipped.
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


def _in_parallel(items: list, args: argparse.Namespace, deadline: float | None) -> int:
    """One child process per run of the queue, at most --jobs at a time."""
    common = []
    for flag, value in (("--out", args.out), ("--checkpoint-dir", args.checkpoint_dir),
                        ("--precision", args.precision), ("--device", args.device),
                        ("--threads", args.threads)):  # fmt: skip
        common += [flag, str(value)] if value is not None else []
    script = str(Path(__file__).resolve())
    commands = {item.name: [sys.executable, script, "--only", item.name, *common] for item in items}
    return run_in_parallel(commands, args.jobs, deadline)


def write_behaviour(path: Path) -> int:
    """Write ``utils.runs.behaviour()`` for this ``TRAINING_VERSION`` to ``path``.

    Refuses to replace a reference of the same version whose numbers differ: a change to what
    training computes must raise ``TRAINING_VERSION`` (and so retrain every run).
    """
    from utils import runs
    from utils.files import read_json, write_json

    numbers = runs.behaviour()
    if path.exists():
        old = read_json(path)
        if old.get("training_version") == runs.TRAINING_VERSION and old.get("behaviour") != numbers:
            print(f"{path.name} holds other numbers for training version {runs.TRAINING_VERSION}: what training "
                  "computes has changed. Raise utils.runs.TRAINING_VERSION first (every run is then trained anew).")
            return 1
    write_json(path, {"training_version": runs.TRAINING_VERSION, "command": "python scripts/runs.py --write-behaviour",
                      "behaviour": numbers})  # fmt: skip
    print(f"wrote {path.name} for training version {runs.TRAINING_VERSION}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.write_behaviour:
        return write_behaviour(ROOT / "results" / "training-behaviour.json")
    os.environ["RESNET_MODE"] = "full"  # the real data, never the digits fallback
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    items = [spec for spec in queue() if (args.only is None or spec.name in args.only)
             and (args.tier is None or spec.tier == args.tier)]  # fmt: skip
    if args.list:
        for spec in items:
            print(f"{spec.name:34s} {spec.tier:6s} {_status(spec, args.out)}")
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
    for spec in items:
        if deadline is not None and time.monotonic() >= deadline:
            print(f"time limit reached before {spec.name}")
            break
        record = run_item(spec, args, deadline)
        print(f"{spec.name}: {'done' if record.get('done') else 'unfinished'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
