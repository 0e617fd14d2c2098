"""scripts/reproduce.py and utils.reproduction: records, resuming, time limits, refusals."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scripts import reproduce
from utils import data, recipes, reproduction, train

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "reproduce.py"
HISTORY_KEYS = ["epoch", "iteration", "lr", "train_loss", "train_error", "val_loss", "val_error",
                "test_loss", "test_error", "seconds"]  # fmt: skip


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Quick mode on the offline digits fallback: an empty data folder and no download."""

    def no_download(root, download):
        raise OSError("offline (simulated)") if download else FileNotFoundError(root)

    monkeypatch.setenv("RESNET_MODE", "quick")  # restored after the test, whatever main() sets
    monkeypatch.setenv("RESNET_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(data, "_read_torchvision", no_download)
    monkeypatch.setattr(data, "_announced", set())
    return tmp_path


def _main(tmp_path, *args):
    base = ["--out", str(tmp_path / "res"), "--checkpoint-dir", str(tmp_path / "ckpt"), "--no-progress"]
    return reproduce.main([*args, *base])


def _without_seconds(history):
    return {k: v for k, v in history.items() if k != "seconds"}


def test_quick_run_writes_the_schema_stops_at_the_time_limit_and_resumes(offline, capsys):
    record_path = offline / "res" / "resnet8-seed0.json"
    checkpoint = offline / "ckpt" / "resnet8-seed0.pt"

    # --max-minutes 0: stops before the first epoch, and the record says so.
    _main(offline, "--quick", "--nets", "resnet8", "--seeds", "0", "--max-minutes", "0")
    stopped = json.loads(record_path.read_text())
    assert stopped["epochs_completed"] == 0 and stopped["done"] is False and stopped["history"] is None
    assert stopped["stopped"].startswith("time limit") and not checkpoint.exists()

    # No limit: the run finishes, and the record has every field of the schema.
    _main(offline, "--quick", "--nets", "resnet8", "--seeds", "0")
    record = json.loads(record_path.read_text())
    for key in ("command", "commit", "date", "device", "torch", "mode", "net", "seed", "recipe", "data", "history",
                "steps_per_epoch", "epochs_planned", "epochs_completed", "done", "final", "invocations", "checkpoint"):
        assert key in record, f"the record lacks {key!r}"
    assert record["command"].startswith("python scripts/reproduce.py --quick --nets resnet8")
    assert record["mode"] == "quick" and record["data"]["dataset"] == "fallback digits" and record["seed"] == 0
    assert record["data"]["train_images"] == 100 and record["steps_per_epoch"] == 4  # 10 per class, batch 32
    assert record["epochs_planned"] == 2 == record["epochs_completed"] and record["done"] is True
    assert list(record["history"]) == HISTORY_KEYS and record["history"]["epoch"] == [1, 2]
    assert record["history"]["iteration"] == [4, 8]
    history = train.load_checkpoint(checkpoint)["history"]
    assert record["history"]["test_error"] == pytest.approx([100 * (1 - a) for a in history["test_acc"]])
    assert record["final"]["test_error"] == record["history"]["test_error"][-1]

    # Again: nothing to do, and the record is left as it was.
    before = record_path.read_text()
    _main(offline, "--quick", "--nets", "resnet8", "--seeds", "0")
    assert record_path.read_text() == before
    assert "already done" in capsys.readouterr().out


def test_a_stopped_run_continues_where_it_stopped(offline, monkeypatch):
    recipe, plan = recipes.REPRODUCTION_SMOKE, reproduction.SMOKE_DATA
    splits = reproduction.load_splits(plan)
    paths = {"results_path": offline / "a.json", "checkpoint_path": offline / "a.pt"}
    options = {"splits": splits, "device": "cpu", "log": lambda line: None}

    # A fake clock that advances 10 s per reading: the first epoch "takes" 10 s (readings 10 and
    # 20), and with a deadline 25 s after the start no second one fits.
    ticks = iter(range(0, 10_000, 10))
    monkeypatch.setattr(train, "_clock", lambda: next(ticks))
    first = reproduction.run_reproduction("plain8", 3, recipe, plan, deadline=25, **paths, **options)
    assert first["epochs_completed"] == 1 and first["done"] is False and "time limit" in first["stopped"]
    assert train.load_checkpoint(paths["checkpoint_path"])["history"]["epoch"] == [1]

    resumed = reproduction.run_reproduction("plain8", 3, recipe, plan, **paths, **options)
    assert resumed["done"] and resumed["history"]["epoch"] == [1, 2]
    assert [i["epochs_before"] for i in resumed["invocations"]] == [0, 1]
    assert [i["epochs_after"] for i in resumed["invocations"]] == [1, 2]

    straight = reproduction.run_reproduction(
        "plain8", 3, recipe, plan, results_path=offline / "b.json", checkpoint_path=offline / "b.pt", **options
    )
    assert _without_seconds(resumed["history"]) == _without_seconds(straight["history"])


def test_resuming_refuses_a_changed_recipe_or_a_missing_checkpoint(offline):
    recipe, plan = recipes.REPRODUCTION_SMOKE, reproduction.SMOKE_DATA
    splits = reproduction.load_splits(plan)
    paths = {"results_path": offline / "r.json", "checkpoint_path": offline / "r.pt"}
    options = {"splits": splits, "device": "cpu", "log": lambda line: None}
    reproduction.run_reproduction("resnet8", 0, recipe, plan, **paths, **options)
    with pytest.raises(ValueError, match="different recipe"):
        reproduction.run_reproduction("resnet8", 0, recipe.replace(lr=0.05), plan, **paths, **options)

    record = json.loads(paths["results_path"].read_text())
    record["done"], record["epochs_completed"] = False, 1  # as if it had stopped after one epoch
    paths["results_path"].write_text(json.dumps(record))
    paths["checkpoint_path"].unlink()
    with pytest.raises(FileNotFoundError, match="checkpoint .* is missing"):
        reproduction.run_reproduction("resnet8", 0, recipe, plan, **paths, **options)


def test_a_record_of_other_training_code_is_trained_anew(offline, monkeypatch):
    """A finished record whose code fingerprint differs (utils changed since) is not reused."""
    recipe, plan = recipes.REPRODUCTION_SMOKE, reproduction.SMOKE_DATA
    splits = reproduction.load_splits(plan)
    paths = {"results_path": offline / "c.json", "checkpoint_path": offline / "c.pt"}
    options = {"splits": splits, "device": "cpu", "log": lambda line: None}
    old = reproduction.run_reproduction("resnet8", 0, recipe, plan, **paths, **options)
    assert old["done"]
    monkeypatch.setattr(reproduction.runs, "code_fingerprint", lambda: "0123456789abcdef")
    new = reproduction.run_reproduction("resnet8", 0, recipe, plan, **paths, **options)
    assert new["done"] and new["code"] == "0123456789abcdef" != old["code"]
    assert [i["epochs_before"] for i in new["invocations"]] == [0], "trained from scratch, not resumed"


def test_full_mode_refuses_the_digits_fallback(offline, monkeypatch):
    # utils.data itself stops in full mode when there is no CIFAR-10 ...
    with pytest.raises(SystemExit, match=r"full mode.*CIFAR-10 was not found"):
        _main(offline, "--mode", "full", "--nets", "resnet20", "--seeds", "0")
    # ... and should a loader hand over the fallback anyway, the reproduction refuses it.
    monkeypatch.setattr(data, "load_cifar10", lambda split: data.load_fallback_digits()[split])
    with pytest.raises(SystemExit, match="refusing to run on the offline digits FALLBACK"):
        _main(offline, "--mode", "full", "--nets", "resnet20", "--seeds", "0")
    assert not (offline / "res").exists() and not (offline / "ckpt").exists()


def test_command_line_errors_are_reported(offline, capsys):
    for args, message in [(["--nets", "resnet21"], "unknown net 'resnet21'"), (["--seeds", "a"], "invalid literal"),
                          (["--jobs", "0"], "--jobs 0"), (["--quick", "--mode", "full"], "contradict")]:  # fmt: skip
        with pytest.raises(SystemExit):
            _main(offline, *args)
        assert message in capsys.readouterr().err


def test_jobs_start_one_process_per_run_within_the_limit(offline, monkeypatch):
    started, alive = [], []

    class FakeProcess:
        def __init__(self, command):
            started.append(command)
            alive.append(self)
            assert len(alive) <= 2, "more processes at once than --jobs"
            self.polls = 0

        def poll(self):
            self.polls += 1
            if self.polls < 2:
                return None
            alive.remove(self)
            self.returncode = 0
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakeProcess)
    _main(offline, "--quick", "--nets", "resnet8,plain8", "--seeds", "0,1", "--jobs", "2", "--max-minutes", "5")
    assert len(started) == 4
    runs = sorted((c[c.index("--nets") + 1], c[c.index("--seeds") + 1]) for c in started)
    assert runs == [("plain8", "0"), ("plain8", "1"), ("resnet8", "0"), ("resnet8", "1")]
    for command in started:
        assert command[:2] == [sys.executable, str(SCRIPT)] and command[command.index("--mode") + 1] == "quick"
        assert command[command.index("--out") + 1] == str(offline / "res")
        assert 0 < float(command[command.index("--max-minutes") + 1]) <= 5


