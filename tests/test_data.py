"""utils.data: reading archives and trees, the cache, the fallback, subsets and loaders."""

import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from utils import data

CLASSES = data.CIFAR10_CLASSES


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")  # lossless, so pixels can be compared exactly
    return buffer.getvalue()


def _fake_images(rng, per_class: int):
    return {cls: [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(per_class)] for cls in CLASSES}


@pytest.fixture
def image_tree(tmp_path):
    """A tiny CIFAR-10 in fastai's layout: cifar10/{train,test}/<class>/*.png + labels.txt."""
    rng = np.random.default_rng(0)
    images = {"train": _fake_images(rng, 3), "test": _fake_images(rng, 1)}
    root = tmp_path / "tree" / "cifar10"
    for split, per_class in images.items():
        for cls, arrays in per_class.items():
            (root / split / cls).mkdir(parents=True)
            for i, a in enumerate(arrays):
                (root / split / cls / f"{i:04d}.png").write_bytes(_png(a))
    # Index order differs from alphabetical order for nothing here, but labels.txt is honoured.
    (root / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    return root, images


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


def test_reads_archive_with_labels_and_exact_pixels(archive):
    data_dir, images = archive
    train = data.load_cifar10("train", data_dir=data_dir)
    test = data.load_cifar10("test", data_dir=data_dir)
    assert train.images.shape == (30, 32, 32, 3) and test.images.shape == (10, 32, 32, 3)
    assert train.classes == CLASSES
    assert np.bincount(train.labels).tolist() == [3] * 10
    # Files are sorted by class then name, so the first image is airplane/0000.png.
    assert np.array_equal(train.images[0], images["train"]["airplane"][0])
    assert np.array_equal(test.images[-1], images["test"]["truck"][0])
    assert train.labels[-1] == CLASSES.index("truck")


def test_reads_an_unpacked_tree(image_tree, tmp_path):
    root, images = image_tree
    train = data.load_cifar10("train", data_dir=root.parent)
    assert len(train) == 30 and np.array_equal(train.images[3], images["train"]["automobile"][0])


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


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_archive_gives_a_clear_error_and_no_cache(archive, damage):
    data_dir, _ = archive
    path = data_dir / "cifar10.tgz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"this is not a tar archive" * 100)
    with pytest.raises(ValueError, match=r"cifar10\.tgz.*(truncated or corrupt|damaged)"):
        data.load_cifar10("train", data_dir=data_dir)
    assert sorted(p.name for p in data_dir.iterdir()) == ["cifar10.tgz"]  # no cache, no temp file


def test_archive_without_the_expected_layout_is_rejected(tmp_path):
    with tarfile.open(tmp_path / "cifar10.tgz", "w:gz") as tar:
        info = tarfile.TarInfo("cifar10/readme.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    with pytest.raises(ValueError, match="no images in the expected layout"):
        data.load_cifar10("train", data_dir=tmp_path)


def test_quick_mode_falls_back_to_embedded_digits_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESNET_MODE", "quick")
    monkeypatch.setattr(data, "_announced", set())
    _no_download(monkeypatch)
    train = data.load_cifar10("train", data_dir=tmp_path)
    test = data.load_cifar10("test", data_dir=tmp_path)
    printed = capsys.readouterr().out
    assert printed.count("FALLBACK") == 1 and "NOT CIFAR-10 results" in printed
    assert train.images.shape[1:] == (32, 32, 3) and len(train.classes) == 10
    assert len(train) + len(test) == 1797 and train.source.startswith("fallback")
    assert not list(tmp_path.iterdir())  # nothing cached for a fallback


def test_full_mode_without_data_stops_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_MODE", "full")
    _no_download(monkeypatch)
    with pytest.raises(data.DataUnavailableError, match=r"CIFAR-10 was not found in .*RESNET_DATA"):
        data.load_cifar10("train", data_dir=tmp_path)


def test_mnist_falls_back_in_quick_mode(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESNET_MODE", "quick")
    monkeypatch.setattr(data, "_announced", set())
    import torchvision.datasets

    class OfflineMNIST:
        def __init__(self, root, train, download):
            raise RuntimeError("Dataset not found.") if not download else OSError("offline (simulated)")

    monkeypatch.setattr(torchvision.datasets, "MNIST", OfflineMNIST)
    train = data.load_mnist("train", data_dir=tmp_path)
    assert train.images.shape[1:] == (28, 28, 1) and "FALLBACK" in capsys.readouterr().out


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


def test_sharded_loaders_are_disjoint_and_cover_everything():
    toy = _toy_set()
    mean, std = data.channel_stats(toy)
    seen = []
    for rank in range(2):
        loader = data.BatchLoader(toy, 16, mean, std, shuffle=True, rank=rank, world_size=2)
        seen.append(torch.cat([x[:, 0, 0, 0] for x, _ in loader]))
        assert len(loader) == 7
    assert len(seen[0]) == len(seen[1]) == 100


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
