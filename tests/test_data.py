"""utils.data: reading archives and trees, the cache and its validation, the lock, downloads, MNIST,
the fallback, subsets and loaders."""

import gzip
import io
import os
import re
import socket
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from utils import data

CLASSES = data.CIFAR10_CLASSES
# The fixtures' labels.txt lists the classes in this order, unlike CIFAR-10's (alphabetical) one, so a
# reader that ignored labels.txt would give other label indices.
LABELS_ORDER = ("truck", "cat", "airplane", "ship", "dog", "automobile", "frog", "bird", "horse", "deer")
TRAIN_PER_CLASS, TEST_PER_CLASS = 3, 1


@pytest.fixture(autouse=True)
def tiny_cifar10(monkeypatch):
    """The fixtures hold 30 + 10 images: that is the complete CIFAR-10 here. No download is remembered."""
    monkeypatch.setattr(data, "CIFAR10_COUNTS", {"train": 10 * TRAIN_PER_CLASS, "test": 10 * TEST_PER_CLASS})
    monkeypatch.setattr(data, "_failed_downloads", {})
    monkeypatch.setattr(data, "_announced", set())


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")  # lossless, so pixels can be compared exactly
    return buffer.getvalue()


def _fake_images(rng, per_class: int):
    return {cls: [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(per_class)] for cls in CLASSES}


def _write_tree(root, labels_order=LABELS_ORDER):
    rng = np.random.default_rng(0)
    images = {"train": _fake_images(rng, TRAIN_PER_CLASS), "test": _fake_images(rng, TEST_PER_CLASS)}
    for split, per_class in images.items():
        for cls, arrays in per_class.items():
            (root / split / cls).mkdir(parents=True)
            for i, a in enumerate(arrays):
                (root / split / cls / f"{i:04d}.png").write_bytes(_png(a))
    if labels_order is not None:
        (root / "labels.txt").write_text("\n".join(labels_order) + "\n")
    return images


@pytest.fixture
def image_tree(tmp_path):
    """A tiny CIFAR-10 in fastai's layout: cifar10/{train,test}/<class>/*.png + labels.txt (LABELS_ORDER)."""
    root = tmp_path / "tree" / "cifar10"
    return root, _write_tree(root)


@pytest.fixture
def archive(tmp_path, image_tree):
    root, images = image_tree
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with tarfile.open(data_dir / "cifar10.tgz", "w:gz") as tar:
        tar.add(root, arcname="cifar10")
    return data_dir, images


def _no_download(monkeypatch):
    def fail(root, download):
        if download:
            raise OSError("network unreachable (simulated)")
        raise AssertionError("torchvision format should not be probed here")

    monkeypatch.setattr(data, "_read_torchvision", fail)


def _assert_labels_follow(loaded, images, split, order):
    """Every image carries the index of its class in ``order``, and the images are its own pixels."""
    assert loaded.classes == order
    position = 0
    for index, cls in enumerate(order):  # sorted by class index, then file name
        for array in images[split][cls]:
            assert loaded.labels[position] == index, f"{split} image {position} ({cls}) has label {loaded.labels[position]}"
            assert np.array_equal(loaded.images[position], array), f"{split} image {position} is not {cls}'s"
            position += 1
    assert position == len(loaded)


def test_reads_archive_with_labels_and_exact_pixels(archive):
    data_dir, images = archive
    train = data.load_cifar10("train", data_dir=data_dir)
    test = data.load_cifar10("test", data_dir=data_dir)
    assert train.images.shape == (30, 32, 32, 3) and test.images.shape == (10, 32, 32, 3)
    assert np.bincount(train.labels).tolist() == [3] * 10
    # labels.txt, not the alphabetical order, decides the indices: truck is 0, deer is 9.
    _assert_labels_follow(train, images, "train", LABELS_ORDER)
    _assert_labels_follow(test, images, "test", LABELS_ORDER)
    assert train.labels[0] == 0 and np.array_equal(train.images[0], images["train"]["truck"][0])


def test_reads_an_unpacked_tree(image_tree, tmp_path):
    root, images = image_tree
    train = data.load_cifar10("train", data_dir=root.parent)
    _assert_labels_follow(train, images, "train", LABELS_ORDER)


def test_without_labels_txt_the_classes_take_cifar10s_order(tmp_path):
    root = tmp_path / "cifar10"
    images = _write_tree(root, labels_order=None)
    _assert_labels_follow(data.load_cifar10("train", data_dir=tmp_path), images, "train", CLASSES)


