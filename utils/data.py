"""Datasets for the course: CIFAR-10 and MNIST, as uint8 arrays, and fast batch loaders.

Where CIFAR-10 comes from, in order (all inside the data directory, ``utils.config.data_dir()``):

1. a decoded cache ``cifar10-uint8.npz`` written by an earlier run;
2. torchvision's own format, ``cifar-10-batches-py/``;
3. an image-folder tree ``cifar10/{train,test}/<class>/*.{png,jpg}`` (fastai's layout), or a
   ``cifar10.tgz`` / ``cifar10.tar.gz`` archive of one;
4. a torchvision download (checksummed by torchvision);
5. quick mode only: an embedded fallback, scikit-learn's 8x8 handwritten digits resized to
   32x32, announced in one printed line. Full mode stops with an error instead.

Images are decoded once and cached; every file is written to a temporary name and renamed,
so an interrupted run never leaves a half-written cache behind.

The loaders keep the whole dataset as one uint8 tensor (on the GPU when training there) and
augment whole batches at once: no per-image Python or PIL work.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import config

__all__ = [
    "CIFAR10_CLASSES",
    "ImageSet",
    "DataUnavailableError",
    "load_cifar10",
    "load_mnist",
    "load_fallback_digits",
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
CACHE_NAME = "cifar10-uint8.npz"
ARCHIVE_NAMES = ("cifar10.tgz", "cifar10.tar.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_announced: set[str] = set()


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

    def subset(self, indices: np.ndarray) -> ImageSet:
        return replace(self, images=self.images[indices], labels=self.labels[indices])


# ----------------------------------------------------------------------------- reading


def _write_atomically(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def _load_cache(path: Path) -> dict[str, ImageSet]:
    with np.load(path) as z:
        classes = tuple(str(c) for c in z["classes"])
        source = f"{path} (cache of {z['source']})"
        return {s: ImageSet(z[f"{s}_images"], z[f"{s}_labels"], classes, source) for s in ("train", "test")}


def _save_cache(path: Path, sets: dict[str, ImageSet]) -> None:
    arrays = {f"{s}_{k}": getattr(sets[s], k) for s in ("train", "test") for k in ("images", "labels")}

    def write(f):
        np.savez(f, classes=np.array(sets["train"].classes), source=np.array(sets["train"].source), **arrays)

    _write_atomically(path, write)


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
        raise DataUnavailableError(
            f"{dataset} was not found in {root} and could not be downloaded ({reason}). Full mode needs the real "
            f"data: put a copy in that folder ({', '.join(ARCHIVE_NAMES)} or torchvision's format) or set "
            f"{config.DATA_VARIABLE} to a folder that has one."
        )
    if dataset not in _announced:
        _announced.add(dataset)
        print(
            f"NOTE: {dataset} is not available here ({reason}); quick mode is using an embedded FALLBACK instead: "
            f"scikit-learn's 8x8 handwritten digits resized to {size}x{size}. Results below are NOT {dataset} results."
        )
    return load_fallback_digits(size=size, channels=channels)


def load_cifar10(split: str = "train", data_dir: str | os.PathLike | None = None, download: bool = True) -> ImageSet:
    """CIFAR-10 ``"train"`` (50,000 images) or ``"test"`` (10,000) as an ``ImageSet``."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; expected 'train' or 'test'")
    root = Path(data_dir).expanduser() if data_dir is not None else config.data_dir()
    cache = root / CACHE_NAME
    if cache.exists():
        return _load_cache(cache)[split]
    sets = _find_cifar10(root)
    if sets is None and download:
        try:
            sets = _read_torchvision(root, download=True)
        except Exception as err:  # no network, a proxy, a bad checksum...
            reason = f"download failed: {type(err).__name__}: {err}"
        else:
            reason = ""
    elif sets is None:
        reason = "downloads disabled"
    if sets is None:
        return _fallback_or_fail("CIFAR-10", root, reason, size=32, channels=3)[split]
    _save_cache(cache, sets)
    return sets[split]


def load_mnist(split: str = "train", data_dir: str | os.PathLike | None = None, download: bool = True) -> ImageSet:
    """MNIST ``"train"`` (60,000) or ``"test"`` (10,000), 28x28 grayscale, as an ``ImageSet``."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; expected 'train' or 'test'")
    from torchvision.datasets import MNIST

    root = Path(data_dir).expanduser() if data_dir is not None else config.data_dir()
    try:
        ds = MNIST(str(root), train=split == "train", download=False)
        source = str(root / "MNIST")
    except RuntimeError:  # not found locally
        if not download:
            return _fallback_or_fail("MNIST", root, "downloads disabled", size=28, channels=1)[split]
        try:
            ds = MNIST(str(root), train=split == "train", download=True)
            source = "torchvision download"
        except Exception as err:
            return _fallback_or_fail("MNIST", root, f"download failed: {type(err).__name__}", 28, 1)[split]
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


def channel_stats(data: ImageSet) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of the pixels, in [0, 1] units.

    Computed from the data rather than copied: a widely copied CIFAR-10 std
    (0.2023, 0.1994, 0.2010) is the mean of per-image stds, not the pixel std.
    """
    x = data.images.reshape(-1, data.images.shape[-1]).astype(np.float64) / 255.0
    return tuple(float(v) for v in x.mean(0)), tuple(float(v) for v in x.std(0))


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
