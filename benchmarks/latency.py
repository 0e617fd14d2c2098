"""What depth costs at inference: forward latency of ResNet-18/34/50/101/152 at 224x224.

For every depth and batch size, a few untimed warm-up ("burn-in") passes, then the mean, standard
deviation and minimum of the time per batch over repeated passes (``utils.cost.forward_latency``:
eval mode, no autograd, a GPU synchronised around every pass), as the TF-slim benchmark of the
seed posts does (10 burn-in steps, mean and sd over 100 batches of 32). Next to each timing it
records the model's parameters and multiply-adds (``utils.cost.count_macs``), so that latency can
be plotted against both, and writes everything, with the command, commit, device and versions
that produced it, to ``results/latency-<device>.json``.

    python benchmarks/latency.py                                   # quick mode: few repeats
    RESNET_MODE=full python benchmarks/latency.py                  # a GPU: 10 + 100 passes, fp32 and bf16
    python benchmarks/latency.py --depths 18 50 --batch-sizes 1 --image-size 64 --repeats 3 --out /tmp/x.json

On a CPU the thread count matters more than anything else: set it (``--threads`` or
``OMP_NUM_THREADS``) and say it when you quote a number; the JSON records it, the OpenMP settings
and the load average. On a busy machine, OpenMP threads that spin while they wait for each other
stall badly; ``OMP_WAIT_POLICY=PASSIVE`` makes them sleep instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch import nn

from utils import config, cost, models, results, train

DEPTHS = (18, 34, 50, 101, 152)
# Seed post 003 times TF-slim's ResNet-v2-152 (batch 32, 224x224, 10 burn-in steps, 100 batches)
# and says it takes "only about 50 % more" time than VGG and Inception: --also times those three the
# same way.
EXTRA_MODELS = cost.SEED_POST_003_MODELS
PRECISIONS = cost.InferenceWrapper.PRECISIONS
MEMORY_FORMATS = cost.InferenceWrapper.MEMORY_FORMATS
# The ImageNet ResNets shrink the input 32-fold before the global average pooling.
MIN_IMAGE_SIZE = 32


def build_model(depth: int) -> nn.Module:
    """torchvision's ImageNet ResNet of that depth (1000 classes), as ``utils.models`` builds it."""
    if depth not in DEPTHS:
        raise ValueError(f"no ResNet-{depth}; expected one of {DEPTHS}")
    return getattr(models, f"resnet{depth}")(num_classes=1000)


# The models of seed post 003's comparison and the deployed-model wrapper live in utils.cost, where
# chapter 9 finds them too.
build_extra = cost.seed_post_003_model
InferenceWrapper = cost.InferenceWrapper


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be zero or a positive integer")
    return value


def _depth(text: str) -> int:
    value = _positive_int(text)
    if value not in DEPTHS:
        raise argparse.ArgumentTypeError(f"no ResNet-{value}; choose from {', '.join(map(str, DEPTHS))}")
    return value


