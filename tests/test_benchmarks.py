"""The benchmark scripts run end to end and record what produced their figures (smoke runs, no timing asserts)."""

import json
import sys

import pytest

from benchmarks import throughput, time_to_accuracy


def _run_script(script, args, monkeypatch):
    monkeypatch.setattr(sys, "argv", [script.__file__, *args])
    return script.main(args)


def test_throughput_compares_both_pipelines_and_writes_json(tmp_path, monkeypatch):
    out = tmp_path / "tp.json"
    report = _run_script(throughput, ["--model", "resnet8", "--images", "64", "--batch-size", "32",
                                           "--workers", "0", "--out", str(out)], monkeypatch)  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["command"].startswith("python benchmarks/throughput.py --model resnet8")
    for way in ("classic", "fast"):
        assert saved[way]["images_per_s"] > 0
    assert saved["speedup"] == pytest.approx(saved["classic"]["seconds"] / saved["fast"]["seconds"])
    assert saved["train_flops_per_image"] > 0 and saved["torch"] and saved["device"]


def test_throughput_rejects_unknown_models(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown model 'vgg16'"):
        _run_script(throughput, ["--model", "vgg16", "--images", "64", "--out", str(tmp_path / "x.json")], monkeypatch)


def test_time_to_accuracy_smoke_run_records_history(tmp_path, monkeypatch):
    out = tmp_path / "tta.json"
    report = _run_script(time_to_accuracy, ["--train-images", "100", "--test-images", "50", "--epochs", "1",
                                                 "--warmup-epochs", "0", "--batch-size", "50", "--target", "0.01", "--allow-fallback",
                                                 "--out", str(out)], monkeypatch)  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["reached"] and saved["epoch_reached"] == 1 and saved["seconds_to_target"] > 0
    assert len(saved["history"]["test_acc"]) == 1 and saved["recipe"]["batch_size"] == 50
    assert report["test_images"] == 50


def test_time_to_accuracy_on_the_validation_split_leaves_the_test_set_out(tmp_path, monkeypatch):
    out = tmp_path / "val.json"
    report = _run_script(time_to_accuracy, ["--eval-on", "val", "--train-images", "200", "--epochs", "1",
                                                 "--warmup-epochs", "0", "--batch-size", "50", "--target", "0.99", "--allow-fallback",
                                                 "--out", str(out)], monkeypatch)  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["evaluated_on"] == "val" and "test_acc" not in saved["history"] and len(saved["history"]["val_acc"]) == 1
    assert saved["train_images"] == 180 and saved["val_images"] == 20 and "test_images" not in saved
    assert report["best_val_acc"] == saved["history"]["val_acc"][0]
    # 99 % of 20 held-out images after 4 steps is out of reach: the report must say so, not invent a time
    assert not saved["reached"] and saved["seconds_to_target"] is None and saved["epoch_reached"] is None


def test_time_to_accuracy_rejects_a_test_subset_with_the_validation_split(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        _run_script(time_to_accuracy, ["--eval-on", "val", "--test-images", "100"], monkeypatch)
    assert "--test-images applies to --eval-on test" in capsys.readouterr().err
