"""The course's two settings: the scale of every experiment, and where data lives.

Both come from environment variables so that one notebook serves a laptop, CI,
Colab and a GPU server unchanged:

``RESNET_MODE``
    ``quick`` (default): a small class-balanced subset and a few epochs, so a
    chapter runs in a minute or two on a CPU. ``full``: the real experiment,
    meant for a GPU.
``RESNET_DATA``
    The data directory (default ``~/.cache/resnet-course``). Put a copy of
    CIFAR-10 there (see ``utils.data``); decoded caches are written there too.
``RESNET_RESULTS``, ``RESNET_CHECKPOINTS``
    Other folders for the full-scale run records (default: the repository's
    ``results/``) and their checkpoints (default: ``checkpoints/`` in the data
    directory). The dry run points both at a temporary folder.
``RESNET_DRY_RUN``
    ``1`` in full mode: the CI check that every full-mode line runs. Each
    compute-heavy full-mode value a chapter picks with ``pick(..., dry=...)``
    takes its tiny ``dry`` value instead; book runs are capped by ``scripts/runs.py
    --dry-run`` and read from a temporary ``RESNET_RESULTS`` folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

__all__ = [
    "MODES", "mode", "is_quick", "is_dry_run", "pick", "data_dir", "checkpoint_dir", "results_root",
    "describe", "banner",
]

MODES = ("quick", "full")
MODE_VARIABLE = "RESNET_MODE"
DATA_VARIABLE = "RESNET_DATA"
DRY_RUN_VARIABLE = "RESNET_DRY_RUN"
RESULTS_VARIABLE = "RESNET_RESULTS"
CHECKPOINTS_VARIABLE = "RESNET_CHECKPOINTS"
DEFAULT_DATA_DIR = Path("~/.cache/resnet-course")

T = TypeVar("T")


def mode() -> str:
    """The current mode, ``"quick"`` or ``"full"``, read from ``RESNET_MODE``."""
    value = os.environ.get(MODE_VARIABLE, "quick").strip().lower() or "quick"
    if value not in MODES:
        raise ValueError(f"{MODE_VARIABLE}={os.environ[MODE_VARIABLE]!r} is not a mode; expected one of {MODES}")
    return value


def is_quick() -> bool:
    return mode() == "quick"


def is_dry_run() -> bool:
    """True when ``RESNET_DRY_RUN`` asks for the capped full-mode check (only full mode has one)."""
    value = os.environ.get(DRY_RUN_VARIABLE, "").strip().lower()
    if value not in ("", "0", "1", "false", "true"):
        raise ValueError(f"{DRY_RUN_VARIABLE}={os.environ[DRY_RUN_VARIABLE]!r} is not a switch; expected 0 or 1")
    return value in ("1", "true") and not is_quick()


_UNSET = object()


def pick(*, quick: T, full: T, dry: T = _UNSET) -> T:
    """The value for the current mode: ``EPOCHS = pick(quick=3, full=180)``.

    ``dry`` is what the full-mode dry run (``RESNET_DRY_RUN=1``) uses instead of ``full``: give it
    for every value that sets how much a full-mode cell computes, so that CI can run every
    full-mode line on a CPU in seconds. Without it the dry run uses ``full``.
    """
    if is_quick():
        return quick
    return dry if dry is not _UNSET and is_dry_run() else full


def data_dir() -> Path:
    """The data directory from ``RESNET_DATA`` (``~``, relative paths allowed), created if missing."""
    path = Path(os.environ.get(DATA_VARIABLE) or DEFAULT_DATA_DIR).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{DATA_VARIABLE}={str(path)!r} is not a directory; expected a folder for datasets")
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoint_dir() -> Path:
    """Where full-scale runs keep their checkpoints: ``RESNET_CHECKPOINTS``, else ``<data>/checkpoints``."""
    named = os.environ.get(CHECKPOINTS_VARIABLE)
    return Path(named).expanduser().resolve() if named else data_dir() / "checkpoints"


def results_root() -> Path | None:
    """Where run records live: ``RESNET_RESULTS`` if set, else the repository's ``results/``.

    None where this installation of ``utils`` has no repository beside it.
    """
    from utils.files import repo_root  # local import: utils.files imports nothing of ours at module level

    named = os.environ.get(RESULTS_VARIABLE)
    if named:
        return Path(named).expanduser().resolve()
    root = repo_root()
    return None if root is None else root / "results"


def _data_sources() -> str:
    """The datasets this run can read, by name (never the folder they are in)."""
    from utils.data import local_copies  # local import: keeps `import utils.config` cheap

    folder = Path(os.environ.get(DATA_VARIABLE) or DEFAULT_DATA_DIR).expanduser()
    found = [name for name, present in local_copies(folder).items() if present]
    names = {"cifar10": "CIFAR-10", "mnist": "MNIST"}
    if not found:
        return "no local dataset: CIFAR-10 and MNIST are downloaded if possible, else the offline digits fallback is used"
    missing = [names[n] for n in names if n not in found]
    text = " and ".join(names[n] for n in found) + " (local copies)"
    return text + (f"; {', '.join(missing)} downloaded if possible, else the offline digits fallback" if missing else "")


def describe() -> str:
    """One line that says how this notebook is about to run: mode, device and data, by name."""
    import torch  # local import: keeps `import utils.config` cheap

    device = "CUDA GPU: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    other = "full" if is_quick() else "quick"
    dry = " (dry run: every run capped)" if is_dry_run() else ""
    return (
        f"Mode: {mode()}{dry} (set {MODE_VARIABLE}={other} to switch) | device: {device} | "
        f"data: {_data_sources()}"
    )


class Banner:
    """How a page was built, shown as a note box in the book and as one line elsewhere."""

    def __init__(self) -> None:
        self.text = describe()

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        import html

        mode_part, *rest = self.text.split(" | ")
        body = "<br>".join(html.escape(part) for part in rest)
        return (
            '<div class="admonition note mode-banner"><p class="admonition-title">'
            f"{html.escape(mode_part)}</p><p>{body}</p></div>"
        )


def banner() -> Banner:
    """The mode banner a chapter shows after its title: ``config.banner()`` as a cell's last line."""
    return Banner()
