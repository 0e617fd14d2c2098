"""benchmarks/latency.py runs end to end on tiny settings, records what produced its numbers, and rejects bad options.

Smoke runs only: timings on a shared CPU are noise, so nothing here asserts a speed.
"""

import json
import sys

import pytest
import torch

from benchmarks import latency
from utils import cost, models


def _run(args, monkeypatch):
    monkeypatch.setattr(sys, "argv", [latency.__file__, *args])
    return latency.main(args)


def test_tiny_run_writes_every_combination_with_costs_and_metadata(tmp_path, monkeypatch):
    out = tmp_path / "latency.json"
    args = ["--depths", "18", "50", "--batch-sizes", "1", "2", "--image-size", "32",
            "--repeats", "2", "--warmup", "1", "--threads", "1", "--out", str(out)]  # fmt: skip
    threads_before = torch.get_num_threads()
    report = _run(args, monkeypatch)
    assert torch.get_num_threads() == threads_before, "--threads must not leak into the calling process"
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report)), "the JSON file should hold exactly the returned report"

    # What produced the numbers.
    assert saved["command"] == "python benchmarks/latency.py " + " ".join(args)
    for key in ("commit", "date", "device", "torch", "torchvision", "python", "mode"):
        assert key in saved, f"run metadata {key!r} missing"
    assert saved["image_size"] == 32 and saved["repeats"] == 2 and saved["warmup"] == 1
    assert saved["threads"] == 1 and saved["memory_format"] == "contiguous"
    assert set(saved["environment"]) == {"OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS"}
    assert len(saved["load_average_before"]) == 3 and len(saved["load_average_after"]) == 3

    # One row per (depth, batch size, precision), each with a positive mean and a non-negative spread.
    rows = saved["measurements"]
    assert sorted((r["depth"], r["batch_size"], r["precision"]) for r in rows) == [
        (18, 1, "fp32"), (18, 2, "fp32"), (50, 1, "fp32"), (50, 2, "fp32"),
    ]  # fmt: skip
    for r in rows:
        assert 0 < r["min_ms"] <= r["mean_ms"] and r["std_ms"] >= 0 and r["repeats"] == 2
        assert r["images_per_s"] == pytest.approx(r["batch_size"] / (r["mean_ms"] / 1e3))

    # The costs are the models' own, counted independently here.
    for depth in (18, 50):
        model = getattr(models, f"resnet{depth}")(num_classes=1000)
        entry = saved["models"][f"resnet{depth}"]
        assert entry["params"] == models.count_parameters(model)
        assert entry["macs_per_image"] == cost.count_macs(model, (1, 3, 32, 32))
    assert saved["models"]["resnet50"]["macs_per_image"] > saved["models"]["resnet18"]["macs_per_image"]


def test_bf16_autocast_wrapper_runs_in_bfloat16_and_keeps_the_prediction():
    torch.manual_seed(0)
    model = models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    wrapper = latency.InferenceWrapper
    assert wrapper is cost.InferenceWrapper, "the benchmark and chapter 9 time models through one wrapper"
    with torch.no_grad():
        fp32 = wrapper(model, "fp32", "contiguous")(x)
        bf16 = wrapper(model, "bf16", "channels_last")(x)
    assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16
    # Same model, lower precision: close, not equal.
    assert torch.allclose(bf16.float(), fp32, atol=0.1, rtol=0.05)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--depths", "20"], "no ResNet-20; choose from 18, 34, 50, 101, 152"),
        (["--repeats", "0"], "0 must be a positive integer"),
        (["--batch-sizes", "-4"], "-4 must be a positive integer"),
        (["--warmup", "-1"], "-1 must be zero or a positive integer"),
        (["--image-size", "abc"], "'abc' is not an integer"),
        (["--image-size", "16"], "--image-size 16 is too small"),
        (["--precisions", "fp16"], "invalid choice: 'fp16'"),
    ],
)
def test_bad_options_stop_with_a_clear_message(monkeypatch, capsys, args, message):
    with pytest.raises(SystemExit) as stopped:
        _run([*args, "--out", "/nonexistent/never-written.json"], monkeypatch)
    assert stopped.value.code == 2, "argparse errors exit with status 2"
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_missing_gpu_is_an_error(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        _run(["--device", "cuda", "--out", "/nonexistent/x.json"], monkeypatch)
    assert "no CUDA GPU is available" in capsys.readouterr().err
