"""scripts/runs.py (`make runs`): the queue, its order, its errors, and a dry run of every run in it."""

import os
import subprocess
import sys

import pytest

from scripts import runs as runs_script
from utils import data, runs


@pytest.fixture(autouse=True)
def restore_mode(monkeypatch):
    """main() sets RESNET_MODE=full for the runs: put back whatever the other tests expect."""
    monkeypatch.setenv("RESNET_MODE", "quick")


def test_the_queue_puts_the_degradation_nets_first_then_the_book_then_table_6():
    names = [item.name for item in runs_script.queue()]
    assert names[:4] == ["cifar10/plain20-seed0", "cifar10/plain56-seed0", "cifar10/resnet20-seed0",
                         "cifar10/resnet56-seed0"]  # fmt: skip
    assert names[4:6] == [spec.name for spec in runs.BOOK_RUNS]
    assert len(names) == len(set(names)) == 4 + len(runs.BOOK_RUNS) + 18 - 4
    assert names[-1] == "cifar10/resnet110-seed1"


def test_list_shows_every_run_and_unknown_names_are_refused(capsys, tmp_path):
    assert runs_script.main(["--list", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(runs_script.queue()) and all(line.endswith("to do") for line in lines)
    with pytest.raises(SystemExit):
        runs_script.main(["--only", "resnet99"])
    assert "unknown runs ['resnet99']" in capsys.readouterr().err


def test_jobs_start_one_process_per_run(monkeypatch, tmp_path):
    started = []

    class FakeProcess:
        def __init__(self, command):
            started.append(command)
            self.returncode = 0

        def poll(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakeProcess)
    only = "cifar10/plain20-seed0,ch04-resnet18-cifar10"
    assert runs_script.main(["--only", only, "--jobs", "2", "--max-minutes", "5", "--out", str(tmp_path)]) == 0
    assert sorted(c[c.index("--only") + 1] for c in started) == sorted(only.split(","))
    for command in started:
        assert command[:2] == [sys.executable, runs_script.__file__]
        assert 0 < float(command[command.index("--max-minutes") + 1]) <= 5


def _real_data_here() -> bool:
    copies = data.local_copies(data.config.data_dir()) if hasattr(data, "local_copies") else {}
    return bool(copies.get("cifar10")) and bool(copies.get("mnist"))


@pytest.mark.slow
def test_every_run_of_the_queue_stops_resumes_and_finishes_in_a_dry_run(tmp_path, monkeypatch):
    """The full-scale path on the CPU: real data, 2 epochs of 2 batches per run (about 2 minutes)."""
    if not _real_data_here():
        if os.environ.get("CI"):
            pytest.fail("CI must expose CIFAR-10 and MNIST through RESNET_DATA (see .ci/run)")
        pytest.skip("no local copy of CIFAR-10 and MNIST in RESNET_DATA")
    monkeypatch.setenv("RESNET_MODE", "full")  # restored after the test; main() sets it too
    out = tmp_path / "results"
    assert runs_script.main(["--dry-run", "--out", str(out), "--checkpoint-dir", str(tmp_path / "ckpt")]) == 0
    assert len(list((out / "cifar10").glob("*.json"))) == 18
    for spec in runs.BOOK_RUNS:
        record = runs.finished(runs.dry_run_spec(spec), out)
        assert record is not None and record["data"]["max_batches"] == runs.DRY_BATCHES
        assert record["data"]["dataset"] == spec.dataset, "a dry run reads the real data"