def cpu_model() -> str | None:
    """The processor's marketing name from /proc/cpuinfo (Linux), e.g. ``AMD EPYC``; None elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", type=_depth, nargs="+", default=list(DEPTHS), help="ResNet depths (default: all five)")
    parser.add_argument("--also", nargs="+", choices=EXTRA_MODELS, default=[],
                        help="also time these (seed post 003's comparison: resnet_v2_152 vgg16 inception_v3)")
    parser.add_argument("--batch-sizes", type=_positive_int, nargs="+", default=[1, 32], help="default: 1 32")
    parser.add_argument("--image-size", type=_positive_int, default=224, help="height = width in pixels (default 224)")
    parser.add_argument("--repeats", type=_positive_int, default=None, help="timed passes (default: quick 5, full 100)")
    parser.add_argument("--warmup", type=_non_negative_int, default=None, help="burn-in passes (default: quick 2, full 10)")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=None,
                        help="default: fp32 on a CPU, fp32 and bf16 on a GPU")  # fmt: skip
    parser.add_argument("--memory-format", choices=MEMORY_FORMATS, default=None,
                        help="default: contiguous (NCHW) on a CPU, channels_last (NHWC) on a GPU")  # fmt: skip
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: the GPU if there is one")
    parser.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: torch's, i.e. OMP_NUM_THREADS)")
    parser.add_argument("--out", default=None, help="JSON file (default: results/latency-<device>.json)")
    args = parser.parse_args(argv)

    if args.image_size < MIN_IMAGE_SIZE:
        parser.error(f"--image-size {args.image_size} is too small: the ImageNet ResNets need at least {MIN_IMAGE_SIZE} pixels")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available here")
    args.device = torch.device(args.device) if args.device else train.default_device()
    on_gpu = args.device.type == "cuda"
    args.repeats = args.repeats or config.pick(quick=5, full=100, dry=2)
    args.warmup = args.warmup if args.warmup is not None else config.pick(quick=2, full=10, dry=1)
    args.precisions = args.precisions or (["fp32", "bf16"] if on_gpu else ["fp32"])
    args.memory_format = args.memory_format or ("channels_last" if on_gpu else "contiguous")
    # Deduplicate, keeping the order given: each combination is measured once.
    args.depths, args.batch_sizes, args.precisions = (list(dict.fromkeys(v)) for v in (args.depths, args.batch_sizes, args.precisions))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    previous_threads, previous_cudnn_benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return measure(args, sys.argv[1:] if argv is None else argv)
    finally:
        # A caller in the same process (a test, a notebook) keeps its own settings.
        torch.set_num_threads(previous_threads)
        torch.backends.cudnn.benchmark = previous_cudnn_benchmark


def measure(args: argparse.Namespace, argv: list[str]) -> dict:
    """Time every (depth, precision, batch size) combination of ``args`` and write the JSON report."""
    device = args.device
    if device.type == "cuda":
        # Let cuDNN pick the fastest algorithm per shape; the warm-up passes pay for the search.
        torch.backends.cudnn.benchmark = True

    report = results.run_metadata(["benchmarks/latency.py", *argv])
    report |= {
        "image_size": args.image_size,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "cpu_model": cpu_model(),
        "threads": torch.get_num_threads(),
        # How the CPU threads were configured: not part of the command line, so recorded here.
        "environment": {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")},
        "memory_format": args.memory_format,
        "cudnn_benchmark": device.type == "cuda",
        "load_average_before": results.load_average(),
        "models": {},
        "measurements": [],
    }
    started = time.perf_counter()
    print(f"device: {report['device']}   threads: {report['threads']}   image: {args.image_size}x{args.image_size}   "
          f"warm-up {args.warmup}, then {args.repeats} timed passes")  # fmt: skip
    print(f"{'model':>10} {'batch':>5} {'precision':>9} {'ms per batch':>20} {'fastest':>9} {'images/s':>10}")
    for depth in [*args.depths, *args.also]:
        torch.manual_seed(0)
        model = build_model(depth) if isinstance(depth, int) else build_extra(depth)
        name = f"resnet{depth}" if isinstance(depth, int) else depth
        depth = depth if isinstance(depth, int) else None
        # Seed post 003's other networks at their own design size (Inception-v3: 299 for 224).
        size = args.image_size if depth else cost.seed_post_003_image_size(name, args.image_size)
        report["models"][name] = {
            "depth": depth,
            "params": models.count_parameters(model),
            "image_size": size,
            "macs_per_image": cost.count_macs(model, (1, 3, size, size)),
        }
        model.to(device=device, memory_format=torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format)
        for precision in args.precisions:
            wrapped = InferenceWrapper(model, precision, args.memory_format)
            for batch_size in args.batch_sizes:
                latency = cost.forward_latency(
                    wrapped, batch_size, size, device=device, repeats=args.repeats, warmup=args.warmup
                )
                row = {
                    "model": name,
                    "depth": depth,
                    "batch_size": batch_size,
                    "precision": precision,
                    "image_size": size,
                    "mean_ms": 1e3 * latency.mean,
                    "std_ms": 1e3 * latency.std,
                    # The fastest pass: other processes can only slow a pass down, so on a shared
                    # machine this is the steadiest of the three numbers.
                    "min_ms": 1e3 * latency.min,
                    "repeats": latency.repeats,
                    "images_per_s": batch_size / latency.mean,
                }
                report["measurements"].append(row)
                spread = f"{row['mean_ms']:.1f} ± {row['std_ms']:.1f}"
                print(f"{name:>10} {batch_size:>5} {precision:>9} {spread:>20} {row['min_ms']:>9.1f} {row['images_per_s']:>10.1f}")
        del model, wrapped
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["load_average_after"] = results.load_average()
    report["elapsed_s"] = time.perf_counter() - started
    if "resnet_v2_152" in args.also:
        report["seed_post_003"] = seed_post_003_ratios(report["measurements"])
        for line in report["seed_post_003"]["lines"]:
            print(line)
    out = results.write_json(args.out or f"results/latency-{results.device_slug(device)}.json", report)
    print(f"written: {out} ({report['elapsed_s']:.0f} s)")
    return report


def seed_post_003_ratios(measurements: list[dict]) -> dict:
    """How much slower ResNet-v2-152 ran than VGG-16 and Inception-v3, per batch size and precision."""
    mean = {(m["model"], m["batch_size"], m["precision"]): m["mean_ms"] for m in measurements}
    sizes = {m["model"]: m.get("image_size") for m in measurements}
    ratios, lines = {}, []
    for (model, batch, precision), ms in sorted(mean.items()):
        if model != "resnet_v2_152":
            continue
        for other in ("vgg16", "inception_v3"):
            if (other, batch, precision) in mean:
                ratio = ms / mean[(other, batch, precision)]
                ratios[f"{other}/batch{batch}/{precision}"] = ratio
                at = f" ({sizes[other]}x{sizes[other]})" if sizes.get(other) else ""
                lines.append(f"ResNet-v2-152 vs {other}{at}, batch {batch}, {precision}: {ratio:.2f}x the time")
    return {"ratios": ratios, "lines": lines}


if __name__ == "__main__":
    main()
