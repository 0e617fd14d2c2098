#!/usr/bin/env python3
"""Reproduce the CIFAR-10 experiment of He et al., "Deep Residual Learning" (2015), Sec. 4.2: plain and residual nets, 20 to 110 layers.

    python scripts/reproduce.py --mode full                                     # 9 nets x seeds 0,1 (a GPU)
    python scripts/reproduce.py --mode full --nets resnet20,plain20 --seeds 0 --max-minutes 9
    python scripts/reproduce.py --mode full --jobs 4 --max-minutes 9             # 4 runs side by side on one GPU
    python scripts/reproduce.py --quick --nets resnet8,plain8                   # a smoke test on a CPU

Every run (one net, one seed) trains with the paper's recipe (utils.recipes.PAPER_CIFAR10 on utils.reproduction.PAPER_DATA: 45k/5k
split, batch 128, SGD with momentum 0.9, lr 0.1 divided by 10 at 32k and 48k iterations, 64k
iterations, weight decay 1e-4, pad-4 crop and flip, option A shortcuts, a warm-up at lr 0.01 for
ResNet-110) and writes results/cifar10/<net>-seed<k>.json (schema: results/README.md) after
every stretch of epochs. Its checkpoint lives under the data directory (RESNET_DATA), in
checkpoints/cifar10/<net>-seed<k>.pt: running the same command again resumes every unfinished
run where it stopped and skips the finished ones. --max-minutes stops cleanly between epochs, so
that one invocation fits in a time slot.

Full mode needs the real CIFAR-10 and refuses the offline digits fallback. Quick mode
(--quick, or RESNET_MODE=quick without --mode) trains on 100 images for 2 epochs and writes
under the data directory, never into results/.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    from utils import config, reproduction

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", default=",".join(reproduction.PAPER_NETS),
                        help="comma-separated nets: resnet<depth> or plain<depth> (default: the paper's nine)")
    parser.add_argument("--seeds", default=",".join(map(str, reproduction.PAPER_SEEDS)),
                        help="comma-separated seeds (default: 0,1)")
    parser.add_argument("--mode", choices=config.MODES, default=None,
                        help="full: the paper's recipe on CIFAR-10; quick: a smoke test "
                             f"(default: {config.MODE_VARIABLE})")
    parser.add_argument("--quick", action="store_true", help="same as --mode quick")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop between epochs so that this invocation ends within about this many minutes")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder of the JSON records (default: results/cifar10 in full mode)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None,
                        help="folder of the checkpoints (default: under the data directory)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="train this many runs at the same time, one process each (small nets leave a GPU idle)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="arithmetic of the training (default fp32, as the paper; bf16 on a recent GPU is faster)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--device", default=None, help="torch device (default: the GPU if there is one)")
    parser.add_argument("--no-progress", action="store_true", help="no line per epoch from fit (the run still logs each epoch)")
    args = parser.parse_args(argv)
    if args.quick and args.mode == "full":
        parser.error("--quick and --mode full contradict each other")
    args.mode = "quick" if args.quick else (args.mode or config.mode())
    try:
        args.nets = [n.strip() for n in args.nets.split(",") if n.strip()]
        for net in args.nets:
            reproduction.parse_net(net)
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError as err:
        parser.error(str(err))
    if not args.nets or not args.seeds:
        parser.error("--nets and --seeds need at least one entry each")
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs} must be at least 1")
    if args.max_minutes is not None and args.max_minutes < 0:
        parser.error(f"--max-minutes {args.max_minutes} must not be negative")
    return args


def _run_in_parallel(args: argparse.Namespace, runs: list[tuple[str, int]], deadline: float | None) -> int:
    """One child process per run, at most ``--jobs`` at a time; each gets what is left of the time limit."""
    from scripts.runs import run_in_parallel

    common = ["--mode", args.mode, "--out", str(args.out), "--checkpoint-dir", str(args.checkpoint_dir)]
    common += ["--no-progress"]
    common += ["--precision", args.precision] + ["--compile"] * args.compile + (["--device", args.device] if args.device else [])
    script = str(Path(__file__).resolve())
    commands = {
        f"{net}-seed{seed}": [sys.executable, script, "--nets", net, "--seeds", str(seed), *common]
        for net, seed in runs
    }
    return run_in_parallel(commands, args.jobs, deadline)


def main(argv: list[str] | None = None) -> list[dict]:
    args = _parse_args(argv)
    started = time.monotonic()
    deadline = None if args.max_minutes is None else started + 60 * args.max_minutes
    # The mode decides what utils.data accepts and what the records say: make it the environment's.
    os.environ["RESNET_MODE"] = args.mode
    import torch

    from utils import data, recipes, reproduction, train
    from utils.files import read_json

    full = args.mode == "full"
    recipe = recipes.PAPER_CIFAR10 if full else recipes.REPRODUCTION_SMOKE
    plan = reproduction.PAPER_DATA if full else reproduction.SMOKE_DATA
    args.out = args.out or reproduction.default_results_dir(args.mode, ROOT)
    args.checkpoint_dir = args.checkpoint_dir or reproduction.default_checkpoint_dir(args.mode)
    runs = [(net, seed) for net in args.nets for seed in args.seeds]
    argv_recorded = ["scripts/reproduce.py", *(sys.argv[1:] if argv is None else argv)]

    if args.jobs > 1 and len(runs) > 1:
        status = _run_in_parallel(args, runs, deadline)
        paths = [args.out / f"{reproduction.run_name(net, seed)}.json" for net, seed in runs]
        records = [read_json(p) for p in paths if p.exists()]
    else:
        try:
            splits = reproduction.load_splits(plan, allow_fallback=not full)
        except data.DataUnavailableError as err:
            raise SystemExit(f"reproduce.py ({args.mode} mode): {err}") from None
        device = torch.device(args.device) if args.device else train.default_device()
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
        records, status = [], 0
        for net, seed in runs:
            name = reproduction.run_name(net, seed)
            records.append(reproduction.run_reproduction(
                net, seed, recipe, plan,
                results_path=args.out / f"{name}.json",
                checkpoint_path=args.checkpoint_dir / f"{name}.pt",
                deadline=deadline, splits=splits, device=device, precision=args.precision, compile=args.compile,
                progress=not args.no_progress, argv=argv_recorded,
            ))  # fmt: skip

    for r in records:
        final = f"test error {r['final']['test_error']:.2f} %" if r.get("done") else r.get("stopped") or "unfinished"
        name = reproduction.run_name(r["net"], r["seed"])
        print(f"{name}: {r['epochs_completed']}/{r['epochs_planned']} epochs, {final}")
    missing = reproduction.outstanding_runs(records, args.nets, args.seeds)
    print(f"outstanding: {', '.join(missing)}" if missing else "all runs done")
    print(f"records in {args.out}, checkpoints in {args.checkpoint_dir} ({time.monotonic() - started:.0f} s)")
    if status:
        raise SystemExit(status)
    return records


if __name__ == "__main__":
    main()
