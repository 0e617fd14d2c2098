"""Training and evaluation: one readable ``fit`` for every chapter.

``fit(model, train_loader, eval_loaders, recipe=...)`` is plain PyTorch: SGD with momentum
and weight decay, the learning rate of ``utils.recipes.lr_schedule`` set before every
iteration, cross-entropy on logits, a per-epoch history. It trains the model where the model
is (move it with ``model.to(device)`` first) and changes nothing about it but its weights.
Options add what a GPU run wants (mixed precision chosen by device, channels-last,
``torch.compile``) and what a long run wants (checkpoints that resume exactly, a deadline)
without changing the loop. Under ``torchrun`` it trains with DistributedDataParallel.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .files import atomic_write
from .recipes import Recipe, lr_schedule

__all__ = [
    "PRECISIONS",
    "set_seed",
    "default_device",
    "default_precision",
    "init_distributed",
    "unwrap",
    "evaluate",
    "predict",
    "make_optimizer",
    "fit",
    "train_one_epoch",
    "rng_state",
    "set_rng_state",
    "save_checkpoint",
    "load_checkpoint",
    "save_model",
    "load_model",
    "layer_grad_norms",
]

PRECISIONS = ("fp32", "bf16", "fp16")
History = dict[str, list[float]]
# The clock of ``fit``'s deadline; a test replaces it with a fake one.
_clock: Callable[[], float] = time.monotonic


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


def default_precision(device: torch.device | str) -> str:
    """The fastest safe precision on ``device``: fp32 on a CPU, bf16 or fp16 on a GPU.

    bf16 keeps fp32's exponent range, so it needs no loss scaling; GPUs compute it natively
    from compute capability 8.0 (A100, H100, L4). Older GPUs (Colab's T4, V100) emulate bf16
    slowly, so they get fp16 with a ``GradScaler``. A CPU gains little from autocast here.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp16"


def _autocast(device: torch.device, precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=precision != "fp32")


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; expected one of {PRECISIONS}")


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


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _is_main_process() -> bool:
    return not _distributed() or dist.get_rank() == 0


def _from_main_process(value):
    """Rank 0's ``value`` on every rank (a no-op outside DDP): rank 0 decides, the others follow."""
    if not _distributed():
        return value
    box = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP and/or ``torch.compile`` wrappers (for clean state_dicts)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable, device: torch.device | str | None = None, precision: str = "fp32"
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` over ``loader`` (summed over ranks under DDP).

    Runs in evaluation mode (BatchNorm uses its running statistics) and restores the
    model's mode afterwards. ``device`` defaults to the model's.
    """
    _check_precision(precision)
    device = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, precision):
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
    device = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    preds, labels = [], []
    for x, y in loader:
        preds.append(model(x.to(device)).argmax(1).cpu())
        labels.append(y.cpu())
    model.train(was_training)
    return torch.cat(preds), torch.cat(labels)


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.SGD:
    """SGD with the recipe's momentum; weight decay on convolution and linear weights only.

    Decaying BatchNorm scales and biases does not regularise anything useful and slows
    training (Goyal et al. 2017). The paper decays all weights; the reproduction records
    this difference in every result file.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # foreach: one fused kernel launch per group instead of one per tensor.
    return torch.optim.SGD(
        groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov, foreach=True
    )


# ----------------------------------------------------------------------------- checkpoints


def rng_state() -> dict:
    """Every random-number state a run depends on (CPU, CUDA, NumPy, Python), as plain tensors.

    Plain values only, so that a checkpoint still loads with ``weights_only=True``.
    """
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": random.getstate(),
    }


def set_rng_state(state: Mapping) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path: str | os.PathLike, **state) -> None:
    """``torch.save(state)`` to a temporary file beside ``path``, then rename it.

    A reader sees the old checkpoint or the new one, never a half-written file.
    """
    with atomic_write(path) as f:
        torch.save(state, f)


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict:
    """Load a checkpoint with ``weights_only=True``: tensors and containers, no code."""
    return torch.load(path, map_location=map_location, weights_only=True)


def save_model(model: nn.Module, path: str | os.PathLike) -> None:
    """Save the bare model's ``state_dict`` (no ``module.`` or ``_orig_mod.`` prefixes), atomically."""
    save_checkpoint(path, model=unwrap(model).state_dict())


def load_model(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load weights saved by ``save_model`` (or ``fit``'s checkpoint) into ``model``."""
    unwrap(model).load_state_dict(load_checkpoint(path)["model"])
    return model


def _run_identity(model: nn.Module, recipe: Recipe, steps_per_epoch: int) -> dict:
    """What a checkpoint must match to be resumed: the recipe, the batches per epoch, the architecture."""
    shapes = ";".join(f"{k}:{tuple(v.shape)}" for k, v in unwrap(model).state_dict().items())
    return {
        "recipe": recipe.as_dict(),
        "steps_per_epoch": steps_per_epoch,
        "model": f"{type(unwrap(model)).__name__}:{hashlib.sha256(shapes.encode()).hexdigest()[:16]}",
    }


def _resume(path: Path, identity: dict, model, optimizer, scaler) -> History | None:
    """Load ``path`` into the model, optimizer, scaler and RNGs if it exists; return its history.

    Rank 0 reads the file and hands it to the other ranks, so nodes without shared storage
    resume together. A checkpoint of another run (recipe, batches or architecture) is never
    resumed: the error says which of them differs.
    """
    state = load_checkpoint(path) if _is_main_process() and path.exists() else None
    state = _from_main_process(state)
    if state is None:
        return None
    changed = [key for key, value in identity.items() if state.get("identity", {}).get(key) != value]
    if changed:
        raise ValueError(
            f"{path} is a checkpoint of another run (its {', '.join(changed)} differ from this one's); "
            "delete it or pass another checkpoint path to train from scratch"
        )
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return {k: list(v) for k, v in state["history"].items()}


# ----------------------------------------------------------------------------- the loop


def train_one_epoch(
    net: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    rates: list[float],
    loss_fn: nn.Module,
    *,
    scaler: torch.amp.GradScaler,
    precision: str = "fp32",
    channels_last: bool = False,
) -> tuple[float, float]:
    """One pass over ``loader`` with ``rates[i]`` as the learning rate of batch ``i``; (loss, accuracy)."""
    device = _model_device(net)
    net.train()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    for rate, (x, y) in zip(rates, loader, strict=True):
        for group in optimizer.param_groups:
            group["lr"] = rate
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, precision):
            logits = net(x)
            loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # fp16 only: scale the loss so small gradients survive
        scaler.step(optimizer)
        scaler.update()
        # Accumulate on the device: no GPU-to-CPU sync inside the loop.
        totals[0] += loss.detach() * len(y)
        totals[1] += (logits.detach().argmax(1) == y).sum()
        totals[2] += len(y)
    if _distributed():
        dist.all_reduce(totals)
    loss_sum, correct, count = totals.tolist()
    return loss_sum / count, correct / count


def _out_of_time(deadline: float | None, pace: list[float]) -> bool:
    """Whether the next epoch would probably end after ``deadline`` (a ``time.monotonic()`` value).

    Before the first epoch of this process has been timed, one epoch is tried if any time is left.
    """
    if deadline is None:
        return False
    remaining = deadline - _clock()
    return _from_main_process(remaining <= (1.1 * max(pace) if pace else 0.0))


def fit(
    model: nn.Module,
    train_loader: Iterable,
    eval_loaders: Mapping[str, Iterable] | None = None,
    *,
    recipe: Recipe,
    precision: str | None = None,
    channels_last: bool = False,
    compile: bool = False,
    checkpoint: str | os.PathLike | None = None,
    deadline: float | None = None,
    on_epoch: Callable[[History], bool | None] | None = None,
    progress: bool = True,
) -> History:
    """Train ``model`` where it is, by ``recipe``; return its history, one row an epoch.

    ``eval_loaders`` ({"val": loader, ...}) are evaluated after every epoch.
    ``precision`` defaults to ``default_precision`` of the model's device.
    ``checkpoint`` is written atomically after every epoch; if it exists, training
    resumes from it exactly. With ``deadline`` (a ``time.monotonic()`` value) training
    stops between epochs once the next one would not finish in time: the history is
    then shorter than ``recipe.epochs``. ``on_epoch(history)`` runs after every epoch
    (on rank 0 only); if it returns True, training stops there.

    Returns ``{"epoch", "lr", "train_loss", "train_acc", <name>_loss, <name>_acc, ...,
    "seconds"}``; ``lr`` is the rate of the epoch's last iteration.
    """
    init_distributed()
    device = _model_device(model)
    precision = precision or default_precision(device)
    _check_precision(precision)
    steps = len(train_loader)
    rates = lr_schedule(recipe, steps)
    optimizer = make_optimizer(model, recipe)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    history = _empty_history(eval_loaders or {})
    identity = _run_identity(model, recipe, steps)
    if checkpoint is not None:
        resumed = _resume(Path(checkpoint), identity, model, optimizer, scaler)
        history = resumed or history
    if channels_last:  # undone at the end
        model.to(memory_format=torch.channels_last)
    net = nn.parallel.DistributedDataParallel(model) if _distributed() else model
    net = torch.compile(net) if compile else net
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    pace: list[float] = []  # seconds per epoch in this process, for the deadline
    was_training = model.training
    try:
        for epoch in range(len(history["epoch"]), recipe.epochs):
            if _out_of_time(deadline, pace):
                break
            started, started_clock = time.perf_counter(), _clock()
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(epoch)  # reshuffles, as DistributedSampler does
            epoch_rates = rates[epoch * steps : (epoch + 1) * steps]
            loss, accuracy = train_one_epoch(
                net, train_loader, optimizer, epoch_rates, loss_fn,
                scaler=scaler, precision=precision, channels_last=channels_last,
            )
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {loss} in epoch {epoch + 1}; "
                    f"lower lr={recipe.lr}?"
                )
            row = {"epoch": epoch + 1, "lr": epoch_rates[-1], "train_loss": loss,
                   "train_acc": accuracy}
            for name, loader in (eval_loaders or {}).items():
                eval_loss, eval_acc = evaluate(net, loader, device, precision)
                row[f"{name}_loss"], row[f"{name}_acc"] = eval_loss, eval_acc
            row["seconds"] = time.perf_counter() - started
            pace.append(_clock() - started_clock)
            for key, value in row.items():
                history[key].append(value)
            if _is_main_process():
                if checkpoint is not None:
                    save_checkpoint(
                        checkpoint, identity=identity, history=history, rng=rng_state(),
                        model=unwrap(model).state_dict(),
                        optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
                    )
                if progress:
                    print(_epoch_line(history, recipe.epochs))
            # on_epoch may ask to stop (resumable from the checkpoint, as a deadline).
            asked = on_epoch is not None and _is_main_process() and on_epoch(history)
            if _from_main_process(bool(asked)):
                break
    finally:  # the caller's model keeps its mode and memory format
        model.train(was_training)
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
    return history


def _empty_history(eval_loaders: Mapping[str, Iterable]) -> History:
    names = ["epoch", "lr", "train_loss", "train_acc"]
    names += [f"{name}_{metric}" for name in eval_loaders for metric in ("loss", "acc")]
    return {name: [] for name in names + ["seconds"]}


def _epoch_line(history: History, epochs: int) -> str:
    metrics = ", ".join(f"{k} {v[-1]:.3f}" for k, v in history.items() if k.endswith(("loss", "acc")))
    return f"epoch {history['epoch'][-1]}/{epochs}: {metrics} ({history['seconds'][-1]:.1f} s)"


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