def test_nets_are_named_by_kind_and_depth():
    assert reproduction.parse_net("resnet110") == (True, 110) and reproduction.parse_net("plain20") == (False, 20)
    for bad in ("resnet21", "vgg16", "plain", "resnet2"):
        with pytest.raises(ValueError, match="unknown net"):
            reproduction.parse_net(bad)
    resnet, plain = reproduction.build_net("resnet20"), reproduction.build_net("plain20")
    count = sum(p.numel() for p in resnet.parameters())
    assert count == sum(p.numel() for p in plain.parameters())  # option A shortcuts have no weights
    assert round(count / 1e6, 2) == 0.27  # Table 6: "0.27M"


def _record(net, seed, test_errors, done=True, steps=10):
    """A synthetic run record with the fields the tables and figures read."""
    epochs = len(test_errors)
    history = {"epoch": list(range(1, epochs + 1)), "iteration": [steps * e for e in range(1, epochs + 1)],
               "train_error": [e + 1 for e in test_errors], "test_error": list(test_errors)}  # fmt: skip
    return {"net": net, "seed": seed, "mode": "full", "done": done, "epochs_completed": epochs,
            "epochs_planned": epochs if done else epochs + 5, "history": history,
            "final": {"test_error": test_errors[-1]} if done else None}  # fmt: skip


