"""utils.runs: fingerprinted runs are reused when finished, resumed when partial, never mixed up."""

import numpy as np
import pytest
import torch

from utils import data, runs
from utils.recipes import Recipe

SPEC = runs.RunSpec(
    "toy-run", "resnet_cifar", Recipe(epochs=3, lr=0.05, batch_size=16),
    model_options=(("depth", 8),), val_size=16,
)


@pytest.fixture
def toy_data(monkeypatch, tmp_path):
    """A small learnable dataset in place of CIFAR-10, and scratch folders for records and checkpoints."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 24)
    base = rng.integers(40, 215, (4, 1, 1, 3))
    images = np.clip(base[labels] + rng.normal(0, 25, (len(labels), 8, 8, 3)), 0, 255).astype(np.uint8)
    toy = data.ImageSet(images, labels, ("a", "b", "c", "d"), "toy")
    monkeypatch.setattr(runs, "_load", lambda dataset: (toy, toy.subset(np.arange(32))))
    return {"results_dir": tmp_path / "results", "checkpoint_dir": tmp_path / "ckpt", "log": lambda line: None}


def _without_time(history):
    return {k: v for k, v in history.items() if k != "seconds"}


def test_a_run_is_trained_once_and_then_reused(toy_data):
    record = runs.execute(SPEC, **toy_data)
    assert record["done"] and record["epochs_completed"] == 3
    assert record["fingerprint"] == SPEC.fingerprint() and record["run"]["name"] == "toy-run"
    assert 0 <= record["final"]["test_acc"] <= 1 and record["data"]["test_images"] == 32
    assert record["history"]["epoch"] == [1, 2, 3] and "test_acc" not in record["history"]
    assert runs.finished(SPEC, toy_data["results_dir"]) == record
    said = []
    again = runs.execute(SPEC, **(toy_data | {"log": said.append}))
    assert again == record and "already done" in said[0]
    model = runs.trained_model(SPEC, record, toy_data["checkpoint_dir"])
    assert not model.training and isinstance(model(torch.zeros(1, 3, 8, 8)), torch.Tensor)


def test_a_partial_run_resumes_where_it_stopped(toy_data, tmp_path):
    partial = runs.execute(SPEC, epochs_now=1, **toy_data)
    assert not partial["done"] and partial["epochs_completed"] == 1 and partial["final"] is None
    assert runs.finished(SPEC, toy_data["results_dir"]) is None
    resumed = runs.execute(SPEC, **toy_data)
    straight = runs.execute(SPEC, **(toy_data | {"results_dir": tmp_path / "b", "checkpoint_dir": tmp_path / "c"}))
    assert resumed["done"] and _without_time(resumed["history"]) == _without_time(straight["history"])
    assert resumed["final"] == straight["final"]


def test_changing_the_training_code_means_training_again(toy_data, monkeypatch):
    first = runs.execute(SPEC, **toy_data)
    monkeypatch.setattr(runs, "code_fingerprint", lambda: "changed-utils")
    assert SPEC.fingerprint() != first["fingerprint"]
    assert runs.finished(SPEC, toy_data["results_dir"]) is None, "a record of other code must not be reused"
    said = []
    again = runs.execute(SPEC, **(toy_data | {"log": said.append}))
    assert "another fingerprint" in said[0] and again["fingerprint"] == SPEC.fingerprint()
    assert len(list(toy_data["checkpoint_dir"].iterdir())) == 2, "each fingerprint has its own checkpoint"


def test_the_fingerprint_covers_the_spec_and_the_code():
    assert SPEC.fingerprint() == runs.RunSpec(**{**SPEC.__dict__}).fingerprint()
    for change in ({"seed": 1}, {"val_size": 8}, {"recipe": SPEC.recipe.replace(lr=0.1)},
                   {"model_options": (("depth", 14),)}, {"dataset": "mnist"}):  # fmt: skip
        assert runs.RunSpec(**(SPEC.__dict__ | change)).fingerprint() != SPEC.fingerprint(), change
    assert runs.RunSpec(**(SPEC.__dict__ | {"chapter": "x"})).fingerprint() == SPEC.fingerprint()
    assert len(runs.code_fingerprint()) == 16


def test_capped_loaders_yield_a_few_batches_and_pass_on_the_epoch():
    class Loader:
        epoch = None

        def __len__(self):
            return 10

        def __iter__(self):
            return iter(range(10))

        def set_epoch(self, epoch):
            self.epoch = epoch

    loader = Loader()
    capped = runs.Capped(loader, 3)
    capped.set_epoch(4)
    assert len(capped) == 3 and list(capped) == [0, 1, 2] and loader.epoch == 4
    with pytest.raises(ValueError, match="batches=0 must be a positive integer"):
        runs.Capped(loader, 0)


def test_full_mode_refuses_the_digits_fallback(monkeypatch, tmp_path):
    monkeypatch.setenv("RESNET_MODE", "full")
    fallback = data.load_fallback_digits()
    monkeypatch.setattr(runs, "_load", lambda dataset: (fallback["train"], fallback["test"]))
    with pytest.raises(data.DataUnavailableError, match="needs the real cifar10"):
        runs.execute(SPEC, results_dir=tmp_path, checkpoint_dir=tmp_path, log=lambda line: None)


@pytest.mark.parametrize(
    "change, message",
    [({"dataset": "imagenet"}, "dataset='imagenet'"), ({"model": "vgg16"}, "model='vgg16'"),
     ({"name": "a/b"}, "must be a non-empty file name")],  # fmt: skip
)
def test_bad_specs_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        runs.RunSpec(**(SPEC.__dict__ | change))


def test_the_book_runs_build_their_models():
    for spec in runs.BOOK_RUNS:
        model = spec.build_model(10, 1 if spec.dataset == "mnist" else 3)
        assert model(torch.zeros(2, 1 if spec.dataset == "mnist" else 3, 32, 32)).shape == (2, 10)


def test_full_mode_chapters_read_a_finished_run_or_name_the_command(toy_data):
    with pytest.raises(runs.RunMissingError, match='make runs ARGS="--only toy-run"'):
        runs.load_finished(SPEC, toy_data["results_dir"], toy_data["checkpoint_dir"])
    runs.execute(SPEC, **toy_data)
    record, model = runs.load_finished(SPEC, toy_data["results_dir"], toy_data["checkpoint_dir"])
    assert record["done"] and not model.training
    train_set, val_set, test_set = runs.load_data(SPEC)
    assert (len(train_set), len(val_set), len(test_set)) == (80, 16, 32)
    assert record["data"]["train_images"] == len(train_set)


def test_the_code_fingerprint_ignores_docstrings_comments_and_layout(tmp_path, monkeypatch):
    package = tmp_path / "utils"
    package.mkdir()
    for name in runs.TRAINING_CODE:
        (package / name).write_text('"""Module."""\n\ndef f(x):\n    """Doc."""\n    return x + 1\n')
    monkeypatch.setattr(runs, "__file__", str(package / "runs.py"))
    first = runs.code_fingerprint()
    (package / "train.py").write_text('"""Other words."""\n\n\ndef f( x ):  # a comment\n    return x + 1\n')
    assert runs.code_fingerprint() == first, "docstrings, comments and layout are not what a run computes"
    (package / "train.py").write_text('def f(x):\n    return x + 2\n')
    assert runs.code_fingerprint() != first, "a change to the code must change the fingerprint"
