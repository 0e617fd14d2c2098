"""Datasets for the course: CIFAR-10 and MNIST, as uint8 arrays, and fast batch loaders.

Where CIFAR-10 comes from, in order (all inside the data directory, ``utils.config.data_dir()``):

1. a decoded cache ``cifar10-uint8.npz`` written by an earlier run, if it is valid (its format
   version, 50,000/10,000 images, their shape and dtype); a stale or damaged cache is decoded again,
   with one printed line saying why;
2. torchvision's own format, ``cifar-10-batches-py/``;
3. an image-folder tree ``cifar10/{train,test}/<class>/*.{png,jpg}`` (fastai's layout), or a
   ``cifar10.tgz`` / ``cifar10.tar.gz`` archive of one;
4. a torchvision download (checksummed by torchvision);
5. quick mode only: an embedded fallback, scikit-learn's 8x8 handwritten digits resized to
   32x32, announced in one printed line. Full mode stops with an error instead.

MNIST: torchvision's raw files ``MNIST/raw/*-ubyte``, else a ``mnist.tgz`` archive of them (extracted
into the data directory once), else a torchvision download, else the same fallback at 28x28.

Two processes may start at once (two notebooks, ``pytest -n 2``, ranks under ``torchrun``): a lock
file in the data directory (``utils.files.file_lock``) lets one of them download, decode and write
while the other waits and then reads what it wrote. Every file is written to a temporary name and
renamed (``utils.files.atomic_write``), so an interrupted run never leaves a half-written cache.
A process tries each download once, with a network timeout: a failure is remembered, not retried
on every call.

The loaders keep the whole dataset as one uint8 tensor (on the GPU when training there) and
augment whole batches at once: no per-image Python or PIL work.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
import shutil
import socket
import tarfile
import weakref
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from . import config, files

__all__ = [
    "CIFAR10_CLASSES",
    "ImageSet",
    "DataUnavailableError",
    "load_cifar10",
    "load_mnist",
    "load_fallback_digits",
    "local_copies",
    "class_balanced_subset",
    "train_val_split",
    "channel_stats",
    "BatchLoader",
    "make_loaders",
    "to_pil_dataset",
]

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR10_COUNTS = {"train": 50_000, "test": 10_000}
CIFAR10_IMAGE_SHAPE = (32, 32, 3)
CACHE_NAME = "cifar10-uint8.npz"
# Raise when the cache's layout or the decoding changes: caches of another format are decoded again.
CACHE_FORMAT = 2
ARCHIVE_NAMES = ("cifar10.tgz", "cifar10.tar.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MNIST_ARCHIVE = "mnist.tgz"
MNIST_RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# Seconds any one network operation of a download may stall before it fails (not the whole download).
DOWNLOAD_TIMEOUT_S = 30

_announced: set[str] = set()
# (dataset, data folder) -> why its download failed: one attempt per process, not one per call.
_failed_downloads: dict[tuple[str, str], str] = {}


class DataUnavailableError(RuntimeError):
    """No copy of the dataset was found and none could be downloaded."""


@dataclass(frozen=True)
class ImageSet:
    """Images as a uint8 array of shape (N, H, W, C), integer labels, and class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    source: str

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be a uint8 array of shape (N, H, W, C), got {self.images.dtype} {self.images.shape}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels; expected as many of each")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def origin(self) -> str:
        """``source`` by file name only, without the folders of the machine that read it: what a page prints."""
        return re.sub(r"(?:[A-Za-z]:)?[^\s()]*[/\\]", "", self.source)

    def subset(self, indices: np.ndarray) -> ImageSet:
        return replace(self, images=self.images[indices], labels=self.labels[indices])


# ----------------------------------------------------------------------------- locks and downloads


