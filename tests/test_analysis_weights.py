"""The committed nets of chapter 7 (results/weights/): they load, match their checksum and
architecture, still reach the accuracy their provenance JSON records, and a damaged copy is
refused. The script that made them is tested on a tiny run."""

import os
import shutil

import pytest
import torch

from scripts import train_analysis_nets as script
from utils import config, data, files, reproduction, train, weights

NETS = script.NETS


def _real_cifar10_here() -> bool:
    return bool(data.local_copies(config.data_dir())["cifar10"])


@pytest.mark.parametrize("name", NETS)
def test_committed_weights_match_their_checksum_and_architecture(name):
    record = weights.committed_record(name)
    path = files.repo_file(f"{weights.WEIGHTS_FOLDER}/{name}.pt")
    assert weights.sha256_of(path) == record["sha256"], f"{path.name} is not the file trained"
    model, loaded_record = weights.load_committed(name)
    assert loaded_record == record
    expected = reproduction.build_net(name).state_dict()
    got = model.state_dict()
    assert list(got) == list(expected), f"{name}: other parameter names than build_net's"
    for key, tensor in expected.items():
        assert got[key].shape == tensor.shape, f"{name}: {key} has another shape"
    assert not model.training, "a committed net loads in evaluation mode"
    residual, depth = reproduction.parse_net(name)
    assert all(block.residual == residual for block in model.modules() if hasattr(block, "residual"))
    for key in ("command", "commit", "device", "torch", "data", "recipe", "epochs"):
        assert record.get(key), f"{name}.json records no {key}"
    assert record["data"] == script.DATA_NAME


@pytest.mark.parametrize("name", NETS)
def test_committed_weights_reach_their_recorded_accuracy(name):
    if not _real_cifar10_here():
        if os.environ.get("CI"):
            pytest.fail("CI must expose CIFAR-10 through RESNET_DATA (see .ci/run)")
        pytest.skip("no local copy of CIFAR-10 in RESNET_DATA")
    model, record = weights.load_committed(name)
    images = script.accuracy_slice(data.load_cifar10("test"))
    assert len(images) == 1000
    _, accuracy = train.evaluate(model, weights.evaluation_loader(images, record))
    # The same images and weights as when the JSON was written: only the order of floating
    # point sums (threads, library version) may differ, which moves an image or two.
    assert accuracy == pytest.approx(record["final"]["test_slice_acc"], abs=0.005)
    # 1,000 of the 10,000 test images: within a few binomial standard errors of the whole.
    assert accuracy == pytest.approx(record["final"]["test_acc"], abs=0.05)
    assert record["final"]["test_acc"] > 0.2, f"{name} is barely trained"


def test_a_damaged_copy_is_refused(tmp_path):
    name = NETS[0]
    record = weights.committed_record(name)
    copy = tmp_path / f"{name}.pt"
    shutil.copyfile(files.repo_file(f"{weights.WEIGHTS_FOLDER}/{name}.pt"), copy)
    assert weights.load_weights(copy, record).state_dict().keys()  # the intact copy loads
    damaged = bytearray(copy.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    copy.write_bytes(bytes(damaged))
    with pytest.raises(weights.ChecksumError) as refused:
        weights.load_weights(copy, record)
    message = str(refused.value)
    assert copy.name in message and record["sha256"] in message
    assert weights.sha256_of(copy) in message


def test_the_script_trains_and_records_a_tiny_run(tmp_path, monkeypatch):
    """Two images a class for one epoch: the files appear, and the record describes them."""
    if not _real_cifar10_here():
        pytest.skip("no local copy of CIFAR-10 in RESNET_DATA")
    monkeypatch.setattr(script, "TRAIN_EVAL_PER_CLASS", 2)
    monkeypatch.setattr(script, "SLICE_PER_CLASS", 1)
    small_test = data.class_balanced_subset(data.load_cifar10("test"), 2, seed=0)
    real_load = data.load_cifar10
    monkeypatch.setattr(
        data, "load_cifar10", lambda split, **kw: small_test if split == "test" else real_load(split, **kw)
    )
    out = tmp_path / "weights"
    argv = ["--epochs", "1", "--nets", "plain20", "--per-class", "2", "--out", str(out)]
    assert script.main(argv + ["--checkpoint-dir", str(tmp_path / "ckpt")]) == 0
    record = files.read_json(out / "plain20.json")
    assert record["sha256"] == weights.sha256_of(out / "plain20.pt")
    assert record["train_images"] == 20 and record["epochs"] == 1
    model = weights.load_weights(out / "plain20.pt", record)
    _, accuracy = train.evaluate(model, weights.evaluation_loader(small_test, record))
    assert accuracy == pytest.approx(record["final"]["test_acc"])
    assert not list(out.glob(".*.tmp")), "no temporary file is left behind"
    assert torch.load(out / "plain20.pt", weights_only=True).keys() == model.state_dict().keys()