def test_comparison_table_averages_seeds_and_compares_with_table_6():
    records = [_record("resnet20", 0, [20.0, 8.5]), _record("resnet20", 1, [19.0, 9.0]),
               _record("resnet56", 0, [30.0, 8.0]), _record("plain20", 0, [25.0, 10.0]),
               _record("resnet110", 0, [40.0], done=False)]  # fmt: skip
    table = reproduction.comparison_table(records)
    assert list(table.index) == ["plain20", "resnet20", "resnet56"]  # unfinished runs are left out
    row = table.loc["resnet20"]
    assert row["runs"] == 2 and row["test error (%)"] == pytest.approx(8.75)
    assert row["std"] == pytest.approx(np.std([8.5, 9.0], ddof=1)) and row["within"]
    assert table.loc["resnet56", "difference"] == pytest.approx(8.0 - 6.97) and not table.loc["resnet56", "within"]
    assert np.isnan(table.loc["plain20", "paper (%)"]) and table.loc["plain20", "within"] is None
    assert reproduction.final_errors(records) == {"resnet20": [8.5, 9.0], "resnet56": [8.0], "plain20": [10.0]}

    missing = reproduction.outstanding_runs(records, nets=("resnet20", "resnet110"), seeds=(0, 1))
    assert missing == ["resnet110-seed0 (1/6 epochs)", "resnet110-seed1 (not started)"]


def test_degradation_figure_draws_train_and_test_curves_per_net():
    records = [_record("plain20", 0, [30.0, 20.0]), _record("plain20", 1, [32.0, 22.0, 12.0]),
               _record("resnet20", 0, [25.0, 15.0]), _record("resnet56", 0, [24.0, 12.0])]  # fmt: skip
    plain_ax, residual_ax = reproduction.plot_degradation(records)
    assert len(plain_ax.lines) == 2 and len(residual_ax.lines) == 4  # dashed training + solid test per net
    test_curve = plain_ax.lines[1]
    # The mean over seeds, on the epochs both runs reached.
    assert list(test_curve.get_xdata()) == [10, 20] and list(test_curve.get_ydata()) == pytest.approx([31.0, 21.0])
    assert [t.get_text() for t in residual_ax.get_legend().get_texts()] == ["ResNet-20", "ResNet-56"]


def test_results_load_sorted_by_net_and_filtered_by_mode(tmp_path):
    folder = tmp_path / "cifar10"
    folder.mkdir()
    for record in [_record("resnet20", 1, [9.0]), _record("plain56", 0, [12.0]), _record("resnet20", 0, [8.0])]:
        (folder / f"{record['net']}-seed{record['seed']}.json").write_text(json.dumps(record))
    quick = _record("resnet32", 0, [50.0]) | {"mode": "quick"}
    (folder / "resnet32-seed0.json").write_text(json.dumps(quick))
    loaded = reproduction.load_results(folder, mode="full")
    assert [(r["net"], r["seed"]) for r in loaded] == [("plain56", 0), ("resnet20", 0), ("resnet20", 1)]
    assert len(reproduction.load_results(folder)) == 4 and reproduction.load_results(tmp_path / "none") == []


def test_a_trained_checkpoint_loads_back(offline):
    splits = reproduction.load_splits(reproduction.SMOKE_DATA)
    checkpoint = offline / "c.pt"
    reproduction.run_reproduction("resnet8", 0, recipes.REPRODUCTION_SMOKE, results_path=offline / "c.json",
                              checkpoint_path=checkpoint, splits=splits, device="cpu",
                              log=lambda line: None)  # fmt: skip
    model = reproduction.load_trained("resnet8", checkpoint)
    saved = train.load_checkpoint(checkpoint)["model"]
    assert not model.training and all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
