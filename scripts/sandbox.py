"""The sandbox of every graded run (``scripts/grade.py``): what an answer cell may touch.

Each nbval run (pytest and the kernel it starts) is started through this module, which execs it in
two layers:

1. **Limits**, on every system with ``resource`` (Linux, macOS): address space (``--memory-limit``,
   so a 50 GB allocation is a ``MemoryError`` in its cell), processes and threads (``RLIMIT_NPROC``,
   so a fork bomb stops at the limit), CPU seconds per process, the size of a written file, no core
   dumps. The kernel does not apply ``RLIMIT_NPROC`` to root: run as root, each run (one per
   ``--jobs`` slot) is put into a ``pids`` control group of its own with that limit instead, where
   the cgroup file system is writable, so that a fork bomb cannot starve another run. Run as an
   ordinary user, the process limit counts all of that user's processes: it is set to their
   current number plus the limit.
2. **Bubblewrap** (``bwrap``, Linux; ``make sandbox`` installs Debian's package), when it works here:
   new user, PID, network, IPC and UTS namespaces (no network at all: only a loopback of its own, on
   which the kernel and pytest talk), the whole file system mounted read-only (the course, the
   virtual environment, the data), a private ``/tmp`` of limited size with a private ``HOME`` in it,
   and the run's own folder as the only writable place. The run dies with the grader.

Without bubblewrap (another OS, or namespaces disabled) only the first layer applies: the answers
can then reach the network and read and write whatever the grading user can. ``describe()`` says
which layer is in force; the grader prints it and writes it into the report.

    python -m scripts.sandbox --probe     # which sandbox this machine gives a graded run
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
# Where root puts each run's processes (cgroup v1's pids hierarchy, or the unified v2 one).
CGROUP_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))
CGROUP_PREFIX = "resnet-grade-"


@dataclass(frozen=True)
class Limits:
    memory_gb: float = 8.0  # address space of each process (RLIMIT_AS)
    processes: int = 512  # processes and threads of the run (RLIMIT_NPROC)
    cpu_seconds: int = 7200  # CPU time of each process (RLIMIT_CPU): a backstop to the cell timeouts
    file_gb: float = 2.0  # largest file a process may write (RLIMIT_FSIZE)
    tmp_gb: float = 2.0  # size of the private /tmp (bubblewrap only)

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"sandbox limit {name}={value!r}: expected a positive number")


def bwrap() -> str | None:
    return shutil.which("bwrap")


def bwrap_arguments(work: Path, limits: Limits) -> list[str]:
    """bwrap's options for a run whose only writable folder is ``work``."""
    work = str(Path(work).resolve())
    return [
        "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
        "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
        "--size", str(int(limits.tmp_gb * GIB)), "--tmpfs", "/tmp", "--dir", "/tmp/home",
        "--bind", work, work, "--chdir", work,
        "--setenv", "HOME", "/tmp/home", "--setenv", "TMPDIR", "/tmp",
    ]  # fmt: skip


