"""Training throughput, side by side in one process: the classic loop vs the course's fast path.

Both ways train the same model on the same images with the same ``utils.train.fit``:

* classic: what the seed posts and d2l do: a torchvision ``DataLoader`` over PIL images with
  ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``, in fp32;
* fast: the whole uint8 dataset on the device, batched crop/flip there (``utils.data.BatchLoader``),
  the channels-last memory layout (faster on GPUs and, measured here, on this course's 2-core CPU
  too), and on a GPU mixed precision (``utils.train.default_precision``: bf16, or fp16 on a T4/V100);
  with ``--compile``, also the fast path under ``torch.compile``, timed separately.

Prints images/s for each, their ratio and, on a GPU, the model-FLOP utilisation (training
FLOPs per image = 3x the forward FLOPs counted by ``utils.cost``; peak from the device's
spec sheet), and writes everything with the command that produced it to a JSON file.

    python benchmarks/throughput.py                        # CPU: a short run
    python benchmarks/throughput.py --images 50000 --compile --out results/throughput-h100.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch.utils.data import DataLoader
from torchvision import transforms

from utils import cost, data, models, results, train
from utils.recipes import Recipe

# Dense bf16 tensor-core peaks from the vendors' spec sheets (FLOP/s, no sparsity).
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10G": 70e12,
    "T4": 65e12,  # fp16: the T4 has no bf16 tensor cores
}


def peak_flops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_FLOPS.items():  # ordered: "H100 PCIe" before "H100", "L40" before "L4"
        if key in device_name:
            return value
    return None


def build_model(name: str) -> torch.nn.Module:
    if name == "resnet18":
        return models.resnet18(num_classes=10, stem="cifar")
    if name.startswith("resnet") and name[6:].isdigit():
        return models.resnet_cifar(int(name[6:]))
    raise ValueError(f"unknown model {name!r}; expected resnet18 or resnet<6n+2> (e.g. resnet20, resnet56)")


def timed_fit(model, loader, device, batch_size: int, **options) -> float:
    """Seconds for one epoch of ``fit`` (a warm-up epoch on the same loader first)."""
    recipe = Recipe(epochs=1, batch_size=batch_size, lr=0.05, schedule="constant")
    model.to(device)
    train.fit(model, loader, recipe=recipe, progress=False, **options)  # warm-up: cudnn, compile, caches
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train.fit(model, loader, recipe=recipe, progress=False, **options)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", help="resnet18 (CIFAR stem) or resnet<6n+2>, e.g. resnet20")
    parser.add_argument("--images", type=int, default=None, help="images per timed epoch (default: 512 on CPU, 50000 on GPU)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers for the classic loop (default: min(4, cores))")
    parser.add_argument("--compile", action="store_true", help="also time the fast path under torch.compile")
    parser.add_argument("--no-channels-last", action="store_true", help="the fast path without channels-last")
    parser.add_argument("--out", default=None, help="JSON file to write (default: results/throughput-<device>-<model>.json)")
    args = parser.parse_args(argv)

    build_model(args.model)  # fail fast on a bad name, before any data is loaded
    device = train.default_device()
    on_gpu = device.type == "cuda"
    n_images = args.images or (50_000 if on_gpu else 512)
    if n_images < args.batch_size:
        parser.error(f"--images {n_images} must be at least --batch-size {args.batch_size}")
    workers = args.workers if args.workers is not None else min(4, os.cpu_count() or 1)

    # Taken before the run: the commit's dirty flag must describe the code that ran, not edits made meanwhile.
    report = results.run_metadata(["benchmarks/throughput.py", *(sys.argv[1:] if argv is None else argv)])
    report["load_average_before"] = results.load_average()
    train_set = data.load_cifar10("train")
    rng_indices = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))[:n_images].numpy()
    subset = train_set.subset(rng_indices)
    mean, std = data.channel_stats(train_set)

    classic_transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])  # fmt: skip
    classic_loader = DataLoader(
        data.to_pil_dataset(subset, classic_transform), batch_size=args.batch_size, shuffle=True,
        num_workers=workers, pin_memory=on_gpu, persistent_workers=workers > 0,
    )  # fmt: skip
    fast_loader = data.BatchLoader(subset, args.batch_size, mean, std, shuffle=True, augment=True, device=device)

    precision = train.default_precision(device)
    channels_last = not args.no_channels_last
    train.set_seed(0)
    classic_seconds = timed_fit(build_model(args.model), classic_loader, device, args.batch_size, precision="fp32")
    fast_options = {"precision": precision, "channels_last": channels_last}
    train.set_seed(0)
    fast_seconds = timed_fit(build_model(args.model), fast_loader, device, args.batch_size, **fast_options)
    compiled_seconds = None
    if args.compile:
        train.set_seed(0)
        compiled_seconds = timed_fit(
            build_model(args.model), fast_loader, device, args.batch_size, compile=True, **fast_options
        )

    macs = cost.count_macs(build_model(args.model), (1, 3, 32, 32))
    train_flops_per_image = 3 * 2 * macs  # forward + backward (about twice the forward), 2 FLOPs per MAC
    report |= {
        "model": args.model,
        "images": n_images,
        "batch_size": args.batch_size,
        "classic": {"images_per_s": n_images / classic_seconds, "seconds": classic_seconds, "workers": workers,
                    "precision": "fp32"},
        "fast": {"images_per_s": n_images / fast_seconds, "seconds": fast_seconds,
                 "precision": precision, "channels_last": channels_last, "compile": False},
        "speedup": classic_seconds / fast_seconds,
        "train_flops_per_image": train_flops_per_image,
        "data_source": train_set.source,
        "load_average_after": results.load_average(),
    }  # fmt: skip
    if compiled_seconds is not None:
        report["fast_compiled"] = report["fast"] | {
            "images_per_s": n_images / compiled_seconds, "seconds": compiled_seconds, "compile": True
        }
        report["speedup_compiled"] = classic_seconds / compiled_seconds
    peak = peak_flops(report["device"]) if on_gpu else None
    if peak:
        report["peak_flops"] = peak
        for way in ("classic", "fast", "fast_compiled"):
            if way in report:
                report[way]["mfu"] = report[way]["images_per_s"] * train_flops_per_image / peak

    print(f"device: {report['device']}   model: {args.model}   images: {n_images}   batch: {args.batch_size}")
    for way in ("classic", "fast", "fast_compiled"):
        if way not in report:
            continue
        r = report[way]
        mfu = f"   MFU {100 * r['mfu']:.1f} %" if "mfu" in r else ""
        print(f"{way:>13}: {r['images_per_s']:9.1f} images/s ({r['seconds']:.2f} s){mfu}")
    print(f" speedup: {report['speedup']:.2f}x")
    out = results.write_json(args.out or f"results/throughput-{results.device_slug(device)}-{args.model}.json", report)
    print(f"written: {out}")
    return report


if __name__ == "__main__":
    main()
