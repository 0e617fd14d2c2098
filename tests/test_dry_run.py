"""The full-mode dry run (scripts/dry_run.py, `make dry-run`): what it switches, and that it fails.

The dry run of the whole book itself runs in `make test` (after pytest); these tests check its
parts: `config.pick`'s dry value, `runs.load_finished` reading the capped run, and the page
executor, which must report a page that fails in full mode and pass one that runs.
"""

from __future__ import annotations

import json
import os

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from scripts import dry_run
from utils import config, runs


def test_pick_takes_the_dry_value_only_in_a_full_mode_dry_run(monkeypatch):
    monkeypatch.setenv("RESNET_DRY_RUN", "1")
    monkeypatch.setenv("RESNET_MODE", "quick")
    assert not config.is_dry_run() and config.pick(quick=1, full=2, dry=3) == 1
    monkeypatch.setenv("RESNET_MODE", "full")
    assert config.is_dry_run() and config.pick(quick=1, full=2, dry=3) == 3
    assert config.pick(quick=1, full=2) == 2, "without a dry value the dry run uses the full one"
    monkeypatch.setenv("RESNET_DRY_RUN", "0")
    assert not config.is_dry_run() and config.pick(quick=1, full=2, dry=3) == 2
    monkeypatch.setenv("RESNET_DRY_RUN", "maybe")
    with pytest.raises(ValueError, match="RESNET_DRY_RUN='maybe'"):
        config.is_dry_run()


def test_the_dry_run_reads_the_capped_run_which_never_passes_for_the_real_one(tmp_path, monkeypatch):
    spec = runs.CH04_MNIST
    dry = runs.dry_run_spec(spec)
    assert dry.recipe.epochs == runs.DRY_EPOCHS and dry.recipe.batch_size == runs.DRY_BATCH_SIZE
    assert dry.fingerprint() != spec.fingerprint()
    folder = tmp_path / "runs"
    folder.mkdir()
    (folder / f"{spec.name}.json").write_text(json.dumps({"done": True, "fingerprint": dry.fingerprint()}))
    monkeypatch.setenv("RESNET_MODE", "full")
    monkeypatch.setenv("RESNET_DRY_RUN", "0")
    assert runs.finished(spec, tmp_path) is None, "a capped record must not pass for the real run"
    with pytest.raises(runs.RunMissingError, match=spec.name):
        runs.load_finished(spec, tmp_path)
    monkeypatch.setenv("RESNET_DRY_RUN", "1")
    monkeypatch.setenv("RESNET_CHECKPOINTS", str(tmp_path / "checkpoints"))
    # The record is found; its checkpoint is not (none was trained here), and the error says where.
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "checkpoints")):
        runs.load_finished(spec, tmp_path)


def _page(tmp_path, name, *sources):
    path = tmp_path / name
    nbformat.write(new_notebook(cells=[new_code_cell(s) for s in sources]), path)
    return path


def test_the_executor_reports_a_page_that_fails_in_full_mode_and_passes_one_that_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dry_run, "_missing_datasets", lambda: [])  # the toy pages read no data
    good = _page(
        tmp_path, "01_good.ipynb",
        "from utils import config\nassert config.mode() == 'full' and config.is_dry_run()",
        "from pathlib import Path\nassert Path.cwd().name == 'pages', Path.cwd()",  # runs in its folder
    )  # fmt: skip
    bad = _page(tmp_path, "02_bad.ipynb", "x = 1", "raise RuntimeError('needs a finished run')")
    pages = tmp_path / "pages"
    pages.mkdir()
    good = good.rename(pages / good.name)
    kept = tmp_path / "executed"
    status = dry_run.main([str(good), str(bad), "--skip-runs", "--workdir", str(tmp_path / "w"), "--keep", str(kept)])
    out = capsys.readouterr().out
    assert status == 1
    assert "02_bad.ipynb failed" in out and "needs a finished run" in out
    assert "01_good.ipynb failed" not in out and "1 of 2 pages ran" in out
    executed = nbformat.read(kept / "01_good.ipynb", as_version=4)
    assert all(cell.get("execution_count") for cell in executed.cells), "the executed copy is kept"
    assert dry_run.main([str(good), "--skip-runs", "--workdir", str(tmp_path / "w")]) == 0


def test_without_the_datasets_it_says_so_and_fails_unless_asked_not_to(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dry_run, "_missing_datasets", lambda: ["MNIST"])
    page = _page(tmp_path, "01_page.ipynb", "x = 1")
    assert dry_run.main([str(page), "--workdir", str(tmp_path / "w")]) == 2
    out = capsys.readouterr().out
    assert "NOT RUN" in out and "real MNIST" in out
    assert dry_run.main([str(page), "--workdir", str(tmp_path / "w"), "--if-data"]) == 0
    assert not (tmp_path / "w").exists(), "nothing was trained"


def test_bad_arguments_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        dry_run.main([str(tmp_path / "missing.ipynb"), "--skip-runs"])
    assert "missing.ipynb" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        dry_run.main(["--jobs", "0", "--skip-runs"])
    assert "--jobs 0" in capsys.readouterr().err


def test_the_pages_find_the_capped_runs_and_their_checkpoints(tmp_path, monkeypatch, capsys):
    """What the dry run trains is what a full-mode page then loads: record and checkpoint alike."""
    from utils import data

    copies = data.local_copies(config.data_dir())
    if not copies["mnist"]:
        if os.environ.get("CI"):
            pytest.fail("CI must expose MNIST through RESNET_DATA (see .ci/run)")
        pytest.skip("no local copy of MNIST in RESNET_DATA")
    workdir = tmp_path / "dry"
    dry_run.prepare_runs(workdir, names=(runs.CH04_MNIST.name,))
    assert json.loads((workdir / "stamp.json").read_text())["runs"] == [runs.CH04_MNIST.name]
    for name, value in dry_run.dry_environment(workdir).items():
        if name.startswith("RESNET_"):
            monkeypatch.setenv(name, value)
    record, model = runs.load_finished(runs.CH04_MNIST)
    assert record["done"] and record["data"]["max_batches"] == runs.DRY_BATCHES and not model.training
    capsys.readouterr()
    dry_run.prepare_runs(workdir, names=(runs.CH04_MNIST.name,))  # the same code: reused, not trained again
    assert "reusing" in capsys.readouterr().out