@functools.lru_cache(maxsize=None)
def bwrap_works() -> bool:
    """Whether bubblewrap runs here with every namespace the sandbox asks for, as the runs will use it."""
    found = bwrap()
    if found is None:
        return False
    probe = Path(ROOT)  # any existing folder: nothing is written
    command = wrap([found, *bwrap_arguments(probe, Limits()), "--", "true"], Limits(), slot=0)
    try:
        return subprocess.run(command, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def kind() -> str:
    """"bwrap" (namespaces and limits) or "limits" (limits only)."""
    return "bwrap" if sys.platform.startswith("linux") and bwrap_works() else "limits"


def describe(limits: Limits) -> str:
    """One line for the grader's output and the report: what protects the course from the answers."""
    caps = (
        f"{limits.memory_gb:g} GB of memory and {limits.cpu_seconds} CPU seconds per process, "
        f"{limits.processes} processes and threads, files up to {limits.file_gb:g} GB"
    )
    if os.geteuid() == 0 and pids_cgroup_root() is None:
        caps = caps.replace(f"{limits.processes} processes and threads", "NO process limit (root, no writable pids cgroup)")
    if kind() == "bwrap":
        return (
            f"each graded run is sandboxed by bubblewrap: no network, the file system read-only except the run's "
            f"own folder, a private /tmp ({limits.tmp_gb:g} GB) and HOME, its own PID namespace; {caps}"
        )
    return (
        f"NOT isolated (bubblewrap is not available here): each graded run has only resource limits ({caps}), "
        "with network access and the file access of the grading user; grade untrusted work in a VM"
    )


def pids_cgroup_root() -> Path | None:
    """A cgroup folder with the pids controller that this (root) process may create groups in."""
    for root in CGROUP_ROOTS:
        if not os.access(root, os.W_OK):
            continue
        if (root / "pids.max").exists() or root.name == "pids":
            return root
        controllers = root / "cgroup.subtree_control"
        if controllers.exists() and "pids" in controllers.read_text().split():
            return root
    return None


def wrap(command: list[str], limits: Limits, slot: int) -> list[str]:
    """The command that runs ``command`` under the limits (in the slot's pids cgroup when root)."""
    spec = {"limits": asdict(limits), "slot": slot}
    return [sys.executable, str(Path(__file__).resolve()), "--exec", json.dumps(spec), "--", *command]


def sandboxed(command: list[str], work: Path, limits: Limits, slot: int) -> list[str]:
    """``command`` as a graded run starts it: in bubblewrap where it works, always under the limits."""
    if kind() == "bwrap":
        command = [bwrap(), *bwrap_arguments(work, limits), "--", *command]
    return wrap(command, limits, slot)


def host_pid(root: int, inner: int) -> int | None:
    """The host's id of the process that calls itself ``inner`` in the PID namespace under ``root``."""
    try:
        import psutil
    except ImportError:  # pragma: no cover (a dependency of ipykernel)
        return None
    try:
        processes = psutil.Process(root).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for process in processes:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:"):
                ids = line.split()[1:]
                if len(ids) > 1 and int(ids[-1]) == inner:
                    return int(ids[0])
    return None


def _user_threads(uid: int) -> int:
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if fields.get("Uid", "").split()[:1] == [str(uid)]:
            count += int(fields.get("Threads", "1").strip() or 1)
    return count


def _exec(spec: dict, command: list[str]) -> None:
    """In the run's own process: set the limits, drop to the run's user id, exec the command."""
    import resource

    limits = Limits(**spec["limits"])
    memory = int(limits.memory_gb * GIB)
    for which, value in (
        (resource.RLIMIT_AS, memory),
        (resource.RLIMIT_CPU, int(limits.cpu_seconds)),
        (resource.RLIMIT_FSIZE, int(limits.file_gb * GIB)),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(which, (value, value))
    if os.geteuid() == 0:  # RLIMIT_NPROC does not bind root: a pids cgroup of the slot's own does
        root = pids_cgroup_root()
        if root is not None:
            group = root / f"{CGROUP_PREFIX}{int(spec['slot'])}"
            group.mkdir(exist_ok=True)
            (group / "pids.max").write_text(f"{int(limits.processes)}\n")
            (group / "cgroup.procs").write_text(f"{os.getpid()}\n")
    else:  # the user's own processes count too
        processes = int(limits.processes) + (_user_threads(os.getuid()) if Path("/proc").is_dir() else 256)
        resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
    os.execvp(command[0], command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", action="store_true", help="say which sandbox a graded run gets here")
    parser.add_argument("--exec", dest="spec", help=argparse.SUPPRESS)
    parser.add_argument("command", nargs="*")
    args = parser.parse_args(argv)
    if args.spec:
        if not args.command:
            parser.error("--exec needs a command after --")
        _exec(json.loads(args.spec), args.command)
    print(describe(Limits()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