@contextlib.contextmanager
def _data_lock(root: Path, dataset: str) -> Iterator[bool]:
    """Hold the data folder's lock for ``dataset`` while downloading, decoding or writing it.

    Yields whether the folder is writable. A read-only folder (a shared copy) needs no lock, since
    nobody can write there; the caller then works in memory instead of writing a cache.
    """
    if not os.access(root, os.W_OK):
        yield False
        return
    with files.file_lock(root / f".{dataset.lower().replace('-', '')}.lock"):
        yield True


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """A default timeout for new sockets (torchvision's downloads take no timeout of their own)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds if previous is None else min(previous, seconds))
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download_once(dataset: str, root: Path, download: Callable[[], object]) -> tuple[object | None, str]:
    """``(download(), "")``, or ``(None, why it failed)``; a failed download is not tried again in this process."""
    key = (dataset, str(root.resolve()))
    if key in _failed_downloads:
        return None, _failed_downloads[key]
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return download(), ""
    except Exception as err:  # no network, a proxy, a timeout, a bad checksum...
        detail = " ".join(str(err).split())
        reason = (
            f"download failed: {type(err).__name__}: {detail} (tried once in this process; every network "
            f"operation times out after {DOWNLOAD_TIMEOUT_S} s)"
        )
        _failed_downloads[key] = reason
        return None, reason


def local_copies(root: str | os.PathLike) -> dict[str, bool]:
    """Which datasets have a copy in the data folder ``root`` (no download, no fallback needed).

    Derived files do not change the answer: a decoded cache only exists beside a copy, and an
    empty ``MNIST/raw`` folder (what a failed download leaves) is no copy. Creates nothing.
    """
    root = Path(root).expanduser()
    cifar10 = [CACHE_NAME, "cifar-10-batches-py", "cifar10", *ARCHIVE_NAMES]
    raw = root / "MNIST" / "raw"
    return {
        "cifar10": any((root / name).exists() for name in cifar10)
        or ((root / "train").is_dir() and (root / "test").is_dir()),
        "mnist": (root / MNIST_ARCHIVE).exists() or all((raw / name).is_file() for name in MNIST_RAW_FILES),
    }


# ----------------------------------------------------------------------------- reading CIFAR-10


def _decode(data: bytes, name: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


_MEMBER = re.compile(r"(?:^|/)(train|test)/([^/]+)/([^/]+)$")


def _read_image_files(items, source: str) -> dict[str, ImageSet]:
    """Decode ``(relative_path, read_bytes)`` pairs laid out as ``<split>/<class>/<file>``."""
    found: dict[str, list[tuple[str, str, bytes]]] = {"train": [], "test": []}
    labels_txt = None
    for rel_path, read in items:
        if rel_path.endswith("labels.txt"):
            labels_txt = read().decode().split()
            continue
        match = _MEMBER.search(rel_path)
        if match and rel_path.lower().endswith(IMAGE_SUFFIXES):
            split, cls, fname = match.groups()
            found[split].append((cls, fname, read()))
    if not found["train"] or not found["test"]:
        raise ValueError(
            f"{source} holds no images in the expected layout train/<class>/*.jpg and test/<class>/*.jpg "
            f"(found {len(found['train'])} train and {len(found['test'])} test images)"
        )
    names = sorted({cls for cls, _, _ in found["train"]})
    if labels_txt and sorted(labels_txt) == names:
        classes = tuple(labels_txt)
    elif sorted(CIFAR10_CLASSES) == names:
        classes = CIFAR10_CLASSES
    else:
        classes = tuple(names)
    index = {c: i for i, c in enumerate(classes)}
    sets = {}
    for split, entries in found.items():
        entries.sort(key=lambda e: (index.get(e[0], -1), e[1]))
        unknown = {cls for cls, _, _ in entries if cls not in index}
        if unknown:
            raise ValueError(f"{source}: {split} classes {sorted(unknown)} do not appear in train; expected {classes}")
        try:
            images = np.stack([_decode(data, f"{split}/{cls}/{fname}") for cls, fname, data in entries])
        except Exception as err:  # PIL raises several types for damaged files
            raise ValueError(f"{source}: an image could not be decoded ({err}); the copy is damaged") from err
        labels = np.array([index[cls] for cls, _, _ in entries], dtype=np.int64)
        sets[split] = ImageSet(images, labels, classes, source)
    return sets


def _read_archive(path: Path) -> dict[str, ImageSet]:
    try:
        with tarfile.open(path, "r:*") as tar:
            items = []
            for member in tar:  # streamed: no extraction to disk
                if member.isfile():
                    data = tar.extractfile(member).read()
                    items.append((member.name, lambda data=data: data))
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        detail = " ".join(str(err).split())  # tarfile's messages span several lines
        raise ValueError(
            f"{path} is not a readable .tgz archive ({type(err).__name__}: {detail}); it may be truncated or "
            f"corrupt: delete it and copy it again"
        ) from err
    return _read_image_files(items, str(path))


def _read_tree(root: Path) -> dict[str, ImageSet]:
    items = [
        (p.relative_to(root).as_posix(), p.read_bytes)
        for p in sorted(root.rglob("*"))
        if p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES or p.name == "labels.txt")
    ]
    return _read_image_files(items, str(root))


def _read_torchvision(root: Path, download: bool) -> dict[str, ImageSet]:
    from torchvision.datasets import CIFAR10

    sets = {}
    for split in ("train", "test"):
        ds = CIFAR10(str(root), train=split == "train", download=download)
        source = "torchvision download" if download else str(root / "cifar-10-batches-py")
        sets[split] = ImageSet(ds.data, np.asarray(ds.targets, dtype=np.int64), tuple(ds.classes), source)
    return sets


def _cifar10_problem(split: str, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> str | None:
    """What makes these arrays not CIFAR-10's ``split``, or None when they are."""
    expected = CIFAR10_COUNTS[split]
    if images.dtype != np.uint8 or images.shape[1:] != CIFAR10_IMAGE_SHAPE:
        return f"its {split} images are {images.dtype} of shape {images.shape}; expected uint8 (N, 32, 32, 3)"
    if len(images) != expected:
        return f"it holds {len(images):,} {split} images; CIFAR-10 has {expected:,}"
    if labels.shape != (len(images),) or labels.dtype != np.int64:
        return f"its {split} labels are {labels.dtype} of shape {labels.shape}; expected int64 ({len(images)},)"
    if len(classes) != len(CIFAR10_CLASSES):
        return f"it names {len(classes)} classes; CIFAR-10 has {len(CIFAR10_CLASSES)}"
    if labels.min() < 0 or labels.max() >= len(classes):
        return f"its {split} labels run from {labels.min()} to {labels.max()}; expected 0 to {len(classes) - 1}"
    return None


