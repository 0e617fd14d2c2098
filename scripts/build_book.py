#!/usr/bin/env python3
"""Build the book: execute every notebook in one mode and render the HTML, warnings as errors.

    python scripts/build_book.py --mode quick          # what `make book` runs
    python scripts/build_book.py --mode full --jobs 1  # on a GPU machine: one notebook at a time
    python scripts/build_book.py --mode quick --force  # re-execute every notebook
    python scripts/build_book.py --edition instructor  # `make instructor-book`: solutions and answer keys
    python scripts/build_book.py --out _build/test/html  # `make test`: never touches the published book

Why a script rather than a bare `jupyter-book build .`:

- Each mode and each set of data gets its own execution cache, `_build/.jupyter_cache/<mode>/<data>`
  (`<data>` names the datasets that had a local copy, e.g. `cifar10+mnist` or `no-local-data`, and a
  digest of the data folder). jupyter-cache keys a notebook by its code alone, not by environment
  variables or files, so a shared cache would let a full build reuse quick-mode outputs, or a build
  without data reuse (or spoil) pages executed on CIFAR-10. A cache is emptied when the code the
  notebooks import (utils/, the pins, the committed results) changes, which jupyter-cache would not
  notice either; switching the data back and forth keeps both caches.
- The book is built into a staging folder (`_build/.staging/`) and published to its folder
  (`--out`, default `_build/html`; the instructor edition `_build/instructor/html`) only when the
  build succeeded and no page shows a traceback: a failed build leaves the last good book in place.
  `make test` builds into `_build/test/html`, so it never replaces the book that `make book` built.
  Each published folder holds `build-info.json`: the mode, the edition, the data each page was
  executed with, and which pages ran on the offline fallback.
- `--edition public` (the default) leaves out the solutions and answer keys (scripts/book_edition.py);
  `--edition instructor` keeps them.
- RESNET_MODE is set for the kernels.
- With --jobs > 1 the notebooks are first executed in parallel into that cache (jupyter-cache's
  local-parallel worker, as `jcache project execute --executor local-parallel` does; Sphinx itself
  executes serially), then the book is built in cache mode. A notebook that failed there is executed
  again by the build itself, so the build, never the pre-execution, decides success.
- The build always starts from a fresh Sphinx environment (`--all`), so every page is read and every
  warning is raised again on every build: with `-W`, an incremental build would hide the warnings
  of pages it did not re-read.
- It prints a table of per-notebook execution times and checks that MathJax was copied into the book.

Exit status: 0 when the book built without a warning, non-zero otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

if __package__ in (None, ""):  # run as `python scripts/build_book.py`: make `scripts` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils import files  # the course package, installed in the venv (`pip install -e .`)

ROOT = Path(__file__).resolve().parents[1]
BUILD_DIR = ROOT / "_build"
HTML_DIR = BUILD_DIR / "html"  # the published public book (`make book`)
CACHE_ROOT = BUILD_DIR / ".jupyter_cache"
GENERATED_DIR = BUILD_DIR / ".generated"
STAGING_DIR = BUILD_DIR / ".staging"
MODES = ("quick", "full")
EDITIONS = ("public", "instructor")
DEFAULT_OUT = {"public": HTML_DIR, "instructor": BUILD_DIR / "instructor" / "html"}
BUILD_INFO = "build-info.json"
RESERVED = (CACHE_ROOT.name, GENERATED_DIR.name, STAGING_DIR.name, "jupyter_execute", ".doctrees")
# A page that shows one of these published a failure, not the chapter: the build refuses to publish it.
# myst-nb renders an error output as <div class="output traceback ...">; a printed one has Python's header.
TRACEBACK_MARKERS = (re.compile(r'class="[^"]*\boutput traceback\b'), re.compile(r"Traceback \(most recent call last\)"))
# What utils.data prints (once per dataset) when quick mode falls back on the embedded digits.
FALLBACK_MARKER = re.compile(r"NOTE: ([\w-]+) is not available here .{0,300}?embedded FALLBACK", re.DOTALL)

# Inputs of the notebooks that jupyter-cache does not see (code, pins, committed results); a change to any of them
# empties the cache. Only committed source files: what a build or a test run leaves behind (__pycache__,
# .pytest_cache, a decoded data cache, lock files) must not make the next build re-execute every notebook.
CODE_INPUTS = ("utils/*.py", "pyproject.toml", "requirements.txt", "results/**/*.json")


def log(message: str = "") -> None:
    print(message, flush=True)


def load_config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8")) or {}


def toc_entries() -> list[str]:
    """Every page _toc.yml lists (root, chapters, sections, parts), in book order, as written there."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    entries = [toc["root"]]

    def walk(items):
        for item in items or []:
            if "file" in item:
                entries.append(item["file"])
            walk(item.get("sections"))
            walk(item.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts") or []:
        walk(part.get("chapters"))
    return entries


def toc_notebooks() -> list[Path]:
    """The executable pages of the book (.ipynb files listed in _toc.yml), in book order."""
    notebooks = []
    for entry in toc_entries():
        path = ROOT / entry
        path = path if path.suffix else path.with_suffix(".ipynb")
        if path.suffix == ".ipynb" and path.exists():
            notebooks.append(path)
    return notebooks


def data_signature() -> dict:
    """Where the notebooks will look for data, and which datasets have a copy there.

    Only whether a copy is there counts (``utils.data.local_copies``), not the files: the notebooks
    themselves add a decoded cache, extract mnist.tgz or leave an empty MNIST/ folder after a failed
    download, and none of that may change the fingerprint of the next build.
    """
    from utils import config, data  # the course package, installed in the venv (`pip install -e .`)

    folder = Path(os.environ.get(config.DATA_VARIABLE) or config.DEFAULT_DATA_DIR).expanduser().resolve()
    return {"RESNET_DATA": str(folder), **data.local_copies(folder)}


def fingerprint(mode: str) -> str:
    """A digest of everything the notebooks' outputs depend on that jupyter-cache does not see."""
    digest = hashlib.sha256()
    for pattern in CODE_INPUTS:
        for path in sorted(ROOT.glob(pattern)):
            digest.update(path.relative_to(ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    digest.update(json.dumps({"mode": mode, "python": sys.version, **data_signature()}, sort_keys=True).encode())
    return digest.hexdigest()


def data_key() -> str:
    """The name of the data the notebooks will see: which datasets have a local copy, and a digest of
    where, e.g. ``cifar10+mnist-1a2b3c4d`` or ``no-local-data-5e6f7a8b``."""
    signature = data_signature()
    found = [name for name in ("cifar10", "mnist") if signature.get(name)]
    digest = hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:8]
    return f"{'+'.join(found) or 'no-local-data'}-{digest}"


def prepare_cache(mode: str, force: bool) -> Path:
    """The cache folder of this mode and this data, emptied first if --force or if the code changed."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    cache_dir = CACHE_ROOT / mode / data_key()
    stamp = cache_dir.parent / f"{cache_dir.name}.fingerprint"
    current = fingerprint(mode)
    reason = None
    if force:
        reason = "--force"
    elif cache_dir.exists() and (not stamp.exists() or stamp.read_text().strip() != current):
        reason = "utils/, the pins or the committed results changed since it was filled"
    if reason and cache_dir.exists():
        log(f"Emptying the {mode} execution cache for this data ({cache_dir.name}: {reason}).")
        shutil.rmtree(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    files.write_text(stamp, current + "\n")  # atomically: a half-written stamp would empty the cache next time
    return cache_dir


def write_config(config: dict, cache_dir: Path, mode: str, edition: str = "public") -> Path:
    """_config.yml with this mode's cache and this edition: the file the build actually uses."""
    if edition not in EDITIONS:
        raise ValueError(f"edition {edition!r}: expected one of {', '.join(EDITIONS)}")
    config = json.loads(json.dumps(config))  # deep copy
    execute = config.setdefault("execute", {})
    execute["execute_notebooks"] = "cache"
    execute["cache"] = str(cache_dir)
    sphinx = config.setdefault("sphinx", {})
    sphinx.setdefault("config", {})["course_edition"] = edition
    # Paths of local extensions are relative to the config file: this one lives in _build/.generated.
    local = sphinx.get("local_extensions") or {}
    sphinx["local_extensions"] = {name: str((ROOT / folder).resolve()) for name, folder in local.items()}
    path = GENERATED_DIR / f"_config.{mode}.{edition}.yml"
    files.write_text(
        path,
        f"# Generated by scripts/build_book.py from _config.yml for RESNET_MODE={mode}, the {edition} edition; "
        "do not edit.\n" + yaml.safe_dump(config, sort_keys=False),
    )
    return path


def page_problems(html_dir: Path) -> dict[str, str]:
    """{page: what is wrong} for every built page that shows a traceback instead of its chapter."""
    problems = {}
    for page in sorted(Path(html_dir).rglob("*.html")):
        if "_static" in page.relative_to(html_dir).parts:
            continue
        text = page.read_text(encoding="utf-8", errors="replace")
        if any(marker.search(text) for marker in TRACEBACK_MARKERS):
            problems[page.relative_to(html_dir).as_posix()] = "shows a traceback (a cell failed)"
    return problems


def edition_problems(html_dir: Path, notebooks: list[Path]) -> dict[str, str]:
    """{page: what leaked} for every public page that shows a solution body or an answer key
    (scripts/book_edition.py), and every downloadable source that is not the student copy."""
    import nbformat

    from scripts import book_edition, notebook_tags

    problems = {}
    for path in notebooks:
        relative = path.relative_to(ROOT)
        page = Path(html_dir) / relative.with_suffix(".html")
        if not page.exists():
            continue
        found = book_edition.leaks(notebook_tags.read_notebook(path), page.read_text(encoding="utf-8"))
        if found:
            what, passage = found[0]
            problems[relative.with_suffix(".html").as_posix()] = (
                f"shows {len(found)} passage(s) of solutions or answer keys, e.g. the {what}: {passage[:80]!r}"
            )
        for source in (Path(html_dir) / "_sources" / relative.parent).glob(f"{path.name}*"):
            meta = nbformat.read(str(source), as_version=4).metadata.get(notebook_tags.METADATA_KEY) or {}
            if meta.get("copy") != "exercises":
                problems[source.relative_to(html_dir).as_posix()] = "is the instructor's notebook, not the student copy"
    return problems


def fallback_pages(html_dir: Path) -> dict[str, list[str]]:
    """{page: [datasets it replaced with the offline digits]} from the note utils.data prints."""
    pages = {}
    for page in sorted(Path(html_dir).rglob("*.html")):
        if "_static" in page.relative_to(html_dir).parts:
            continue
        found = sorted(set(FALLBACK_MARKER.findall(page.read_text(encoding="utf-8", errors="replace"))))
        if found:
            pages[page.relative_to(html_dir).as_posix()] = found
    return pages


def publish(staged: Path, out: Path) -> None:
    """Replace the folder ``out`` by ``staged`` (on the same file system): a rename, so a reader of
    ``out`` sees the old book or the new one, never a half-written one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.with_name(f".{out.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    staged.rename(out)
    if old.exists():
        shutil.rmtree(old)


def _execute_one(task: tuple[str, int, int, bool]) -> tuple[bool, int, float]:
    """Run in a worker process: execute one notebook of the project into the cache.

    Uses jupyter-cache's public executor API (``load_executor``, ``run_and_cache``), one
    serial executor per worker, so that ``--jobs`` notebooks run side by side.
    """
    from jupyter_cache import get_cache
    from jupyter_cache.executors import load_executor

    cache_dir, pk, timeout, allow_errors = task
    start = time.perf_counter()
    executor = load_executor("local-serial", cache=get_cache(cache_dir))
    result = executor.run_and_cache(filter_pks=[pk], timeout=timeout, allow_errors=allow_errors)
    return bool(result.succeeded), pk, time.perf_counter() - start


def pre_execute(cache_dir: Path, notebooks: list[Path], jobs: int, execute: dict) -> dict[str, str]:
    """Execute the notebooks that the cache lacks, `jobs` at a time. Returns {path: traceback} of failures."""
    from jupyter_cache import get_cache

    cache = get_cache(str(cache_dir))
    todo, uris = [], {}
    for path in notebooks:
        record = cache.add_nb_to_project(str(path))
        if cache.get_cached_project_nb(record.pk) is None:
            uris[record.pk] = record.uri
            todo.append((str(cache_dir), record.pk, execute.get("timeout", 30), execute.get("allow_errors", False)))
    if not todo:
        log("Every notebook is already in the cache.")
        return {}
    log(f"Executing {len(todo)} notebook(s), {jobs} at a time...")
    saved_threads = os.environ.get("OMP_NUM_THREADS")
    if saved_threads is None:
        # Kernels running side by side should not each start one thread per core.
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    failures = {}
    try:
        with multiprocessing.get_context("fork").Pool(processes=jobs, maxtasksperchild=1) as pool:
            for succeeded, pk, seconds in pool.imap_unordered(_execute_one, todo):
                name = Path(uris[pk]).relative_to(ROOT)
                if succeeded:
                    log(f"  ok      {name} ({seconds:.1f} s)")
                else:
                    failures[str(name)] = cache.get_project_record(pk).traceback or "(no traceback recorded)"
                    log(f"  FAILED  {name} ({seconds:.1f} s)")
    finally:
        if saved_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
    return failures


def cached_records(cache_dir: Path) -> dict[int, object]:
    from jupyter_cache import get_cache

    return {record.pk: record for record in get_cache(str(cache_dir)).list_cache_records()}


def timing_table(cache_dir: Path, notebooks: list[Path], before: set[int]) -> tuple[str, float]:
    import nbformat
    from jupyter_cache import get_cache

    cache = get_cache(str(cache_dir))
    rows = [("notebook", "seconds", "source")]
    executed_now = 0.0
    for path in notebooks:
        try:
            record = cache.match_cache_notebook(nbformat.read(path, as_version=4))
        except KeyError:
            rows.append((str(path.relative_to(ROOT)), "-", "FAILED (not in cache)"))
            continue
        seconds = record.data.get("execution_seconds")
        fresh = record.pk not in before
        if fresh and seconds is not None:
            executed_now += seconds
        source = "executed in this build" if fresh else f"cache (executed {record.created:%Y-%m-%d %H:%M})"
        rows.append((str(path.relative_to(ROOT)), "-" if seconds is None else f"{seconds:.1f}", source))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]}" for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines), executed_now


def jupyter_book_command() -> list[str]:
    beside_python = Path(sys.executable).parent / "jupyter-book"
    if beside_python.exists():
        return [str(beside_python)]
    found = shutil.which("jupyter-book")
    if found:
        return [found]
    raise SystemExit("jupyter-book is not installed: run `make venv` (or `pip install -r requirements.txt`).")


def main(argv: list[str] | None = None) -> int:
    from utils import config  # the course package, installed in the venv (`pip install -e .`)

    parser = argparse.ArgumentParser(description="Build the book in one mode (see the module docstring).")
    # RESNET_MODE as the kernels will read it (lower-cased, validated): one cache folder per mode.
    parser.add_argument("--mode", choices=MODES, default=config.mode())
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="notebooks executed at once before the build (1: let the build execute them one by one)",
    )
    parser.add_argument("--force", action="store_true", help="empty this mode's cache: re-execute every notebook")
    parser.add_argument(
        "--edition", choices=EDITIONS, default="public",
        help="public: no solutions, no answer keys (default); instructor: the book as written",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=None,
        help="folder the HTML book is published to (default: _build/html; _build/instructor/html for the instructor edition)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: expected a whole number of notebooks, 1 or more")
    out = (args.out if args.out is not None else DEFAULT_OUT[args.edition]).resolve()
    if BUILD_DIR not in out.parents or out.relative_to(BUILD_DIR).parts[0] in RESERVED:
        parser.error(
            f"--out {out}: expected a new folder inside {BUILD_DIR} (it is replaced as a whole), "
            f"not {BUILD_DIR} itself nor one of its own folders ({', '.join(RESERVED)})"
        )

    started = time.perf_counter()
    os.chdir(ROOT)
    os.environ["RESNET_MODE"] = args.mode  # read by utils.config in every kernel
    config = load_config()
    notebooks = toc_notebooks()
    cache_dir = prepare_cache(args.mode, args.force)
    config_path = write_config(config, cache_dir, args.mode, args.edition)
    before = set(cached_records(cache_dir))
    log(f"Building the {args.edition} edition of the book in {args.mode} mode; execution cache: {cache_dir.relative_to(ROOT)}")
    log(f"Data: {json.dumps(data_signature())}")
    # Sphinx writes into a fresh staging folder; the book is published from there only if all went well.
    staging = STAGING_DIR / hashlib.sha256(str(out).encode()).hexdigest()[:12]
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    staged_html = staging / "_build" / "html"

    failures = {}
    if args.jobs > 1:
        failures = pre_execute(cache_dir, notebooks, args.jobs, config.get("execute", {}))
        for name, trace in failures.items():
            log(f"\n===== {name} failed during execution =====\n{trace}")

    command = jupyter_book_command() + [
        "build", str(ROOT), "--builder", "html", "--config", str(config_path), "--toc", str(ROOT / "_toc.yml"),
        "--path-output", str(staging), "--all", "-W", "-n", "--keep-going",
    ]  # fmt: skip
    log("$ " + " ".join(command))
    status = subprocess.run(command, cwd=ROOT).returncode

    table, executed_seconds = timing_table(cache_dir, notebooks, before)
    elapsed = time.perf_counter() - started
    log(f"\nExecution time per notebook ({args.mode} mode; seconds are each notebook's own run):")
    log(table)
    log(f"Notebooks executed in this build: {executed_seconds:.0f} s of kernel time; whole build: {elapsed:.0f} s wall time.")

    problems = []
    if status != 0:
        problems.append(f"jupyter-book exited with status {status} (warnings count as errors): see the log above")
    index = staged_html / "index.html"
    if not index.exists():
        problems.append(f"{index.relative_to(ROOT)} was not written")
    mathjax = staged_html / "_static" / "mathjax" / "tex-chtml.js"
    if status == 0 and not mathjax.exists():
        problems.append(f"MathJax was not copied into the book ({mathjax.relative_to(ROOT)} is missing): math would not render offline")
    if staged_html.exists():
        problems += [f"{page} {what}" for page, what in page_problems(staged_html).items()]
        if args.edition == "public":
            problems += [f"{page} {what}" for page, what in edition_problems(staged_html, notebooks).items()]
    if problems:
        kept = f"{out.relative_to(ROOT)} is left as it was" if out.exists() else f"nothing was published to {out.relative_to(ROOT)}"
        log("\nBUILD FAILED (" + kept + f"; the failed build is in {staging.relative_to(ROOT)}):\n- " + "\n- ".join(problems))
        return 1
    fallback = fallback_pages(staged_html)
    info = {
        "mode": args.mode,
        "edition": args.edition,
        # Which datasets had a local copy (never the folder: the file is published with the book).
        "data": {name: present for name, present in data_signature().items() if name != "RESNET_DATA"},
        "execution_cache": cache_dir.name,
        "fallback_pages": fallback,
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    files.write_text(staged_html / BUILD_INFO, json.dumps(info, indent=2) + "\n")
    publish(staged_html, out)
    shutil.rmtree(staging, ignore_errors=True)
    if fallback:
        log(f"Pages executed on the offline digits fallback, not the real data: {', '.join(fallback)}")
    log(f"\nThe {args.edition} edition is at {(out / 'index.html').relative_to(ROOT)} (file://{out / 'index.html'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