def test_a_labels_txt_naming_other_classes_is_ignored(tmp_path):
    root = tmp_path / "cifar10"
    images = _write_tree(root, labels_order=("a", "b", "c", "d", "e", "f", "g", "h", "i", "j"))
    _assert_labels_follow(data.load_cifar10("train", data_dir=tmp_path), images, "train", CLASSES)


def test_cache_is_written_once_and_reused(archive):
    data_dir, _ = archive
    first = data.load_cifar10("train", data_dir=data_dir)
    cache = data_dir / data.CACHE_NAME
    assert cache.exists()
    (data_dir / "cifar10.tgz").unlink()  # the cache alone must now be enough
    again = data.load_cifar10("train", data_dir=data_dir)
    assert np.array_equal(first.images, again.images) and np.array_equal(first.labels, again.labels)
    assert "cache" in again.source
    assert not list(data_dir.glob(".*tmp"))


def _lock_files(folder):
    return {p.name for p in folder.iterdir() if p.name.endswith(".lock")}


def _rewrite_cache(path, **changes):
    with np.load(path) as z:
        arrays = {key: z[key] for key in z.files}
    arrays.update(changes)
    arrays = {key: value for key, value in arrays.items() if value is not None}
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("old format", r"is stale \(cache format 1; this version of utils.data writes format 2\)"),
        ("wrong count", r"it holds 29 train images; CIFAR-10 has 30"),
        ("wrong dtype", r"its train images are float32"),
        ("garbage", r"is damaged \("),
    ],
    ids=["old-format", "wrong-count", "wrong-dtype", "garbage"],
)
def test_a_stale_or_damaged_cache_is_decoded_again_and_says_why(archive, capsys, damage, reason):
    data_dir, images = archive
    cache = data_dir / data.CACHE_NAME
    data.load_cifar10("train", data_dir=data_dir)
    with np.load(cache) as z:
        train_images = z["train_images"]
    if damage == "old format":  # what the first version of utils.data wrote: no format_version
        _rewrite_cache(cache, format_version=None)
    elif damage == "wrong count":
        _rewrite_cache(cache, train_images=train_images[1:], train_labels=np.zeros(29, dtype=np.int64))
    elif damage == "wrong dtype":
        _rewrite_cache(cache, train_images=train_images.astype(np.float32))
    else:
        cache.write_bytes(b"PK\x03\x04 not really a zip file" * 10)
    capsys.readouterr()
    train = data.load_cifar10("train", data_dir=data_dir)
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("NOTE: the decoded cache") and "decoding CIFAR-10 again" in printed[0]
    assert re.search(reason, printed[0]), printed[0]
    _assert_labels_follow(train, images, "train", LABELS_ORDER)
    assert "(cache of" not in train.source, "the damaged cache must not be what was returned"
    # Rebuilt: the next load reads the new cache, silently.
    again = data.load_cifar10("train", data_dir=data_dir)
    assert "(cache of" in again.source and capsys.readouterr().out == ""
    with np.load(cache) as z:
        assert int(z["format_version"]) == data.CACHE_FORMAT and len(z["train_images"]) == 30


def test_a_copy_with_missing_images_is_rejected_and_not_cached(archive, monkeypatch):
    data_dir, _ = archive
    monkeypatch.setattr(data, "CIFAR10_COUNTS", {"train": 31, "test": 10})
    with pytest.raises(ValueError, match=r"cifar10\.tgz is not a complete copy of CIFAR-10: it holds 30 train images; CIFAR-10 has 31"):
        data.load_cifar10("train", data_dir=data_dir)
    assert not (data_dir / data.CACHE_NAME).exists()


def test_a_read_only_data_folder_is_decoded_in_memory(archive, monkeypatch, capsys):
    data_dir, images = archive
    writable = os.access
    # (chmod would not do: the tests may run as root, whom no permission bit stops)
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == data_dir else writable(path, mode))
    for _ in range(2):
        _assert_labels_follow(data.load_cifar10("train", data_dir=data_dir), images, "train", LABELS_ORDER)
    assert capsys.readouterr().out.count("is read-only: CIFAR-10 is decoded in memory") == 1
    assert sorted(p.name for p in data_dir.iterdir()) == ["cifar10.tgz"], "no cache, no lock file in a read-only folder"