def _check_decoded(sets: dict[str, ImageSet]) -> None:
    for split, images in sets.items():
        problem = _cifar10_problem(split, images.images, images.labels, images.classes)
        if problem:
            raise ValueError(f"{images.source} is not a complete copy of CIFAR-10: {problem}. Delete it and copy it again.")


def _read_cache(path: Path, split: str) -> tuple[ImageSet | None, str | None]:
    """``split`` from the decoded cache, or ``(None, why it cannot be used)``; ``(None, None)`` when there is none."""
    if not path.exists():
        return None, None
    try:
        with np.load(path, allow_pickle=False) as z:
            version = int(z["format_version"]) if "format_version" in z.files else 1
            if version != CACHE_FORMAT:
                return None, f"is stale (cache format {version}; this version of utils.data writes format {CACHE_FORMAT})"
            classes = tuple(str(c) for c in z["classes"])
            source = str(z["source"])
            images, labels = z[f"{split}_images"], z[f"{split}_labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        detail = " ".join(str(err).split())
        return None, f"is damaged ({type(err).__name__}: {detail})"
    problem = _cifar10_problem(split, images, labels, classes)
    if problem:
        return None, f"is not a complete CIFAR-10 ({problem})"
    return ImageSet(images, labels, classes, f"{path} (cache of {source})"), None


def _save_cache(path: Path, sets: dict[str, ImageSet]) -> None:
    arrays = {f"{s}_{k}": getattr(sets[s], k) for s in ("train", "test") for k in ("images", "labels")}
    with files.atomic_write(path) as f:
        np.savez(
            f, format_version=np.array(CACHE_FORMAT), classes=np.array(sets["train"].classes),
            source=np.array(sets["train"].source), **arrays,
        )  # fmt: skip


def _find_cifar10(root: Path) -> dict[str, ImageSet] | None:
    """Read the first local copy found in ``root``; None if there is none."""
    if (root / "cifar-10-batches-py").is_dir():
        return _read_torchvision(root, download=False)
    for tree in (root / "cifar10", root):
        if (tree / "train").is_dir() and (tree / "test").is_dir():
            return _read_tree(tree)
    for name in ARCHIVE_NAMES:
        if (root / name).exists():
            return _read_archive(root / name)
    return None


def _fallback_or_fail(dataset: str, root: Path, reason: str, size: int, channels: int) -> dict[str, ImageSet]:
    if not config.is_quick():
        copies = ", ".join(ARCHIVE_NAMES) if dataset == "CIFAR-10" else MNIST_ARCHIVE
        raise DataUnavailableError(
            f"{dataset} was not found in {root} and could not be downloaded ({reason}). Full mode needs the real "
            f"data: put a copy in that folder ({copies} or torchvision's format) or set "
            f"{config.DATA_VARIABLE} to a folder that has one."
        )
    if dataset not in _announced:
        _announced.add(dataset)
        print(
            f"NOTE: {dataset} is not available here ({reason}); quick mode is using an embedded FALLBACK instead: "
            f"scikit-learn's 8x8 handwritten digits resized to {size}x{size}. Results below are NOT {dataset} results."
        )
    return load_fallback_digits(size=size, channels=channels)


def _data_root(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir``, or the configured data directory; created when missing (as downloads need it)."""
    if data_dir is None:
        return config.data_dir()
    root = Path(data_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise ValueError(f"data_dir={str(root)!r} is not a directory; expected a folder for datasets")
    with contextlib.suppress(OSError):  # a folder we may not create is treated as read-only below
        root.mkdir(parents=True, exist_ok=True)
    return root


def load_cifar10(split: str = "train", data_dir: str | os.PathLike | None = None, download: bool = True) -> ImageSet:
    """CIFAR-10 ``"train"`` (50,000 images) or ``"test"`` (10,000) as an ``ImageSet``."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; expected 'train' or 'test'")
    root = _data_root(data_dir)
    cache = root / CACHE_NAME
    cached, _ = _read_cache(cache, split)  # written atomically: safe to read without the lock
    if cached is not None:
        return cached
    with _data_lock(root, "CIFAR-10") as writable:
        # Whoever held the lock before may have just written the cache: read it again before decoding.
        cached, problem = _read_cache(cache, split)
        if cached is not None:
            return cached
        if problem:
            print(f"NOTE: the decoded cache {cache} {problem}; decoding CIFAR-10 again.")
        sets = _find_cifar10(root)
        reason = "downloads disabled"
        if sets is None and download:
            sets, reason = _download_once("CIFAR-10", root, lambda: _read_torchvision(root, download=True))
        if sets is not None:
            _check_decoded(sets)
            if writable:
                _save_cache(cache, sets)
            elif "read-only" not in _announced:
                _announced.add("read-only")
                print(f"NOTE: {root} is read-only: CIFAR-10 is decoded in memory, and again in every process.")
    if sets is None:
        return _fallback_or_fail("CIFAR-10", root, reason, size=32, channels=3)[split]
    return sets[split]


# ----------------------------------------------------------------------------- reading MNIST


def _extract_mnist(archive: Path, root: Path) -> None:
    """Copy the files ``MNIST/raw/*`` of ``archive`` into ``root/MNIST/raw``, each one atomically."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            extracted = 0
            for member in tar:
                parts = [part for part in PurePosixPath(member.name).parts if part != "."]
                if not member.isfile() or len(parts) != 3 or parts[:2] != ["MNIST", "raw"] or parts[2] == "..":
                    continue  # only torchvision's raw files, and nothing outside the data folder
                with files.atomic_write(root / "MNIST" / "raw" / parts[2]) as out:
                    shutil.copyfileobj(tar.extractfile(member), out)
                extracted += 1
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as err:  # not OSError: a full disk is no bad archive
        detail = " ".join(str(err).split())
        raise ValueError(
            f"{archive} is not a readable .tgz archive ({type(err).__name__}: {detail}); it may be truncated or "
            f"corrupt: delete it and copy it again"
        ) from err
    if not extracted:
        raise ValueError(f"{archive} holds no MNIST/raw/ files; expected torchvision's raw layout MNIST/raw/*-ubyte")


def _local_mnist(root: Path, train: bool):
    """torchvision's MNIST from the raw files in ``root/MNIST/raw``, or None if they are not all there."""
    from torchvision.datasets import MNIST  # looked up at each call, so tests can replace it

    try:
        return MNIST(str(root), train=train, download=False)
    except RuntimeError:  # "Dataset not found"
        return None


def load_mnist(split: str = "train", data_dir: str | os.PathLike | None = None, download: bool = True) -> ImageSet:
    """MNIST ``"train"`` (60,000) or ``"test"`` (10,000), 28x28 grayscale, as an ``ImageSet``."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; expected 'train' or 'test'")
    root = _data_root(data_dir)
    train = split == "train"
    source = str(root / "MNIST")
    ds = _local_mnist(root, train)
    reason = ""
    if ds is None:
        with _data_lock(root, "MNIST") as writable:
            ds = _local_mnist(root, train)  # extracted or downloaded by whoever held the lock before
            archive = root / MNIST_ARCHIVE
            if ds is None and archive.exists():
                if not writable:
                    raise ValueError(
                        f"{archive} cannot be extracted: {root} is read-only. Extract it yourself into a writable "
                        f"folder (tar xzf {archive} -C <folder>) and set {config.DATA_VARIABLE} to that folder."
                    )
                _extract_mnist(archive, root)
                ds = _local_mnist(root, train)
                if ds is None:
                    raise ValueError(
                        f"{archive} lacks some of torchvision's raw files MNIST/raw/{{{', '.join(MNIST_RAW_FILES)}}}"
                    )
            if ds is None and not download:
                reason = "downloads disabled"
            elif ds is None:

                def fetch():
                    from torchvision.datasets import MNIST

                    return MNIST(str(root), train=train, download=True)

                ds, reason = _download_once("MNIST", root, fetch)
                source = "torchvision download"
    if ds is None:
        return _fallback_or_fail("MNIST", root, reason, size=28, channels=1)[split]
    images = ds.data.numpy()[..., None]  # (N, 28, 28, 1)
    return ImageSet(images, ds.targets.numpy().astype(np.int64), tuple(str(i) for i in range(10)), source)


def load_fallback_digits(size: int = 32, channels: int = 3, test_fraction: float = 0.25) -> dict[str, ImageSet]:
    """scikit-learn's 1,797 real 8x8 handwritten digits, upsampled; a stratified train/test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # values 0..16
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).repeat(1, 1, 1, channels).numpy()
    labels = digits.target.astype(np.int64)
    full = ImageSet(images, labels, tuple(str(i) for i in range(10)), "fallback: scikit-learn digits")
    train, test = train_val_split(full, test_fraction, seed=0)
    return {"train": train, "test": test}


