"""The README's measured figures are generated from results/*.json, and stay in step with them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import summary

ROOT = Path(__file__).resolve().parents[1]


def test_readme_block_matches_the_committed_results():
    assert summary.main(["--results", str(ROOT / "results"), "--check", str(ROOT / "README.md")]) == 0


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


META = {"command": "python benchmarks/x.py --flag", "commit": "0123456789abcdef-dirty", "device": "NVIDIA H100 80GB HBM3"}


@pytest.fixture
def results_dir(tmp_path):
    root = tmp_path / "results"
    _write(root / "throughput-h100-resnet18.json", META | {
        "model": "resnet18", "images": 50000, "batch_size": 512, "speedup": 4.25,
        "classic": {"images_per_s": 5000.0}, "fast": {"images_per_s": 21250.0, "mfu": 0.0716}})  # fmt: skip
    _write(root / "time-to-accuracy-h100.json", META | {
        "target": 0.94, "reached": True, "epoch_reached": 31, "seconds_to_target": 57.4, "total_seconds": 70.0,
        "train_images": 50000, "test_images": 10000, "best_test_acc": 0.9453, "recipe": {"epochs": 40}})  # fmt: skip
    _write(root / "recipe-val-h100.json", META | {
        "evaluated_on": "val", "target": 0.94, "reached": False, "epoch_reached": None, "seconds_to_target": None,
        "total_seconds": 33.0, "train_images": 45000, "val_images": 5000, "best_val_acc": 0.9312, "recipe": {"epochs": 20}})  # fmt: skip
    _write(root / "cifar10" / "resnet20-seed0.json", META | {"net": "resnet20", "seed": 0, "done": True})
    _write(root / "cifar10" / "resnet56-seed0.json", META | {"net": "resnet56", "seed": 0, "done": False})
    return root


def test_render_reports_every_figure_with_its_command(results_dir):
    text = summary.render(results_dir)
    assert "| NVIDIA H100 80GB HBM3 | resnet18 | 50,000 | 512 | 5,000.0 | 21,250.0 | **4.25x** | 7.2 % |" in text
    assert "| 50,000 / 10,000 test | 40 | 94% test | **57 s** (epoch 31) | 94.53% |" in text
    assert "| 45,000 / 5,000 val | 20 | 94% val | not reached in 33 s | 93.12% |" in text
    assert text.count("`python benchmarks/x.py --flag` @ 0123456-dirty") == 3
    assert "Forward latency" in text and "No result file yet." in text  # no latency file: said, not an empty table
    assert "1 of 18 runs finished" in text  # an unfinished run does not count


def test_write_then_check_round_trip(results_dir, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{summary.BEGIN}\nstale numbers\n{summary.END}\nafter\n")
    assert summary.main(["--results", str(results_dir), "--check", str(readme)]) == 1
    assert summary.main(["--results", str(results_dir), "--write", str(readme)]) == 0
    text = readme.read_text()
    assert "stale numbers" not in text and text.startswith("# title\n\nbefore\n") and text.endswith("after\n")
    assert summary.render(results_dir) in text
    assert summary.main(["--results", str(results_dir), "--check", str(readme)]) == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_runs_as_a_script_and_prints_the_tables():
    # `python benchmarks/summary.py` (not only `from benchmarks import summary`) is how the Makefile runs it.
    printed = subprocess.run([sys.executable, "benchmarks/summary.py", "--results", "results"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120, check=True).stdout  # fmt: skip
    assert printed == summary.render(ROOT / "results")


def test_bad_inputs_are_named(results_dir, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    with pytest.raises(summary.ResultError, match="must contain the marker lines"):
        summary.main(["--results", str(results_dir), "--check", str(readme)])
    (results_dir / "throughput-broken.json").write_text("{not json")
    with pytest.raises(summary.ResultError, match="throughput-broken.json: not valid JSON"):
        summary.render(results_dir)
    (results_dir / "throughput-broken.json").write_text(json.dumps(META | {"model": "resnet18"}))
    with pytest.raises(summary.ResultError, match="throughput-broken.json: missing field.*images"):
        summary.render(results_dir)
    with pytest.raises(summary.ResultError, match="does not exist"):
        summary.render(tmp_path / "nowhere")
