"""Trained weights committed to the repository, loaded only when their checksum matches.

``scripts/train_analysis_nets.py`` writes, for each net it trains, ``results/weights/<name>.pt``
(the bare ``state_dict``) and ``results/weights/<name>.json`` (its provenance: command,
commit, device, library versions, data, recipe, accuracies, and the ``.pt`` file's sha256).

``load_committed(name)`` finds both with ``utils.files.repo_file`` (so it works from a clone in
Colab too), refuses a ``.pt`` file whose sha256 differs from the one its JSON records, and loads
it with ``torch.load(..., weights_only=True)``: tensors only, no code. ``evaluation_loader``
normalises images exactly as the net was trained to see them (the training set's channel statistics, which
the JSON records).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from . import data, files, reproduction

__all__ = [
    "WEIGHTS_FOLDER",
    "ChecksumError",
    "CommittedNet",
    "sha256_of",
    "committed_record",
    "load_weights",
    "load_committed",
    "evaluation_loader",
]

WEIGHTS_FOLDER = "results/weights"


class ChecksumError(ValueError):
    """A weights file whose sha256 is not the one its provenance JSON records."""


class CommittedNet(NamedTuple):
    model: nn.Module  # in evaluation mode, on the CPU
    record: dict  # the provenance JSON


def sha256_of(path: str | os.PathLike) -> str:
    """The sha256 of a file, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def committed_record(name: str) -> dict:
    """The provenance JSON of the committed net ``name`` (e.g. ``"resnet20"``)."""
    return files.read_json(files.repo_file(f"{WEIGHTS_FOLDER}/{name}.json"))


def load_weights(path: str | os.PathLike, record: dict) -> nn.Module:
    """The net ``record`` describes with the weights in ``path``, after checking their sha256.

    Raises ``ChecksumError`` naming the file and both hashes when the file is not the one the
    record was written for (damaged, replaced, or a Git LFS pointer instead of the file).
    """
    path = Path(path)
    actual, expected = sha256_of(path), record["sha256"]
    if actual != expected:
        raise ChecksumError(
            f"{path.name}: sha256 {actual} does not match {expected}, the one its provenance "
            f"JSON records; the file is damaged or not the one trained (get it again from the "
            "repository, or retrain it with scripts/train_analysis_nets.py)"
        )
    model = reproduction.build_net(record["name"], record.get("num_classes", 10))
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def load_committed(name: str) -> CommittedNet:
    """The committed net ``name`` (``"resnet20"``, ``"plain20"``) and its provenance record."""
    record = committed_record(name)
    path = files.repo_file(f"{WEIGHTS_FOLDER}/{name}.pt")
    return CommittedNet(load_weights(path, record), record)


def evaluation_loader(
    images: data.ImageSet,
    record: dict,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
) -> data.BatchLoader:
    """A plain (unshuffled, unaugmented) loader of ``images``, normalised as ``record``'s net was trained."""
    stats = record["normalisation"]
    return data.BatchLoader(
        images, batch_size, tuple(stats["mean"]), tuple(stats["std"]), device=device
    )