# ----------------------------------------------------------------------------- subsets


def class_balanced_subset(data: ImageSet, per_class: int, seed: int = 0) -> ImageSet:
    """Up to ``per_class`` images of every class, chosen at random (reproducibly), shuffled.

    Every class gets the same number: ``per_class``, or the size of the smallest class
    if that is smaller (the small offline fallback set has about 135 per class).
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class <= 0:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}")
    rng = np.random.default_rng(seed)
    counts = np.bincount(data.labels, minlength=len(data.classes))
    per_class = min(per_class, int(counts.min()))
    chosen = [rng.choice(np.flatnonzero(data.labels == c), per_class, replace=False) for c in range(len(counts))]
    return data.subset(rng.permutation(np.concatenate(chosen)))


def train_val_split(data: ImageSet, val_size: float | int, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """A stratified split: ``val_size`` is a fraction (0 < f < 1) or a number of images.

    The paper holds out 5,000 of CIFAR-10's 50,000 training images for validation
    ([v1], Sec. 4.2): ``train_val_split(train, 5000)``.
    """
    n = len(data)
    if isinstance(val_size, float) and 0 < val_size < 1:
        n_val = round(n * val_size)
    elif isinstance(val_size, int) and not isinstance(val_size, bool) and 0 < val_size < n:
        n_val = val_size
    else:
        raise ValueError(f"val_size={val_size!r}; expected a fraction in (0, 1) or a count in [1, {n - 1}]")
    rng = np.random.default_rng(seed)
    val = []
    for c in range(len(data.classes)):
        idx = rng.permutation(np.flatnonzero(data.labels == c))
        val.append(idx[: round(len(idx) * n_val / n)])
    val_idx = np.concatenate(val)
    train_mask = np.ones(n, dtype=bool)
    train_mask[val_idx] = False
    return data.subset(rng.permutation(np.flatnonzero(train_mask))), data.subset(rng.permutation(val_idx))


_channel_stats: dict[int, tuple[tuple[float, ...], tuple[float, ...]]] = {}


def channel_stats(data: ImageSet) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of the pixels, in [0, 1] units.

    Computed from the data rather than copied: a widely copied CIFAR-10 std
    (0.2023, 0.1994, 0.2010) is the mean of per-image stds, not the pixel std.
    """
    # Remembered per image array (until that array is freed): every loader of a split needs
    # them, and one pass over CIFAR-10's training set takes seconds.
    key = id(data.images)
    if key not in _channel_stats:
        # A histogram of the 256 grey levels per channel gives both moments exactly, without a
        # float64 copy of every pixel (370 MB for CIFAR-10's training set).
        levels = np.arange(256, dtype=np.float64) / 255.0
        means, stds = [], []
        for channel in range(data.images.shape[-1]):
            counts, _ = np.histogram(data.images[..., channel], bins=256, range=(0, 256))
            weights = counts / counts.sum()
            mean = float(weights @ levels)
            means.append(mean)
            stds.append(float(np.sqrt(max(0.0, weights @ (levels - mean) ** 2))))
        _channel_stats[key] = (tuple(means), tuple(stds))
        weakref.finalize(data.images, _channel_stats.pop, key, None)
    return _channel_stats[key]


