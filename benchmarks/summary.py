"""The measured figures under ``results/``, as the Markdown tables the README shows.

Every number in the README's "Measured so far" section comes from here, so prose never
drifts from the JSON files that the benchmark scripts wrote:

    python benchmarks/summary.py                 # print the tables
    python benchmarks/summary.py --write README.md   # replace the block between the markers
    python benchmarks/summary.py --check README.md   # exit 1 if that block is out of date (a test runs this)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from utils import files

BEGIN = "<!-- results-summary: begin (written by benchmarks/summary.py; do not edit by hand) -->"
END = "<!-- results-summary: end -->"
REPRODUCTION_RUNS = 18  # 9 nets x 2 seeds, see results/README.md


class ResultError(ValueError):
    """A result file that is not what its benchmark script writes."""


def _load(path: Path, required: tuple[str, ...]) -> dict:
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ResultError(f"{path}: not valid JSON ({error})") from None
    missing = [key for key in ("command", "commit", "device", *required) if key not in record]
    if missing:
        raise ResultError(f"{path}: missing field(s) {', '.join(missing)}; expected a file written by benchmarks/")
    return record


def _commit(record: dict) -> str:
    commit = record["commit"] or "unknown"
    return commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def throughput_rows(root: Path) -> list[list[str]]:
    rows = []
    for path in sorted(root.glob("throughput-*.json")):
        r = _load(path, ("model", "images", "batch_size", "classic", "fast", "speedup"))
        mfu = f"{100 * r['fast']['mfu']:.1f} %" if "mfu" in r["fast"] else "n/a (CPU)"
        rows.append([r["device"], r["model"], f"{r['images']:,}", str(r["batch_size"]),
                     f"{r['classic']['images_per_s']:,.1f}", f"{r['fast']['images_per_s']:,.1f}",
                     f"**{r['speedup']:.2f}x**", mfu, f"`{r['command']}` @ {_commit(r)}"])  # fmt: skip
    return rows


def accuracy_rows(root: Path) -> list[list[str]]:
    rows = []
    for path in sorted([*root.glob("time-to-accuracy-*.json"), *root.glob("recipe-val-*.json")]):
        r = _load(path, ("target", "reached", "seconds_to_target", "total_seconds", "train_images", "recipe"))
        split = r.get("evaluated_on", "test")
        best = r.get(f"best_{split}_acc")
        reached = (f"**{r['seconds_to_target']:.0f} s** (epoch {r['epoch_reached']})" if r["reached"]
                   else f"not reached in {r['total_seconds']:.0f} s")  # fmt: skip
        rows.append([r["device"], f"{r['train_images']:,} / {r.get(f'{split}_images', 0):,} {split}",
                     str(r["recipe"]["epochs"]), f"{r['target']:.0%} {split}", reached,
                     f"{best:.2%}" if best is not None else "?", f"`{r['command']}` @ {_commit(r)}"])  # fmt: skip
    return rows


LATENCY_DEPTHS = (18, 34, 50, 101, 152)


def latency_rows(root: Path) -> list[list[str]]:
    """One row per file, batch size and precision; one column per depth."""
    rows = []
    for path in sorted(root.glob("latency-*.json")):
        r = _load(path, ("measurements", "image_size", "threads"))
        mean_ms: dict[tuple[int, str], dict[int, float]] = {}
        for m in r["measurements"]:
            mean_ms.setdefault((m["batch_size"], m["precision"]), {})[m["depth"]] = m["mean_ms"]
        for (batch, precision), by_depth in sorted(mean_ms.items()):
            times = [f"{by_depth[d]:,.1f}" if d in by_depth else "" for d in LATENCY_DEPTHS]
            rows.append([r["device"], str(r["threads"]), f"{r['image_size']}", str(batch), precision, *times,
                         f"`{r['command']}` @ {_commit(r)}"])  # fmt: skip
    return rows


def reproduction_line(root: Path) -> str:
    done = 0
    for path in sorted((root / "cifar10").glob("*.json")):
        record = _load(path, ("net", "seed", "done"))
        done += bool(record["done"])
    return f"The paper's CIFAR-10 experiment (`make reproduce`): {done} of {REPRODUCTION_RUNS} runs finished."


def render(root: str | Path = "results") -> str:
    """All tables, as Markdown; a section with no result file says so instead of showing an empty table."""
    root = Path(root)
    if not root.is_dir():
        raise ResultError(f"results folder {root} does not exist")
    parts = []
    sections = [
        ("Training throughput, classic `DataLoader` loop vs fast path (`benchmarks/throughput.py`)",
         ["device", "model", "images", "batch", "classic img/s", "fast img/s", "ratio", "MFU (fast)", "command @ commit"],
         throughput_rows(root)),
        ("Time to accuracy, ResNet-18 (`benchmarks/time_to_accuracy.py`)",
         ["device", "train / eval images", "epochs", "target", "time to target", "best", "command @ commit"],
         accuracy_rows(root)),
        ("Forward latency, mean ms per batch (`benchmarks/latency.py`)",
         ["device", "threads", "image", "batch", "precision", *(f"ResNet-{d}" for d in LATENCY_DEPTHS), "command @ commit"],
         latency_rows(root)),
    ]  # fmt: skip
    for title, header, rows in sections:
        parts.append(f"**{title}**\n")
        parts.append("\n".join(_table(header, rows)) if rows else "No result file yet.")
        parts.append("")
    parts.append(reproduction_line(root))
    return "\n".join(parts).rstrip() + "\n"


def replace_block(text: str, block: str, name: str = "README") -> str:
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ResultError(f"{name} must contain the marker lines once each, in order:\n{BEGIN}\n{END}")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{block}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results", help="folder of result files (default: results)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", metavar="FILE", help="replace the marked block of FILE with the tables")
    action.add_argument("--check", metavar="FILE", help="exit 1 if the marked block of FILE differs from the tables")
    args = parser.parse_args(argv)

    block = render(args.results)
    target = args.write or args.check
    if target is None:
        print(block, end="")
        return 0
    text = Path(target).read_text()
    updated = replace_block(text, block, target)
    if args.check:
        if updated != text:
            print(f"{target}: the results summary is out of date; run: python benchmarks/summary.py --write {target}")
            return 1
        print(f"{target}: the results summary matches {args.results}/")
        return 0
    if updated != text:  # atomically: never a half-written README
        files.write_text(target, updated)
    print(f"{target}: results summary written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
