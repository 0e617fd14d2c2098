"""Files the course writes: never half-written, never written by two processes at once.

``atomic_write``
    A context manager that hands out a temporary file beside the target and renames it over
    the target only when the block finishes without an error: readers see the old file or the
    new one, never a half-written one, and an interrupted write leaves nothing behind.
``write_text`` / ``write_json`` / ``read_json``
    Text and indented JSON, written atomically.
``file_lock``
    An exclusive advisory lock (``fcntl.flock``) on a lock file, for work that two processes may
    start at the same time: two notebooks decoding CIFAR-10 into the same cache, ``pytest -n 2``,
    several ranks under ``torchrun``. Where the OS has no ``fcntl`` (Windows), it does nothing.
``repo_root`` / ``repo_file`` / ``repo_files``
    The one locator of what the repository commits (``results/...``, ``book/figures/...``),
    so that notebooks never search for ``../results`` on their own. It works the same in a
    checkout (an editable install: the folder above ``utils/``), in the rendered book (built
    from a checkout) and in Colab, where the notebook's first cell clones the repository and
    names the clone in ``RESNET_REPO`` (there ``utils`` is a plain install in site-packages,
    with no repository beside it).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "atomic_write",
    "write_text",
    "write_json",
    "read_json",
    "file_lock",
    "repo_root",
    "repo_file",
    "repo_files",
]

REPO_VARIABLE = "RESNET_REPO"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success rename it to ``path``.

    ``mode`` is ``"wb"`` (default) or ``"w"`` (text, UTF-8 unless ``encoding`` says otherwise).
    The parent folder is created. On any exception the temporary file is removed and
    ``path`` keeps its old content (or stays absent). The new file gets the permissions of the
    file it replaces, or those a plain ``open`` would give a new file (not ``mkstemp``'s 0600,
    which would hide a shared data cache from other users).

    >>> with atomic_write("/tmp/example.txt", "w") as f:
    ...     _ = f.write("all or nothing")
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode={mode!r}; expected 'wb' (bytes) or 'w' (text)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode == "w":
            stream = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline="")
        else:
            stream = os.fdopen(fd, "wb")
        with stream:
            os.chmod(tmp, _permissions_for(path))
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _permissions_for(path: Path) -> int:
    """The mode bits of the file ``path`` if it exists, else what ``open`` would create under the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0o022)  # the only portable way to read the umask is to set it and put it back
        os.umask(umask)
        return 0o666 & ~umask


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically; return the path."""
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, payload: object) -> Path:
    """Write ``payload`` as indented JSON (with a final newline), atomically; return the path."""
    with atomic_write(path, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
    return Path(path)


def read_json(path: str | os.PathLike) -> dict:
    """The JSON document in ``path``."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, timeout: float | None = None) -> Iterator[Path]:
    """Hold an exclusive lock on the file ``path`` (created if missing) for the ``with`` block.

    Blocks until the lock is free; with ``timeout`` (seconds), raises ``TimeoutError`` naming
    the lock file once that has passed. The lock is released when the block ends, also when the
    process dies (the OS drops ``flock`` locks with the file descriptor).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, run unlocked
        yield path
        return
    with open(path, "a+b") as handle:
        started = time.monotonic()
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if timeout is not None and time.monotonic() - started >= timeout:
                    raise TimeoutError(
                        f"could not lock {path} within {timeout:g} s: another process holds it "
                        "(if none is running, delete the file)"
                    ) from None
                time.sleep(0.05)
        try:
            yield path
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# What a reader sees when no repository is known: in Colab the first cell was skipped (or the
# session restarted after it ran, which forgets the environment variable it set).
_NO_REPOSITORY_HINT = (
    f"set {REPO_VARIABLE} to a checkout of the course; in Colab, run the notebook's first cell "
    "(the Colab setup), which clones the repository and sets it"
)


def repo_root() -> Path | None:
    """The repository whose committed files the chapters read, or None where none is known.

    ``RESNET_REPO`` names it explicitly (the Colab setup cell sets it to its clone); otherwise
    the folder above ``utils/`` counts when it holds ``_toc.yml`` (an editable install or a
    clone on ``sys.path``). A plain install in site-packages without the variable has none.
    """
    named = os.environ.get(REPO_VARIABLE)
    if named:
        root = Path(named).expanduser().resolve()
        if not (root / "_toc.yml").is_file():
            raise ValueError(f"{REPO_VARIABLE}={named!r} is not a checkout of the course (no _toc.yml there)")
        return root
    here = Path(__file__).resolve().parent.parent
    return here if (here / "_toc.yml").is_file() else None


def _relative_inside(relative: str | os.PathLike, example: str) -> Path:
    relative = Path(relative)
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"{str(relative)!r} must be a path inside the repository, e.g. {example!r}")
    return relative


def _required_root(relative: Path) -> Path:
    root = repo_root()
    if root is None:
        raise FileNotFoundError(
            f"{relative} is in the course repository, and this installation of `utils` has none; "
            + _NO_REPOSITORY_HINT
        )
    return root


def repo_file(relative: str | os.PathLike) -> Path:
    """The committed file (or folder) ``relative``, e.g. ``"results/latency-cpu.json"``.

    Raises ``FileNotFoundError`` naming the file and where it was looked for.
    """
    relative = _relative_inside(relative, "results/latency-cpu.json")
    root = _required_root(relative)
    path = root / relative
    if not path.exists():
        raise FileNotFoundError(f"{relative} is not in the repository at {root}")
    return path


def repo_files(pattern: str) -> list[Path]:
    """The committed files matching the glob ``pattern`` (e.g. ``"results/latency-*.json"``), sorted.

    An empty list when none matches (a result not measured yet); like ``repo_file``, it raises
    ``FileNotFoundError`` when no repository is known at all, so that a missing clone is never
    mistaken for a missing measurement.
    """
    if not str(pattern).strip(" ./"):
        raise ValueError(f"pattern={pattern!r}; expected a glob inside the repository, e.g. 'results/latency-*.json'")
    relative = _relative_inside(pattern, "results/latency-*.json")
    root = _required_root(relative)
    return sorted(path for path in root.glob(str(relative)) if path.is_file())