# ----------------------------------------------------------------------------- loaders


class BatchLoader:
    """Iterates over ``(images, labels)`` batches of an ``ImageSet``, augmenting whole batches.

    The uint8 images move to ``device`` once. Each batch is cast to float, optionally
    augmented with the standard CIFAR recipe of [v1] Sec. 4.2 (pad 4 pixels with zeros,
    random crop back to size, random horizontal flip) and normalised with ``mean``/``std``.

    Shuffling is seeded by ``seed`` and the epoch number, so two runs see the same
    batches; ``set_epoch`` chooses the epoch (``fit`` calls it), as with
    ``DistributedSampler``. With ``world_size > 1`` (by default read from torchrun's
    ``RANK``/``WORLD_SIZE``) each rank gets a disjoint shard; up to ``world_size - 1``
    samples are left out so that every rank runs the same number of batches.
    """

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        shuffle: bool = False,
        augment: bool = False,
        pad: int = 4,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        # Under torchrun each process reads its shard from the environment, so code that
        # builds loaders runs unchanged on one process or many.
        rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        channels = data.images.shape[-1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std have {len(mean)}/{len(std)} entries; expected {channels} (one per channel)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is not in [0, world_size={world_size})")
        self.device = torch.device(device)
        self.images = torch.from_numpy(data.images).permute(0, 3, 1, 2).contiguous().to(self.device)  # uint8 NCHW
        self.labels = torch.from_numpy(data.labels).to(self.device)
        self.classes = data.classes
        self.batch_size, self.shuffle, self.augment, self.pad = batch_size, shuffle, augment, pad
        self.drop_last, self.seed, self.rank, self.world_size = drop_last, seed, rank, world_size
        shape = (1, channels, 1, 1)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(shape) * 255
        # A constant channel has std 0: dividing by at least one grey level keeps it finite.
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(shape).mul(255).clamp_min(1.0)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        """Indices of this rank's samples for the current epoch."""
        n = len(self.labels)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        # Every rank takes every world_size-th sample: disjoint shards that cover the set.
        # Truncating to a multiple of world_size keeps all ranks at the same batch count.
        usable = n - n % self.world_size
        return order[:usable][self.rank :: self.world_size]

    def __len__(self) -> int:
        n = len(self.labels) // self.world_size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order().to(self.device)
        g = torch.Generator(device=self.device).manual_seed(self.seed * 100_003 + self.epoch + 1)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start : start + self.batch_size]
            x = self.images[idx].float()
            if self.augment:
                x = random_crop_flip(x, self.pad, g)
            yield (x - self.mean) / self.std, self.labels[idx]


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pad a batch with zeros, crop each image at its own random offset, flip half of them."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1, 1, 1), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n, 1, 1, 1), device=x.device, generator=generator)
    rows = dy + torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = dx + torch.arange(w, device=x.device).view(1, 1, 1, w)
    flip = torch.rand((n, 1, 1, 1), device=x.device, generator=generator) < 0.5
    cols = torch.where(flip, dx + (w - 1) - torch.arange(w, device=x.device).view(1, 1, 1, w), cols)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channel = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, channel, rows, cols]


