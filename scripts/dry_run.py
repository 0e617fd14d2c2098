#!/usr/bin/env python3
"""The full-mode dry run: every page of the book executed in full mode on a CPU, in minutes.

    python scripts/dry_run.py                           # every notebook of the book (`make dry-run`)
    python scripts/dry_run.py book/04_training.ipynb    # one chapter
    python scripts/dry_run.py --jobs 1 --keep out/      # one at a time; keep the executed copies
    python scripts/dry_run.py --if-data                 # as `make test` runs it (see below)

Full mode is what a GPU build publishes, and no GPU has to be at hand to find out whether it
works. This runs every full-mode line here, in two steps:

1. **The runs the pages read.** ``scripts/runs.py --dry-run`` trains the first entries of the
   book's queue (the degradation nets, chapter 4's runs) on the real data, capped at 2 epochs of 2
   batches, each stopped after its first epoch, resumed and finished, into a scratch folder
   (``_build/.dry-run``, kept between calls and remade when the training code changes). The
   rest of the paper's Table 6 stays missing on purpose, so that the pages' "not run yet" path
   runs too.
2. **Every page, in full mode.** Each notebook is executed with ``RESNET_MODE=full``,
   ``RESNET_DRY_RUN=1`` (every ``config.pick(..., dry=...)`` takes its tiny value, and
   ``runs.load_finished`` reads the capped runs) and ``RESNET_RESULTS``/``RESNET_CHECKPOINTS``
   pointing at the scratch folder, so nothing is written into ``results/``.

Full mode needs the real CIFAR-10 and MNIST (``RESNET_DATA``); without them the dry run stops
with a message naming what is missing (exit status 2), or with ``--if-data`` says in one line that
it did not run and exits 0, so that `make test` still works on a machine without the datasets.
Exit status 0 when every page ran to the end; 1, with each failing cell's error, otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

from utils import runs  # noqa: E402
from utils.files import file_lock, write_json  # noqa: E402

WORKDIR = ROOT / "_build" / ".dry-run"
# The part of the `make runs` queue the dry run trains: what chapters 1 and 4 read.
RUN_NAMES = (
    "cifar10/plain20-seed0",
    "cifar10/plain56-seed0",
    "cifar10/resnet20-seed0",
    "cifar10/resnet56-seed0",
    "ch04-resnet18-cifar10",
    "ch04-resnet18-mnist",
)
CELL_TIMEOUT_S = 600


def book_notebooks() -> list[Path]:
    """Every executable page of the book, in book order (the preface and the chapters)."""
    return sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))


def dry_environment(workdir: Path) -> dict[str, str]:
    """The environment of a dry-run kernel: full mode, capped, reading the scratch records."""
    return os.environ | {
        "RESNET_MODE": "full",
        "RESNET_DRY_RUN": "1",
        "RESNET_RESULTS": str(workdir / "results"),
        "RESNET_CHECKPOINTS": str(workdir / "checkpoints"),
    }


def prepare_runs(workdir: Path, names: tuple[str, ...] = RUN_NAMES) -> None:
    """Train the capped runs into ``workdir`` unless they are there for this training code."""
    stamp_path = workdir / "stamp.json"
    stamp = {"code": runs.code_fingerprint(), "runs": list(names)}
    with file_lock(workdir.with_name(workdir.name + ".lock")):
        if stamp_path.exists() and json.loads(stamp_path.read_text(encoding="utf-8")) == stamp:
            print(f"capped runs: reusing the {len(names)} made for this training code")
            return
        shutil.rmtree(workdir, ignore_errors=True)
        started = time.monotonic()
        command = [sys.executable, str(ROOT / "scripts" / "runs.py"), "--dry-run", "--only", ",".join(names),
                   "--out", str(workdir / "results")]  # fmt: skip
        # The checkpoints go where the pages will look for them: RESNET_CHECKPOINTS/runs and /cifar10.
        env = dry_environment(workdir) | {"RESNET_DRY_RUN": "0"}
        completed = subprocess.run(command, cwd=ROOT, env=env)
        if completed.returncode != 0:
            raise SystemExit(f"the capped runs failed (exit status {completed.returncode}): {' '.join(command)}")
        write_json(stamp_path, stamp)
        print(f"capped runs: {len(names)} trained, stopped, resumed and finished in {time.monotonic() - started:.0f} s")


def _execute_command(notebook: Path, out_dir: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--execute-one", str(notebook), str(out_dir)]


def execute_one(notebook: Path, out_dir: Path) -> None:
    """Execute one notebook (in its own folder, as the book build does) and save the executed copy.

    Raises nbclient's CellExecutionError (which names the cell and shows its traceback) when a
    cell fails; cells tagged ``raises-exception`` may fail, as in the book build and nbval.
    """
    import nbclient
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(notebook.parent)}})  # fmt: skip
    try:
        client.execute()
    finally:
        nbformat.write(nb, out_dir / notebook.name)


def _failure(stderr: str) -> str:
    """The part of the executor's error output that says which cell failed and why."""
    lines = [line for line in stderr.splitlines() if line.strip() and "Kernel is running over TCP" not in line]
    for marker in ("CellExecutionError", "CellTimeoutError", "DeadKernelError"):
        hits = [i for i, line in enumerate(lines) if marker in line]
        if hits:
            return "\n".join(lines[hits[0] :][-25:])
    return "\n".join(lines[-15:])


