"""utils.results: what a result file records about the run that made it, and atomic writes."""

import json
import subprocess

import pytest
import torch

from utils import files, results


def _git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("a\n")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "first")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RESNET_COMMIT", raising=False)
    return tmp_path


def test_clean_and_dirty_trees(repo):
    head = _git(repo, "rev-parse", "HEAD")
    record = results.run_metadata(["benchmarks/x.py", "--out", "a b.json"])
    assert record["commit"] == head
    assert record["command"] == "python benchmarks/x.py --out 'a b.json'"  # quoted: it can be pasted back
    assert record["torch"] and record["torchvision"] and record["python"] and record["device"]
    (repo / "new_script.py").write_text("print(1)\n")  # untracked: it may be what ran
    assert results.run_metadata([])["commit"] == head + "-dirty"
    (repo / "new_script.py").unlink()
    (repo / "results").mkdir()
    (repo / "results" / "run.json").write_text("{}")  # a run's own output does not change the code that ran
    assert results.run_metadata([])["commit"] == head
    (repo / "a.txt").write_text("changed\n")
    assert results.run_metadata([])["commit"] == head + "-dirty"


def test_a_copy_without_git_takes_the_commit_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above tmp_path
    monkeypatch.delenv("RESNET_COMMIT", raising=False)
    assert results.run_metadata([])["commit"] is None
    monkeypatch.setenv("RESNET_COMMIT", "abc1234")
    assert results.run_metadata([])["commit"] == "abc1234"


def test_write_json_is_atomic_and_round_trips(tmp_path):
    assert results.write_json is files.write_json and results.read_json is files.read_json, "one atomic writer"
    out = results.write_json(tmp_path / "deep" / "r.json", {"x": 1.5, "y": [1, 2]})
    assert json.loads(out.read_text()) == {"x": 1.5, "y": [1, 2]} == results.read_json(out)
    with pytest.raises(TypeError):
        results.write_json(out, {"bad": object()})
    assert json.loads(out.read_text()) == {"x": 1.5, "y": [1, 2]}, "a failed write must leave the old file intact"
    assert [p.name for p in out.parent.iterdir()] == ["r.json"], "no temporary file may be left behind"


def test_device_slug_names_result_files(monkeypatch):
    assert results.device_slug("cpu") == results.device_slug(torch.device("cpu")) == "cpu"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert results.device_slug("cuda:0") == "h100-80gb-hbm3"