# A child process that waits for its twin, then loads CIFAR-10 and notes in a shared log when it decodes.
_DECODING_CHILD = """
import sys, time
from pathlib import Path
from utils import data
data_dir, log, me, twin = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
data.CIFAR10_COUNTS = {"train": 30, "test": 10}
find = data._find_cifar10
def logged_find(root):
    with open(log, "a") as f:
        f.write(me.name + " decodes\\n")
    time.sleep(0.5)  # hold the decode open: without the lock, the twin would decode meanwhile too
    return find(root)
data._find_cifar10 = logged_find
me.touch()
deadline = time.monotonic() + 120
while not twin.exists():  # a barrier: both processes ask for the data at the same moment
    if time.monotonic() > deadline:
        sys.exit("the twin process never started")
    time.sleep(0.01)
train = data.load_cifar10("train", data_dir=data_dir)
print(len(train), int(train.images.sum()), int(train.labels.sum()))
"""


def test_two_processes_starting_at_once_decode_once(archive, tmp_path):
    data_dir, _ = archive
    log, ready = tmp_path / "decodes.log", [tmp_path / "ready-a", tmp_path / "ready-b"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    children = [
        subprocess.Popen([sys.executable, "-c", _DECODING_CHILD, str(data_dir), str(log), str(me), str(twin)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         cwd=Path(data.__file__).resolve().parents[1])  # this checkout's utils, whatever the cwd
        for me, twin in (ready, ready[::-1])
    ]  # fmt: skip
    outputs = [child.communicate(timeout=300) for child in children]
    for child, (out, err) in zip(children, outputs):
        assert child.returncode == 0, err[-3000:]
    assert len(log.read_text().splitlines()) == 1, f"decoded more than once: {log.read_text()!r}"
    assert outputs[0][0] == outputs[1][0] and outputs[0][0].startswith("30 ")
    assert (data_dir / data.CACHE_NAME).exists() and not list(data_dir.glob(".*tmp"))


def test_a_failed_download_is_tried_once_per_process_with_a_timeout(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESNET_MODE", "quick")
    attempts = []

    def offline(root, download):
        assert download, "no local copy is in an empty folder"
        attempts.append(socket.getdefaulttimeout())
        raise OSError("network unreachable (simulated)")

    monkeypatch.setattr(data, "_read_torchvision", offline)
    before = socket.getdefaulttimeout()
    for split in ("train", "test", "train"):
        assert data.load_cifar10(split, data_dir=tmp_path).source.startswith("fallback")
    assert attempts == [data.DOWNLOAD_TIMEOUT_S], "one download attempt, under the download timeout"
    assert socket.getdefaulttimeout() == before, "the timeout must not outlive the download"
    printed = capsys.readouterr().out
    assert printed.count("FALLBACK") == 1 and "download failed: OSError: network unreachable (simulated)" in printed
    assert "tried once in this process" in printed and f"times out after {data.DOWNLOAD_TIMEOUT_S} s" in printed
    # Another data folder is another copy: its download is tried on its own.
    data.load_cifar10("train", data_dir=tmp_path / "elsewhere")
    assert len(attempts) == 2


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_archive_gives_a_clear_error_and_no_cache(archive, damage):
    data_dir, _ = archive
    path = data_dir / "cifar10.tgz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"this is not a tar archive" * 100)
    with pytest.raises(ValueError, match=r"cifar10\.tgz.*(truncated or corrupt|damaged)"):
        data.load_cifar10("train", data_dir=data_dir)
    assert sorted(p.name for p in data_dir.iterdir() if p.name not in _lock_files(data_dir)) == ["cifar10.tgz"]  # no cache, no temp file


def test_archive_without_the_expected_layout_is_rejected(tmp_path):
    with tarfile.open(tmp_path / "cifar10.tgz", "w:gz") as tar:
        info = tarfile.TarInfo("cifar10/readme.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    with pytest.raises(ValueError, match="no images in the expected layout"):
        data.load_cifar10("train", data_dir=tmp_path)


def test_quick_mode_falls_back_to_embedded_digits_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESNET_MODE", "quick")
    _no_download(monkeypatch)
    train = data.load_cifar10("train", data_dir=tmp_path)
    test = data.load_cifar10("test", data_dir=tmp_path)
    printed = capsys.readouterr().out
    assert printed.count("FALLBACK") == 1 and "NOT CIFAR-10 results" in printed
    assert train.images.shape[1:] == (32, 32, 3) and len(train.classes) == 10
    assert len(train) + len(test) == 1797 and train.source.startswith("fallback")
    assert {p.name for p in tmp_path.iterdir()} == _lock_files(tmp_path)  # nothing cached for a fallback


def test_full_mode_without_data_stops_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_MODE", "full")
    _no_download(monkeypatch)
    with pytest.raises(data.DataUnavailableError, match=r"CIFAR-10 was not found in .*RESNET_DATA"):
        data.load_cifar10("train", data_dir=tmp_path)


def test_mnist_falls_back_in_quick_mode_after_one_download_attempt(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESNET_MODE", "quick")
    import torchvision.datasets

    downloads = []

    class OfflineMNIST:
        def __init__(self, root, train, download):
            if not download:
                raise RuntimeError("Dataset not found.")
            downloads.append(socket.getdefaulttimeout())
            raise OSError("offline (simulated)")

    monkeypatch.setattr(torchvision.datasets, "MNIST", OfflineMNIST)
    train = data.load_mnist("train", data_dir=tmp_path)
    test = data.load_mnist("test", data_dir=tmp_path)
    assert train.images.shape[1:] == (28, 28, 1) and test.source.startswith("fallback")
    assert capsys.readouterr().out.count("FALLBACK") == 1
    assert downloads == [data.DOWNLOAD_TIMEOUT_S]


def _idx(array: np.ndarray) -> bytes:
    """``array`` (uint8) in the idx format of MNIST's raw files: magic, dimensions, then the bytes."""
    magic = 0x0800 | array.ndim  # 0x08: unsigned bytes
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()


@pytest.fixture
def mnist_archive(tmp_path):
    """A tiny mnist.tgz in torchvision's raw layout: 5 training and 3 test images."""
    rng = np.random.default_rng(1)
    splits = {
        "train": (rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), np.array([5, 0, 4, 1, 9], dtype=np.uint8)),
        "t10k": (rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), np.array([7, 2, 1], dtype=np.uint8)),
    }
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with tarfile.open(data_dir / data.MNIST_ARCHIVE, "w:gz") as tar:
        for prefix, (images, labels) in splits.items():
            for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
                payload = _idx(array)
                info = tarfile.TarInfo(f"MNIST/raw/{prefix}-{kind}-ubyte")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return data_dir, {"train": splits["train"], "test": splits["t10k"]}


def test_mnist_is_read_from_mnist_tgz_extracted_once(mnist_archive, monkeypatch):
    data_dir, expected = mnist_archive

    def no_download(*args):
        raise AssertionError("mnist.tgz is there: nothing may be downloaded")

    monkeypatch.setattr(data, "_download_once", no_download)
    for split in ("train", "test"):
        loaded = data.load_mnist(split, data_dir=data_dir)
        images, labels = expected[split]
        assert loaded.images.shape == (len(images), 28, 28, 1) and loaded.images.dtype == np.uint8
        assert np.array_equal(loaded.images[..., 0], images) and loaded.labels.tolist() == labels.tolist()
        assert loaded.classes == tuple("0123456789")
    assert sorted(p.name for p in (data_dir / "MNIST" / "raw").iterdir()) == sorted(data.MNIST_RAW_FILES)
    # Extracted once: the raw files alone are now enough.
    (data_dir / data.MNIST_ARCHIVE).unlink()
    assert data.load_mnist("test", data_dir=data_dir).labels.tolist() == [7, 2, 1]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_mnist_tgz_gives_a_clear_error(mnist_archive, damage):
    data_dir, _ = mnist_archive
    path = data_dir / data.MNIST_ARCHIVE
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"not a tar archive" * 100)
    with pytest.raises(ValueError, match=r"mnist\.tgz is not a readable \.tgz archive.*truncated or corrupt"):
        data.load_mnist("train", data_dir=data_dir)
    assert not list(data_dir.rglob("*.tmp")), "no half-extracted file may be left behind"


def test_an_mnist_tgz_in_another_layout_is_rejected(tmp_path):
    with tarfile.open(tmp_path / data.MNIST_ARCHIVE, "w:gz") as tar:
        payload = gzip.compress(b"x" * 16)
        info = tarfile.TarInfo("mnist/train-images-idx3-ubyte.gz")  # the download's layout, not torchvision's raw one
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(ValueError, match=r"mnist\.tgz holds no MNIST/raw/ files"):
        data.load_mnist("train", data_dir=tmp_path)


def test_local_copies_ignore_what_runs_leave_behind(tmp_path):
    assert data.local_copies(tmp_path) == {"cifar10": False, "mnist": False}
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)  # what a failed MNIST download leaves
    (tmp_path / ".cifar10.lock").touch()
    assert data.local_copies(tmp_path) == {"cifar10": False, "mnist": False}
    (tmp_path / "cifar10.tgz").touch()
    (tmp_path / data.MNIST_ARCHIVE).touch()
    assert data.local_copies(tmp_path) == {"cifar10": True, "mnist": True}


def test_bad_split_names_the_value(tmp_path):
    with pytest.raises(ValueError, match="split='val'; expected 'train' or 'test'"):
        data.load_cifar10("val", data_dir=tmp_path)


def _toy_set(n_per_class=20, classes=10, size=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    images = rng.integers(0, 256, (len(labels), size, size, 3), dtype=np.uint8)
    return data.ImageSet(images, labels, tuple(map(str, range(classes))), "toy")


def test_class_balanced_subset_is_balanced_and_reproducible():
    toy = _toy_set()
    a, b = data.class_balanced_subset(toy, 5, seed=1), data.class_balanced_subset(toy, 5, seed=1)
    assert np.bincount(a.labels).tolist() == [5] * 10
    assert np.array_equal(a.images, b.images)
    assert np.bincount(data.class_balanced_subset(toy, 500).labels).tolist() == [20] * 10  # capped at the class size
    with pytest.raises(ValueError, match="per_class must be a positive integer, got 0"):
        data.class_balanced_subset(toy, 0)


def test_train_val_split_is_stratified_and_disjoint():
    toy = _toy_set()
    train, val = data.train_val_split(toy, 0.25, seed=0)
    assert len(train) == 150 and len(val) == 50
    assert np.bincount(val.labels).tolist() == [5] * 10
    rows = lambda s: {r.tobytes() for r in s.images}  # noqa: E731
    assert not rows(train) & rows(val) and len(rows(train) | rows(val)) == 200
    with pytest.raises(ValueError, match=r"val_size=1.5; expected a fraction"):
        data.train_val_split(toy, 1.5)


def test_channel_stats_are_pixel_statistics():
    toy = _toy_set()
    mean, std = data.channel_stats(toy)
    pixels = torch.tensor(toy.images, dtype=torch.float64).reshape(-1, 3) / 255
    assert np.allclose(mean, pixels.mean(0)) and np.allclose(std, pixels.std(0, unbiased=False))


def test_loader_normalises_and_covers_the_set_once_per_epoch():
    toy = _toy_set()
    mean, std = data.channel_stats(toy)
    loader = data.BatchLoader(toy, 64, mean, std, shuffle=True, seed=3)
    xs, ys = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    assert len(loader) == 4 and x.shape == (200, 3, 8, 8)
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    assert sorted(y.tolist()) == sorted(toy.labels.tolist())
    # Same epoch -> same order; next epoch -> a new order.
    assert torch.equal(torch.cat([b for _, b in loader]), y)
    loader.set_epoch(1)
    assert not torch.equal(torch.cat([b for _, b in loader]), y)


def test_augmentation_is_a_shifted_and_maybe_flipped_copy():
    toy = _toy_set(n_per_class=1)
    x = torch.tensor(toy.images).permute(0, 3, 1, 2).float()
    out = data.random_crop_flip(x, pad=2, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flips = 0
    for i in range(len(x)):
        candidates = [
            (flip, padded[i, :, dy : dy + 8, dx : dx + 8].flip(-1) if flip else padded[i, :, dy : dy + 8, dx : dx + 8])
            for dy in range(5) for dx in range(5) for flip in (False, True)
        ]  # fmt: skip
        matches = [flip for flip, c in candidates if torch.equal(c, out[i])]
        assert matches, f"image {i} is not a crop of its padded original"
        flips += matches[0]
    assert 0 < flips < len(x)


def _indexed_set(n: int) -> data.ImageSet:
    """n images whose pixels all hold the image's own index (n <= 256)."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 4, 4, 3)).copy()
    return data.ImageSet(images, np.arange(n) % 10, tuple(map(str, range(10))), "indexed")


def _shard_indices(loader) -> list[int]:
    # mean 0 and std 1/255 make the normalisation the identity: a pixel reads back as the image's index.
    return [int(v) for x, _ in loader for v in x[:, 0, 0, 0].round()]


def shard_problems(shards: list[list[int]], expected_total: int) -> list[str]:
    """Why these shards are not disjoint, equal and covering ``expected_total`` samples (empty if they are)."""
    problems = []
    for rank, shard in enumerate(shards):
        if len(set(shard)) != len(shard):
            problems.append(f"rank {rank} sees a sample twice")
    for a in range(len(shards)):
        for b in range(a + 1, len(shards)):
            if set(shards[a]) & set(shards[b]):
                problems.append(f"ranks {a} and {b} share {sorted(set(shards[a]) & set(shards[b]))[:5]}...")
    if len({len(shard) for shard in shards}) > 1:
        problems.append(f"shard sizes differ: {[len(shard) for shard in shards]}")
    if len(set().union(*map(set, shards))) != expected_total:
        problems.append(f"the shards cover {len(set().union(*map(set, shards)))} samples, expected {expected_total}")
    return problems


@pytest.mark.parametrize("world_size, n, batches", [(2, 200, 7), (3, 200, 5)])
def test_sharded_loaders_are_disjoint_and_cover_everything(world_size, n, batches):
    toy = _indexed_set(n)
    mean, std = (0.0,) * 3, (1 / 255,) * 3
    for epoch in range(2):
        shards = []
        for rank in range(world_size):
            loader = data.BatchLoader(toy, 16, mean, std, shuffle=True, rank=rank, world_size=world_size)
            loader.set_epoch(epoch)
            assert len(loader) == batches
            shards.append(_shard_indices(loader))
        # 200 samples on 3 ranks: 2 are left out, so that every rank runs as many batches.
        assert shard_problems(shards, n - n % world_size) == [], f"epoch {epoch}"


def test_the_shard_check_catches_overlapping_and_missing_shards():
    toy = _indexed_set(200)
    mean, std = (0.0,) * 3, (1 / 255,) * 3
    rank0 = _shard_indices(data.BatchLoader(toy, 16, mean, std, shuffle=True, rank=0, world_size=2))
    problems = shard_problems([rank0, rank0], 200)  # two ranks that both took rank 0's shard
    assert any("ranks 0 and 1 share" in p for p in problems) and any("cover 100 samples" in p for p in problems)
    assert any("sees a sample twice" in p for p in shard_problems([rank0 + rank0[:1], rank0[1:]], 200))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"mean": (0.5,)}, r"mean/std have 1/3 entries; expected 3"),
        ({"rank": 2, "world_size": 2}, r"rank=2 is not in \[0, world_size=2\)"),
    ],
)
def test_loader_rejects_bad_arguments(kwargs, message):
    args = {"batch_size": 4, "mean": (0.5,) * 3, "std": (0.2,) * 3} | kwargs
    with pytest.raises(ValueError, match=message):
        data.BatchLoader(_toy_set(), args.pop("batch_size"), args.pop("mean"), args.pop("std"), **args)


def test_pil_dataset_matches_the_arrays():
    toy = _toy_set()
    ds = data.to_pil_dataset(toy)
    image, label = ds[7]
    assert np.array_equal(np.asarray(image), toy.images[7]) and label == toy.labels[7]


def test_channel_stats_are_exact_and_remembered_only_while_the_images_live():
    import gc

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (50, 6, 6, 3), dtype=np.uint8)
    toy = data.ImageSet(images, np.zeros(50, dtype=np.int64), ("a",), "toy")
    mean, std = data.channel_stats(toy)
    pixels = images.reshape(-1, 3).astype(np.float64) / 255
    assert np.allclose(mean, pixels.mean(0), atol=1e-12) and np.allclose(std, pixels.std(0), atol=1e-12)
    assert data.channel_stats(toy) == (mean, std)
    remembered = len(data._channel_stats)
    del toy, images
    gc.collect()
    assert len(data._channel_stats) == remembered - 1, "a freed image array must leave the memo"


def test_origin_names_the_files_without_the_machine_folders():
    images = np.zeros((1, 2, 2, 3), np.uint8)
    cached = data.ImageSet(images, np.zeros(1), ("a",), "/srv/x/.data/cifar10-uint8.npz (cache of /srv/x/.data/cifar10.tgz)")
    assert cached.origin == "cifar10-uint8.npz (cache of cifar10.tgz)"
    assert data.ImageSet(images, np.zeros(1), ("a",), "torchvision download").origin == "torchvision download"
