"""benchmarks/gpu_evidence.py (`make gpu-evidence`): priority order, the deadline, and a CPU smoke run."""

import json

import pytest

from benchmarks import gpu_evidence


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_steps_run_in_priority_order_each_within_its_share_of_the_time(monkeypatch, tmp_path):
    clock = FakeClock()
    monkeypatch.setattr(gpu_evidence.time, "monotonic", clock)
    calls = []

    def fake_step(name, args, minutes):
        calls.append((name, minutes))
        clock.now += 60 * minutes  # every step uses all the time it is given

    monkeypatch.setattr(gpu_evidence, "_run_step", fake_step)
    summary = gpu_evidence.main(["--minutes", "9", "--out", str(tmp_path)])
    assert [name for name, _ in calls] == ["throughput", "time_to_accuracy", "latency", "runs"]
    left = 9.0
    for (name, minutes), (share, _) in zip(calls, gpu_evidence.BUDGETS.values()):
        assert minutes == pytest.approx(share * left), name
        left -= minutes
    assert [s["status"] for s in summary["steps"]] == ["done"] * 4
    assert json.loads((tmp_path / "evidence-summary.json").read_text())["steps"][0]["step"] == "throughput"


def test_a_step_that_cannot_start_in_time_is_skipped_and_a_failure_costs_only_its_step(monkeypatch, tmp_path):
    clock = FakeClock()
    monkeypatch.setattr(gpu_evidence.time, "monotonic", clock)

    def fake_step(name, args, minutes):
        if name == "throughput":
            raise RuntimeError("no GPU here")
        clock.now += 60 * 8.8  # the time-to-accuracy run overruns its share: 8.8 of the 9 minutes

    monkeypatch.setattr(gpu_evidence, "_run_step", fake_step)
    summary = gpu_evidence.main(["--minutes", "9", "--out", str(tmp_path)])
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert status["throughput"].startswith("failed: RuntimeError: no GPU here")
    assert status["time_to_accuracy"] == "done"
    assert status["latency"] == "skipped: 0.2 min left, 0.5 needed"
    assert status["runs"] == "skipped: 0.2 min left, 0.5 needed"


@pytest.mark.slow
def test_the_smoke_run_writes_every_result_on_the_cpu(tmp_path, monkeypatch):
    """The real steps at tiny sizes (the book runs' dry run is tested in test_runs_script.py)."""
    monkeypatch.setenv("RESNET_MODE", "quick")  # the latency step switches it: restored afterwards
    summary = gpu_evidence.main(["--smoke", "--skip", "runs", "--minutes", "10", "--out", str(tmp_path)])
    assert [s["status"] for s in summary["steps"]] == ["done", "done", "done", "skipped (--skip)"]
    assert sorted(summary["files"]) == ["latency-smoke.json", "throughput-smoke.json", "time-to-accuracy-smoke-val.json"]
    tta = json.loads((tmp_path / "time-to-accuracy-smoke-val.json").read_text())
    assert tta["evaluated_on"] == "val" and "test_acc_once" in tta and tta["epochs_completed"] == 1
    latency = json.loads((tmp_path / "latency-smoke.json").read_text())
    assert set(latency["seed_post_003"]["ratios"]) == {"vgg16/batch1/fp32", "inception_v3/batch1/fp32"}


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        gpu_evidence.main(["--minutes", "0"])
    assert "--minutes 0.0 must be positive" in capsys.readouterr().err