def execute(notebooks: list[Path], workdir: Path, jobs: int, keep: Path | None) -> list[tuple[str, float, str]]:
    """Execute each notebook in full dry-run mode, ``jobs`` at a time: [(name, seconds, problem)]."""
    env = dry_environment(workdir)
    if jobs > 1:
        env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")  # the kernels share the cores
    with tempfile.TemporaryDirectory(prefix="dry-run-pages-") as scratch:
        out_dir = keep or Path(scratch)
        waiting, running, results = list(notebooks), [], []
        while waiting or running:
            while waiting and len(running) < jobs:
                notebook = waiting.pop(0)
                process = subprocess.Popen(_execute_command(notebook, out_dir), cwd=notebook.parent, env=env,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
                running.append((notebook, process, time.monotonic(), process_reader(process)))
            time.sleep(0.2)
            for entry in [r for r in running if r[1].poll() is not None]:
                running.remove(entry)
                notebook, process, started, reader = entry
                stderr = reader()
                problem = "" if process.returncode == 0 else _failure(stderr) or f"exit status {process.returncode}"
                results.append((notebook.name, time.monotonic() - started, problem))
                print(f"{notebook.name:32s} {time.monotonic() - started:6.0f} s  {'ok' if not problem else 'FAILED'}",
                      flush=True)  # fmt: skip
    return sorted(results)


def process_reader(process: subprocess.Popen):
    """Drain a child's stderr in a thread (a full pipe would stall it); call the result for the text."""
    import threading

    chunks: list[str] = []
    thread = threading.Thread(target=lambda: chunks.append(process.stderr.read()), daemon=True)
    thread.start()

    def text() -> str:
        thread.join()
        return "".join(chunks)

    return text


def _missing_datasets() -> list[str]:
    from utils import config, data

    copies = data.local_copies(config.data_dir())
    return [name for key, name in (("cifar10", "CIFAR-10"), ("mnist", "MNIST")) if not copies[key]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every page of the book")
    parser.add_argument("--jobs", type=int, default=2, help="notebooks executed at once (default 2)")
    parser.add_argument("--workdir", type=Path, default=WORKDIR, help="scratch folder for the capped runs")
    parser.add_argument("--keep", type=Path, default=None, help="write the executed notebooks to this folder")
    parser.add_argument("--skip-runs", action="store_true", help="do not train the capped runs (pages only)")
    parser.add_argument("--execute-one", nargs=2, type=Path, metavar=("NOTEBOOK", "OUT_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--if-data", action="store_true", help="without CIFAR-10 and MNIST: say so, exit 0")
    args = parser.parse_args(argv)
    if args.execute_one:  # the child process of one page (see execute)
        execute_one(*args.execute_one)
        return 0
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: expected a positive number of notebooks at once")
    notebooks = [path.resolve() for path in args.notebooks] or book_notebooks()
    missing = [str(path) for path in notebooks if path.suffix != ".ipynb" or not path.is_file()]
    if missing:
        parser.error(f"not a notebook file: {', '.join(missing)}")
    missing_data = _missing_datasets()
    if missing_data:
        message = (f"full-mode dry run NOT RUN: full mode needs the real {' and '.join(missing_data)} in RESNET_DATA "
                   "(see README.md, Data)")  # fmt: skip
        print(message)
        return 0 if args.if_data else 2
    workdir = args.workdir.resolve()
    started = time.monotonic()
    if not args.skip_runs:
        prepare_runs(workdir)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    results = execute(notebooks, workdir, args.jobs, args.keep)
    failed = [(name, problem) for name, _, problem in results if problem]
    for name, problem in failed:
        print(f"\n{name} failed in the full-mode dry run:\n{problem}")
    print(f"dry run: {len(results) - len(failed)} of {len(results)} pages ran in full mode "
          f"({time.monotonic() - started:.0f} s)")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
