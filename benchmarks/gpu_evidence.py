#!/usr/bin/env python3
"""Everything a lent GPU should measure, in priority order, within one deadline: `make gpu-evidence`.

    python benchmarks/gpu_evidence.py --minutes 9      # on one H100/H200: what `make gpu-evidence` runs
    python benchmarks/gpu_evidence.py --smoke --minutes 1 --out /tmp/evidence   # the CPU smoke test

The steps, most valuable first; each gets a share of what is left of the deadline, and a step
that cannot start in time is skipped and says so (the summary lists it):

1. **throughput**: the classic `DataLoader` + PIL loop against the fast path, with and without
   `torch.compile`, with model-FLOP utilisation (`benchmarks/throughput.py`);
2. **time to 94 %**: ResNet-18 by chapter 4's recipe on the 45k/5k split, stopped at the first
   epoch whose *validation* accuracy reaches 94 %; the test set is evaluated once, for that
   epoch (`benchmarks/time_to_accuracy.py --eval-on val --stop-at-target --then-test`);
3. **latency**: ResNet-18 to 152 at batch 1 and 32, and seed post 003's comparison (ResNet-v2-152,
   VGG-16, Inception-v3 at batch 32, 224x224, 10 burn-in and 100 timed batches)
   (`benchmarks/latency.py`);
4. **the book's runs**: `make runs` with the rest of the time (the degradation nets first, then
   chapter 4's, then Table 6), four at a time; resumable, so the next GPU session continues.

Every step writes its JSON under `results/` (or `--out`), and `evidence-summary.json` says what
each step did, how long it took and which files it wrote. DEVELOPERS.md says how to bring the
files back from a lent machine and commit them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

# Share of the remaining time each step may use, and the least it needs to be worth starting.
BUDGETS = {"throughput": (0.2, 0.5), "time_to_accuracy": (0.45, 1.5), "latency": (0.35, 0.5), "runs": (1.0, 0.5)}
SMOKE_BUDGETS = {name: (share, 0.0) for name, (share, _) in BUDGETS.items()}


def _steps(out: Path, smoke: bool) -> dict[str, list[str]]:
    """The command line of every step (argument lists for each script's ``main``)."""
    if smoke:  # tiny sizes on the CPU: the path, not the numbers
        return {
            "throughput": ["--model", "resnet8", "--images", "64", "--batch-size", "32", "--workers", "0",
                           "--out", str(out / "throughput-smoke.json")],
            "time_to_accuracy": ["--eval-on", "val", "--stop-at-target", "--then-test", "--train-images", "200",
                                 "--epochs", "2", "--warmup-epochs", "0", "--batch-size", "50", "--target", "0.01",
                                 "--allow-fallback", "--out", str(out / "time-to-accuracy-smoke-val.json")],
            "latency": ["--depths", "18", "--also", "resnet_v2_152", "vgg16", "inception_v3", "--batch-sizes", "1",
                        "--image-size", "96", "--repeats", "1", "--warmup", "0", "--out", str(out / "latency-smoke.json")],
            "runs": ["--dry-run", "--only", "cifar10/resnet20-seed0", "--out", str(out / "runs-dry")],
        }  # fmt: skip
    return {
        "throughput": ["--images", "50000", "--batch-size", "512", "--compile"],
        "time_to_accuracy": ["--eval-on", "val", "--stop-at-target", "--then-test", "--compile"],
        "latency": ["--also", "resnet_v2_152", "vgg16", "inception_v3"],
        "runs": ["--jobs", "4"],
    }


def _run_step(name: str, args: list[str], minutes: float) -> None:
    from benchmarks import latency, throughput, time_to_accuracy
    from scripts import runs

    if name == "throughput":
        throughput.main(args)
    elif name == "time_to_accuracy":
        time_to_accuracy.main([*args, "--max-minutes", f"{minutes:.3f}"])
    elif name == "latency":
        os.environ["RESNET_MODE"] = "full"  # 10 burn-in passes and 100 timed ones, as seed post 003
        latency.main(args)
    elif name == "runs":
        status = runs.main([*args, "--max-minutes", f"{minutes:.3f}"])
        if status:
            raise RuntimeError(f"scripts/runs.py exited with status {status}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=9.0, help="the whole deadline (default 9)")
    parser.add_argument("--out", type=Path, default=None, help="where results go (default: results/)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: a check of the path on a CPU")
    parser.add_argument("--skip", nargs="*", default=[], choices=list(BUDGETS), help="steps to leave out")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error(f"--minutes {args.minutes} must be positive")

    from utils import results
    from utils.files import write_json

    out = args.out or ROOT / "results"
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + 60 * args.minutes
    budgets = SMOKE_BUDGETS if args.smoke else BUDGETS
    summary = results.run_metadata(["benchmarks/gpu_evidence.py", *(sys.argv[1:] if argv is None else argv)])
    summary["steps"] = []
    before = {p: p.stat().st_mtime for p in out.rglob("*.json")}
    for name, step_args in _steps(out, args.smoke).items():
        left = (deadline - time.monotonic()) / 60
        share, least = budgets[name]
        entry = {"step": name, "args": step_args}
        if name in args.skip:
            entry["status"] = "skipped (--skip)"
        elif left < max(least, 0.01):
            entry["status"] = f"skipped: {left:.1f} min left, {least} needed"
        else:
            started = time.monotonic()
            try:
                _run_step(name, step_args, minutes=share * left)
                entry["status"] = "done"
            except (Exception, SystemExit) as error:  # one failing step must not cost the others
                entry["status"] = f"failed: {type(error).__name__}: {error}"
                entry["traceback"] = traceback.format_exc()[-2000:]
            entry["minutes"] = (time.monotonic() - started) / 60
        print(f"== {name}: {entry['status']}", flush=True)
        summary["steps"].append(entry)
    summary["files"] = sorted(
        str(p.relative_to(out)) for p in out.rglob("*.json") if before.get(p) != p.stat().st_mtime
    )
    summary["minutes"] = args.minutes - (deadline - time.monotonic()) / 60
    write_json(out / "evidence-summary.json", summary)
    print(f"evidence-summary.json: {len(summary['files'])} result files written in {summary['minutes']:.1f} min")
    return summary


if __name__ == "__main__":
    report = main()
    sys.exit(1 if any(s["status"].startswith("failed") for s in report["steps"]) else 0)
