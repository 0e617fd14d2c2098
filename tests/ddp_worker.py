"""Launched by tests/test_ddp.py with torchrun (2 CPU processes, gloo).

Trains with the ordinary ``fit`` on a toy set whose images carry their own index, records
which samples this rank saw in each epoch, and writes that, the history and the final
weights to ``<out>/rank<r>.pt``.
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from utils import data, models, train
from utils.recipes import Recipe

N, EPOCHS = 96, 3


class RecordingLoader:
    """Passes batches through and notes the index encoded in channel 0 of each image."""

    def __init__(self, loader):
        self.loader, self.seen = loader, []

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch):
        self.loader.set_epoch(epoch)
        self.seen.append([])

    def __iter__(self):
        for x, y in self.loader:
            raw = x[:, 0, 0, 0] * self.loader.std[0, 0, 0, 0] + self.loader.mean[0, 0, 0, 0]
            self.seen[-1].extend(raw.round().long().tolist())
            yield x, y


def main(out: Path) -> None:
    train.set_seed(0)
    labels = np.arange(N) % 4
    images = np.zeros((N, 8, 8, 3), dtype=np.uint8)
    images[..., 0] = np.arange(N)[:, None, None]  # the sample's index
    images[..., 1] = (labels * 60)[:, None, None]  # what the label depends on: learnable
    toy = data.ImageSet(images, labels, ("a", "b", "c", "d"), "toy")
    train_loader, evals = data.make_loaders(toy, {"all": toy}, batch_size=8, augment=False)
    recorder = RecordingLoader(train_loader)
    model = models.ResNet(models.BasicBlock, [1, 1], num_classes=4, stem="cifar", widths=(8, 16))
    history = train.fit(model, recorder, evals, recipe=Recipe(epochs=EPOCHS, lr=0.05), progress=False)
    rank = dist.get_rank()
    torch.save(
        {"rank": rank, "world_size": dist.get_world_size(), "seen": recorder.seen, "history": history,
         "state": model.state_dict()},
        out / f"rank{rank}.pt",
    )  # fmt: skip
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
