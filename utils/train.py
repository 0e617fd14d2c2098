"""Training and evaluation: one readable ``fit`` for every chapter.

``fit`` is plain PyTorch: SGD with momentum and weight decay, a learning-rate
schedule stepped once per iteration, cross-entropy on logits, a per-epoch history.
Options add what a GPU run wants (bf16 autocast, channels-last, ``torch.compile``)
and what a long run wants (atomic checkpoints, resuming) without changing the loop.
Under ``torchrun`` it trains with DistributedDataParallel.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "set_seed",
    "default_device",
    "init_distributed",
    "evaluate",
    "predict",
    "fit",
    "make_optimizer",
    "make_scheduler",
    "lr_factor",
    "SCHEDULES",
    "RESNET18_CIFAR10_RECIPE",
    "save_checkpoint",
    "load_checkpoint",
    "save_model",
    "load_model",
    "layer_grad_norms",
    "unwrap",
]

SCHEDULES = ("constant", "multistep", "cosine")

# The full-mode ResNet-18 (CIFAR stem) recipe for CIFAR-10: chapter 4 and
# benchmarks/time_to_accuracy.py both use it. Large batch with a proportionally larger
# rate and a short warm-up (Goyal et al. 2017), cosine decay, Nesterov momentum, label
# smoothing 0.1 (Szegedy et al. 2016). Assembled from that practice, not yet checked in full: the
# GPU run on the 45k/5k split (time_to_accuracy.py --eval-on val) is outstanding, see results/README.md.
RESNET18_CIFAR10_RECIPE = {
    "batch_size": 512,
    "epochs": 40,
    "lr": 0.2,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "schedule": "cosine",
    "warmup_epochs": 2,
    "label_smoothing": 0.1,
}
WARMUPS = ("linear", "constant")


def set_seed(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch so that CPU runs repeat exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    """This process's CUDA GPU when there is one (``LOCAL_RANK`` under torchrun), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init_distributed() -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment; return (rank, world size).

    Outside torchrun (no ``WORLD_SIZE`` in the environment) this does nothing and returns
    (0, 1). NCCL on GPUs, gloo on CPUs. ``fit`` calls it, so a script that trains with
    ``fit`` runs unchanged under ``torchrun --nproc_per_node=N``.
    """
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return 0, 1
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(default_device())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP and/or ``torch.compile`` wrappers (for clean state_dicts)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _is_main_process() -> bool:
    return not _distributed() or dist.get_rank() == 0


def _autocast(device: torch.device, amp: bool):
    # bf16 needs no loss scaling (unlike fp16), so the loop stays the same.
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable, device: torch.device | str | None = None, amp: bool = False
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` over ``loader`` (summed over ranks under DDP)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = model(x)
        totals[0] += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        totals[1] += (logits.argmax(1) == y).sum()
        totals[2] += len(y)
    if _distributed():
        dist.all_reduce(totals)
    model.train(was_training)
    loss_sum, correct, count = totals.tolist()
    if count == 0:
        raise ValueError("the loader yielded no samples; expected at least one batch")
    return loss_sum / count, correct / count


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and true labels for every sample of ``loader``, on the CPU."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    preds, labels = [], []
    for x, y in loader:
        preds.append(model(x.to(device)).argmax(1).cpu())
        labels.append(y.cpu())
    model.train(was_training)
    return torch.cat(preds), torch.cat(labels)


def make_optimizer(
    model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4, nesterov: bool = False
) -> torch.optim.SGD:
    """SGD with momentum; no weight decay on BatchNorm parameters and biases.

    Decaying BN scales and biases does not regularise anything useful and slows
    training (Goyal et al. 2017); all convolution and linear weights are decayed.
    """
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # foreach: one fused kernel launch per group instead of one per tensor.
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, foreach=True)


def lr_factor(
    step: int,
    *,
    total_steps: int,
    schedule: str = "cosine",
    milestones: tuple[int, ...] = (),
    gamma: float = 0.1,
    warmup_steps: int = 0,
    warmup: str = "linear",
    warmup_factor: float = 0.1,
) -> float:
    """The learning rate at ``step`` as a fraction of the base rate.

    ``multistep`` multiplies by ``gamma`` at each milestone (the paper: /10 at 32k and
    48k iterations); ``cosine`` decays to zero (Loshchilov and Hutter 2017). During the
    first ``warmup_steps`` the rate ramps linearly from ``warmup_factor`` to 1, or stays
    at ``warmup_factor`` (``warmup="constant"``, the paper's 0.01 for ResNet-110).
    """
    if step < warmup_steps:
        if warmup == "constant":
            return warmup_factor
        return warmup_factor + (1 - warmup_factor) * step / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "multistep":
        return gamma ** sum(step >= m for m in milestones)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    schedule: str = "cosine",
    milestones: Iterable[int] = (),
    gamma: float = 0.1,
    warmup_steps: int = 0,
    warmup: str = "linear",
    warmup_factor: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration scheduler over ``lr_factor``. Milestones are in iterations."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    if warmup not in WARMUPS:
        raise ValueError(f"unknown warmup {warmup!r}; expected one of {WARMUPS}")
    if warmup_steps < 0 or warmup_steps > total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps}]")
    factor = partial(
        lr_factor,
        total_steps=total_steps,
        schedule=schedule,
        milestones=tuple(int(m) for m in milestones),
        gamma=gamma,
        warmup_steps=warmup_steps,
        warmup=warmup,
        warmup_factor=warmup_factor,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def save_checkpoint(path: str | os.PathLike, **state) -> None:
    """``torch.save(state)`` to a temporary file beside ``path``, then rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers, no code."""
    return torch.load(path, map_location=map_location, weights_only=True)


def save_model(model: nn.Module, path: str | os.PathLike) -> None:
    """Save the bare model's ``state_dict`` (no ``module.`` or ``_orig_mod.`` prefixes), atomically."""
    save_checkpoint(path, model=unwrap(model).state_dict())


def load_model(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load weights saved by ``save_model`` (or ``fit``'s checkpoint) into ``model``."""
    state = load_checkpoint(path)
    unwrap(model).load_state_dict(state["model"])
    return model


def fit(
    model: nn.Module,
    train_loader: Iterable,
    eval_loaders: Mapping[str, Iterable] | None = None,
    *,
    epochs: int,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    nesterov: bool = False,
    schedule: str = "cosine",
    milestones: Iterable[float] = (),
    gamma: float = 0.1,
    warmup_epochs: float = 0,
    warmup: str = "linear",
    warmup_factor: float = 0.1,
    label_smoothing: float = 0.0,
    device: torch.device | str | None = None,
    amp: bool | None = None,
    channels_last: bool = False,
    compile: bool = False,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Train ``model`` for ``epochs`` epochs and return its history.

    Args:
        eval_loaders: loaders evaluated after every epoch, by name, e.g.
            ``{"val": val_loader, "test": test_loader}``; each adds ``<name>_loss`` and
            ``<name>_acc`` to the history.
        milestones: for ``schedule="multistep"``, in epochs (fractions allowed:
            the paper's 32k iterations at batch 128 on 45k images are 91.0 epochs).
        warmup_epochs: length of the warm-up, in epochs (fractions allowed).
        amp: bf16 autocast; default on for CUDA.
        checkpoint: a file saved atomically after every epoch; if it exists, training
            resumes from it and the returned history includes the earlier epochs.

    Returns:
        ``{"epoch", "lr", "train_loss", "train_acc", <name>_loss, <name>_acc, ..., "seconds"}``,
        one entry per epoch (``lr`` is the rate at the end of the epoch).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1)")
    init_distributed()
    device = torch.device(device) if device is not None else default_device()
    amp = device.type == "cuda" if amp is None else amp
    eval_loaders = dict(eval_loaders or {})
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError("train_loader has no batches; expected at least one")

    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, lr, momentum, weight_decay, nesterov)
    scheduler = make_scheduler(
        optimizer,
        total_steps=epochs * steps_per_epoch,
        schedule=schedule,
        milestones=[round(m * steps_per_epoch) for m in milestones],
        gamma=gamma,
        warmup_steps=round(warmup_epochs * steps_per_epoch),
        warmup=warmup,
        warmup_factor=warmup_factor,
    )
    history: dict[str, list[float]] = {"epoch": [], "lr": [], "train_loss": [], "train_acc": []}
    for name in eval_loaders:
        history[f"{name}_loss"], history[f"{name}_acc"] = [], []
    history["seconds"] = []

    start_epoch = 0
    if checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = {k: list(v) for k, v in state["history"].items()}
        start_epoch = len(history["epoch"])
        torch.set_rng_state(state["rng"])

    net = model
    if _distributed():
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:
        net = torch.compile(net)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    # Imported here: tqdm.auto warns in Jupyter without ipywidgets, so only when a bar is wanted.
    if progress and _is_main_process():
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm

    bar = tqdm(range(start_epoch, epochs), desc="epochs", disable=not (progress and _is_main_process()))
    for epoch in bar:
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        net.train()
        started = time.perf_counter()
        totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, amp):
                logits = net(x)
                loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            # Accumulate on the device: no GPU-to-CPU sync inside the loop.
            totals[0] += loss.detach() * len(y)
            totals[1] += (logits.detach().argmax(1) == y).sum()
            totals[2] += len(y)
        if _distributed():
            dist.all_reduce(totals)
        loss_sum, correct, count = totals.tolist()
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"training loss became {loss_sum / count} in epoch {epoch + 1}; lower lr={lr}?")
        history["epoch"].append(epoch + 1)
        history["lr"].append(optimizer.param_groups[0]["lr"])
        history["train_loss"].append(loss_sum / count)
        history["train_acc"].append(correct / count)
        for name, loader in eval_loaders.items():
            eval_loss, eval_acc = evaluate(net, loader, device, amp)
            history[f"{name}_loss"].append(eval_loss)
            history[f"{name}_acc"].append(eval_acc)
        history["seconds"].append(time.perf_counter() - started)
        bar.set_postfix({k: f"{v[-1]:.3f}" for k, v in history.items() if k.endswith(("loss", "acc"))})
        if checkpoint is not None and _is_main_process():
            save_checkpoint(
                checkpoint,
                model=unwrap(model).state_dict(),
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                history=history,
                rng=torch.get_rng_state(),
            )
    return history


def layer_grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """The gradient norm of every convolution and linear weight after one backward pass.

    Ordered from input to output, so a plot shows how the gradient changes with depth.
    """
    model.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    norms = {
        name: p.grad.norm().item()
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear)) and (p := module.weight).grad is not None
    }
    model.zero_grad(set_to_none=True)
    return norms