def make_loaders(
    train: ImageSet,
    evals: dict[str, ImageSet],
    batch_size: int = 128,
    *,
    augment: bool = True,
    device: str | torch.device = "cpu",
    seed: int = 0,
    eval_batch_size: int = 512,
    rank: int | None = None,
    world_size: int | None = None,
) -> tuple[BatchLoader, dict[str, BatchLoader]]:
    """A shuffled, augmented training loader and plain evaluation loaders.

    All use the training set's channel statistics for normalisation.
    """
    mean, std = channel_stats(train)
    train_loader = BatchLoader(
        train, batch_size, mean, std, shuffle=True, augment=augment, drop_last=False,
        device=device, seed=seed, rank=rank, world_size=world_size,
    )  # fmt: skip
    eval_loaders = {
        name: BatchLoader(data, eval_batch_size, mean, std, device=device, rank=rank, world_size=world_size)
        for name, data in evals.items()
    }
    return train_loader, eval_loaders


def to_pil_dataset(data: ImageSet, transform=None) -> torch.utils.data.Dataset:
    """The same images as a classic map-style dataset of PIL images (torchvision style).

    This is the pipeline the seed posts and d2l use (``DataLoader`` + PIL transforms);
    the course keeps it for comparison and for readers who want torchvision transforms.
    """
    return _PILDataset(data, transform)


class _PILDataset(torch.utils.data.Dataset):
    def __init__(self, data: ImageSet, transform=None):
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        from PIL import Image

        image = self.data.images[i]
        image = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        return (self.transform(image) if self.transform else image), int(self.data.labels[i])
