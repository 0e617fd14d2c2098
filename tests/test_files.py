"""utils.files: the one atomic write, the file lock between processes, and committed repository files."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from utils import files

ROOT = Path(__file__).resolve().parents[1]


def _temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_replaces_the_file_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "deep" / "target.txt"
    with files.atomic_write(target, "w") as f:
        f.write("old")
    assert target.read_text() == "old"
    with pytest.raises(RuntimeError, match="interrupted"):
        with files.atomic_write(target, "w") as f:
            f.write("half of the new content")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old", "a failed write must leave the old content"
    assert _temp_files(target.parent) == [], "and no temporary file"
    with files.atomic_write(target) as f:  # bytes by default
        f.write(b"new")
    assert target.read_bytes() == b"new" and _temp_files(target.parent) == []


def test_a_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_write(tmp_path / "never.bin") as f:
            f.write(b"x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_gives_ordinary_permissions_and_keeps_existing_ones(tmp_path):
    umask = os.umask(0o022)
    try:
        fresh = files.write_text(tmp_path / "fresh.txt", "x")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o644, "not mkstemp's 0600: other users may share a data folder"
        script = tmp_path / "script.sh"
        script.write_text("#!/bin/sh\n")
        script.chmod(0o755)
        files.write_text(script, "#!/bin/sh\necho new\n")
        assert stat.S_IMODE(script.stat().st_mode) == 0o755 and script.read_text().endswith("echo new\n")
    finally:
        os.umask(umask)


def test_atomic_write_rejects_other_modes(tmp_path):
    with pytest.raises(ValueError, match=r"mode='a'; expected 'wb' \(bytes\) or 'w' \(text\)"):
        with files.atomic_write(tmp_path / "x", "a"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_json_round_trip_and_a_failed_dump_keeps_the_old_file(tmp_path):
    out = files.write_json(tmp_path / "r.json", {"x": 1.5, "y": [1, 2]})
    assert out.read_text().endswith("}\n") and files.read_json(out) == {"x": 1.5, "y": [1, 2]}
    with pytest.raises(TypeError):
        files.write_json(out, {"bad": object()})
    assert json.loads(out.read_text()) == {"x": 1.5, "y": [1, 2]} and _temp_files(tmp_path) == []


# A second process that tries to take the lock and reports what happened.
_LOCKING_CHILD = """
import sys
from utils import files
try:
    with files.file_lock(sys.argv[1], timeout=float(sys.argv[2])):
        print("locked")
except TimeoutError as err:
    print("timeout:", err)
"""


def _try_lock_in_another_process(path: Path, timeout: float) -> str:
    result = subprocess.run([sys.executable, "-c", _LOCKING_CHILD, str(path), str(timeout)],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_the_lock_excludes_a_second_process_until_it_is_released(tmp_path):
    lock = tmp_path / "sub" / ".data.lock"
    with files.file_lock(lock):
        answer = _try_lock_in_another_process(lock, 0.2)
        assert answer.startswith("timeout:") and str(lock) in answer and "another process holds it" in answer
    assert _try_lock_in_another_process(lock, 0.2) == "locked"


def test_the_lock_is_released_when_the_block_raises(tmp_path):
    lock = tmp_path / ".lock"
    with pytest.raises(RuntimeError):
        with files.file_lock(lock):
            raise RuntimeError("boom")
    assert _try_lock_in_another_process(lock, 0.2) == "locked"


def test_repo_file_finds_committed_files():
    path = files.repo_file("results/latency-cpu.json")
    assert path == ROOT / "results" / "latency-cpu.json" and path.is_file()


@pytest.mark.parametrize("relative", ["/etc/passwd", "../outside.txt", "results/../../outside.txt"])
def test_repo_file_rejects_paths_outside_the_repository(relative):
    with pytest.raises(ValueError, match="must be a path inside the repository"):
        files.repo_file(relative)


def test_repo_file_names_a_missing_file_and_where_it_looked():
    with pytest.raises(FileNotFoundError, match=r"results/no-such-file\.json is not in the repository at .+"):
        files.repo_file("results/no-such-file.json")


def test_repo_file_without_a_repository_says_how_to_name_one(monkeypatch):
    monkeypatch.setattr(files, "repo_root", lambda: None)
    with pytest.raises(FileNotFoundError, match="has none; set RESNET_REPO to a checkout of the course"):
        files.repo_file("results/latency-cpu.json")


def test_resnet_repo_names_the_checkout(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_REPO", str(tmp_path))
    with pytest.raises(ValueError, match=r"RESNET_REPO=.* is not a checkout of the course \(no _toc.yml there\)"):
        files.repo_file("results/x.json")
    (tmp_path / "_toc.yml").write_text("root: intro\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "x.json").write_text("{}")
    assert files.repo_file("results/x.json") == tmp_path.resolve() / "results" / "x.json"


def test_repo_files_lists_the_committed_matches_sorted(tmp_path, monkeypatch):
    (tmp_path / "_toc.yml").write_text("root: intro\n")
    (tmp_path / "results" / "cifar10").mkdir(parents=True)
    for name in ("latency-gpu.json", "latency-cpu.json", "throughput-cpu.json"):
        (tmp_path / "results" / name).write_text("{}")
    (tmp_path / "results" / "latency-dir.json").mkdir()  # a folder is not a result
    monkeypatch.setenv("RESNET_REPO", str(tmp_path))
    root = tmp_path.resolve()
    assert files.repo_files("results/latency-*.json") == [root / "results" / "latency-cpu.json", root / "results" / "latency-gpu.json"]
    assert files.repo_files("results/cifar10/*.json") == [], "a result not measured yet is an empty list, not an error"


def test_repo_files_in_this_checkout_finds_the_recorded_latency():
    assert ROOT / "results" / "latency-cpu.json" in files.repo_files("results/latency-*.json")


def test_repo_files_rejects_patterns_outside_and_says_when_there_is_no_repository(monkeypatch):
    with pytest.raises(ValueError, match=r"'\.\./\*\.json' must be a path inside the repository"):
        files.repo_files("../*.json")
    with pytest.raises(ValueError, match=r"pattern=''; expected a glob inside the repository"):
        files.repo_files("")
    monkeypatch.setattr(files, "repo_root", lambda: None)
    with pytest.raises(FileNotFoundError, match=r"in Colab, run the notebook's first cell \(the Colab setup\)"):
        files.repo_files("results/latency-*.json")


def test_a_plain_install_finds_the_repository_only_through_resnet_repo(tmp_path):
    # As in Colab: utils copied into a site-packages folder, with no repository above it.
    site = tmp_path / "site-packages"
    shutil.copytree(ROOT / "utils", site / "utils", ignore=shutil.ignore_patterns("__pycache__"))
    probe = "from utils import files; print(files.repo_root()); print(files.repo_file('results/latency-cpu.json'))"
    env = {k: v for k, v in os.environ.items() if k not in ("RESNET_REPO", "PYTHONPATH")}
    run = lambda extra: subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                                       env={**env, "PYTHONPATH": str(site), **extra}, timeout=120)  # fmt: skip
    alone = run({})
    assert alone.returncode != 0 and alone.stdout.startswith("None") and "set RESNET_REPO" in alone.stderr, alone.stderr[-2000:]
    named = run({"RESNET_REPO": str(ROOT)})
    assert named.returncode == 0, named.stderr[-2000:]
    assert named.stdout.split() == [str(ROOT), str(ROOT / "results" / "latency-cpu.json")]
