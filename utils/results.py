"""Recording measured figures: every result file says which command, commit, device and versions made it."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
import torch

from . import config
# Result files are written atomically by the one writer of the package; re-exported for the callers of
# ``results.write_json`` / ``results.read_json`` (benchmarks, utils.reproduction, scripts).
from .files import read_json, write_json

__all__ = ["run_metadata", "device_slug", "load_average", "write_json", "read_json"]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def run_metadata(argv: list[str] | None = None) -> dict:
    """The exact command, the commit (with a dirty flag), the device and the library versions."""
    argv = sys.argv if argv is None else argv
    commit = _git("rev-parse", "HEAD")
    if commit is not None:
        # Untracked files count too: a new script that is not committed yet changes what ran. Result files
        # do not: runs write them into results/ themselves, so every resumed run would look dirty.
        commit += "-dirty" if _git("status", "--porcelain", "--", ":/", ":(top,exclude)results") else ""
    else:
        # A copy of the tree without .git (a rented GPU machine): the caller names the commit it copied.
        commit = os.environ.get("RESNET_COMMIT") or None
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    import torchvision

    return {
        "command": " ".join(shlex.quote(a) for a in ["python", *argv]),
        "commit": commit,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "mode": config.mode(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }


def device_slug(device: torch.device | str) -> str:
    """``cpu``, or the GPU's name in file-name form (``NVIDIA H100 80GB HBM3`` -> ``h100-80gb-hbm3``)."""
    device = torch.device(device)
    if device.type != "cuda":
        return "cpu"
    return torch.cuda.get_device_name(device).lower().replace("nvidia ", "").replace(" ", "-")


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (other work slows a benchmark down); None where the OS has none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None
