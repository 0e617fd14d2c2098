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
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

__all__ = ["MODES", "mode", "is_quick", "pick", "data_dir", "describe"]

MODES = ("quick", "full")
MODE_VARIABLE = "RESNET_MODE"
DATA_VARIABLE = "RESNET_DATA"
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


def pick(*, quick: T, full: T) -> T:
    """The value for the current mode: ``EPOCHS = pick(quick=3, full=180)``."""
    return quick if is_quick() else full


def data_dir() -> Path:
    """The data directory from ``RESNET_DATA`` (``~``, relative paths allowed), created if missing."""
    path = Path(os.environ.get(DATA_VARIABLE) or DEFAULT_DATA_DIR).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{DATA_VARIABLE}={str(path)!r} is not a directory; expected a folder for datasets")
    path.mkdir(parents=True, exist_ok=True)
    return path


def describe() -> str:
    """One line that says how this notebook is about to run."""
    import torch  # local import: keeps `import utils.config` cheap

    device = "CUDA GPU: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    other = "full" if is_quick() else "quick"
    return (
        f"Mode: {mode()} (set {MODE_VARIABLE}={other} to switch) | device: {device} | "
        f"data: {os.environ.get(DATA_VARIABLE) or DEFAULT_DATA_DIR}"
    )
