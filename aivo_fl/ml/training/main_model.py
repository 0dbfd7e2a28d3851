"""CPU training of the main model (and the shared epoch loop used for head fine-tuning).

Plain autograd on public PyTorch APIs; the speed comes from removing per-step overhead, not from
changing the maths: the data lives in one tensor indexed by a per-epoch permutation (each batch
is a slice), the heads run as one fused matmul, the optimiser is PyTorch's fused CPU AdamW, and
losses are accumulated on-tensor so there is no host sync per step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aivo_fl.ml.model import (
    CurriculumNet,
    build_model,
    evaluate_tensors,
    mean_loss,
    samples_to_tensors,
)
from aivo_fl.ml.runtime import configure_cpu
from aivo_fl.ml.samples import HEAD_CLASSES, PRIMARY_HEAD, Samples, bayes_ceiling, check_fraction

logger = logging.getLogger(__name__)


_HEAD_SIZES = list(HEAD_CLASSES.values())


_PRIMARY_INDEX = list(HEAD_CLASSES).index(PRIMARY_HEAD)


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 100
    batch_size: int = 64
    learning_rate: float = 2e-3
    final_learning_rate: float = 2e-5  # cosine decay target; a low end lr settles the noisy labels
    warmup_epochs: int = 2
    weight_decay: float = 0.01
    input_weight_decay: float = 20.0  # first layer only: the input is where the net can memorise noise
    val_fraction: float = 0.2
    seed: int = 0
    log_every: int = 10
    num_threads: int | None = None  # None: cpu_threads()'s default (see there)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        check_fraction("val_fraction", self.val_fraction)


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    epochs: int
    loss: float  # mean training loss over the epoch's steps (mean over heads)
    accuracy: float  # primary-head accuracy on the training split after the epoch
    val_loss: float
    val_accuracy: float


@dataclass(frozen=True)
class TrainingResult:
    final_loss: float
    final_accuracy: float
    val_loss: float
    val_accuracy: float
    bayes_ceiling: float  # primary head, validation split
    per_head: dict[str, dict[str, float]]  # validation metrics per head
    train_per_head: dict[str, dict[str, float]]
    bayes_ceiling_per_head: dict[str, float]
    epochs: int
    batch_size: int
    n_train: int
    n_val: int
    seconds: float
    threads: int  # torch threads the training ran on
    history: list[EpochStats] = field(default_factory=list)

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / self.epochs

    @property
    def gap_to_ceiling(self) -> float:
        return self.bayes_ceiling - self.val_accuracy


EpochCallback = Callable[[EpochStats], None]


def format_epoch(stats: EpochStats) -> str:
    return f"Epoch {stats.epoch}/{stats.epochs} - Loss: {stats.loss:.4f}, Accuracy: {stats.accuracy:.4f}"


def format_training_results(result: TrainingResult) -> str:
    return "\n".join(
        [
            "Final Training Results:",
            f"  - Final Loss: {result.final_loss:.4f}",
            f"  - Final Accuracy: {result.final_accuracy * 100:.2f}%",
            f"  - Validation Loss: {result.val_loss:.4f}",
            f"  - Validation Accuracy: {result.val_accuracy * 100:.2f}%",
            f"  - Bayes Ceiling: {result.bayes_ceiling * 100:.2f}%",
        ]
    )


def multi_head_loss(fused: Tensor, targets: Tensor) -> Tensor:
    """Mean over heads of each head's mean cross-entropy."""
    parts = torch.split(fused, _HEAD_SIZES, dim=1)
    total = F.cross_entropy(parts[0], targets[:, 0])
    for i in range(1, len(parts)):
        total = total + F.cross_entropy(parts[i], targets[:, i])
    return total / len(parts)


def cosine_lr(epoch: int, epochs: int, base: float, final: float, warmup: int) -> float:
    """Learning rate for a 0-based epoch: linear warm-up, then cosine down to `final`."""
    if epoch < warmup:
        return base * (epoch + 1) / (warmup + 1)
    span = max(1, epochs - warmup - 1)
    progress = min(1.0, (epoch - warmup) / span)
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(
    params: Iterable[nn.Parameter] | list[dict[str, Any]], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    # Fused CPU AdamW (public since torch 2.4): one kernel per parameter group, measured 0.10 s/epoch
    # against 0.17 for foreach=True on the main model.
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def run_epochs(
    model: CurriculumNet,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr_at: Callable[[int], float],
    seed: int,
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """The hot loop. Returns the mean training loss of each epoch.

    Per epoch the data is gathered once in shuffled order, so each batch is a free slice (view);
    the loss is summed on-tensor and read once per epoch (the only host sync).
    """
    generator = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    steps = math.ceil(n / batch_size)
    losses: list[float] = []
    model.train()
    for epoch in range(epochs):
        lr = lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        order = torch.randperm(n, generator=generator)
        x_epoch, y_epoch = x[order], y[order]
        running = torch.zeros((), dtype=torch.float32)
        for start in range(0, n, batch_size):
            loss = multi_head_loss(
                model.fused_logits(x_epoch[start : start + batch_size]), y_epoch[start : start + batch_size]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.detach()
        epoch_loss = float(running) / steps
        losses.append(epoch_loss)
        if on_epoch is not None:
            on_epoch(epoch, epoch_loss)
    return losses


def split_train_val(samples: Samples, val_fraction: float, seed: int) -> tuple[Samples, Samples]:
    n = len(samples)
    n_val = max(1, round(n * val_fraction))
    if n - n_val < 1:
        raise ValueError(f"need at least 2 samples to split, got {n}")
    order = np.random.default_rng([seed, 1]).permutation(n)
    return samples.subset(np.sort(order[n_val:])), samples.subset(np.sort(order[:n_val]))


def _input_decay_optimizer(model: CurriculumNet, config: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW with the input layer in its own parameter group (see TrainingConfig.input_weight_decay)."""
    first = model.trunk[0].weight
    groups = [
        {"params": [first], "weight_decay": config.input_weight_decay},
        {"params": [p for p in model.parameters() if p is not first]},
    ]
    return make_optimizer(groups, config.learning_rate, config.weight_decay)


def _epoch_reporter(
    model: CurriculumNet,
    config: TrainingConfig,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    history: list[EpochStats],
    callback: EpochCallback | None,
) -> Callable[[int, float], None]:
    """Every `log_every` epochs (and the last): EpochStats into `history`, the log and `callback`."""

    def on_epoch(epoch: int, loss: float) -> None:
        done = epoch + 1
        if done % config.log_every and done != config.epochs:
            return
        val_metrics = evaluate_tensors(model, *val)
        stats = EpochStats(
            epoch=done,
            epochs=config.epochs,
            loss=loss,
            accuracy=evaluate_tensors(model, *train)[PRIMARY_HEAD]["accuracy"],
            val_loss=mean_loss(val_metrics),
            val_accuracy=val_metrics[PRIMARY_HEAD]["accuracy"],
        )
        history.append(stats)
        logger.info(format_epoch(stats))
        if callback is not None:
            callback(stats)

    return on_epoch


def train_model(
    samples: Samples,
    config: TrainingConfig | None = None,
    model: CurriculumNet | None = None,
    callback: EpochCallback | None = None,
) -> tuple[CurriculumNet, TrainingResult]:
    """Train the main model on `samples`, holding out `config.val_fraction` for validation.

    Every `log_every` epochs (and on the last) an EpochStats goes to `callback` and to logging
    in the guide's format.
    """
    config = config or TrainingConfig()
    configure_cpu(config.num_threads)
    model = model if model is not None else build_model(config.seed)
    train, val = split_train_val(samples, config.val_fraction, config.seed)
    x_train, y_train = samples_to_tensors(train)
    x_val, y_val = samples_to_tensors(val)
    history: list[EpochStats] = []
    started = time.perf_counter()
    run_epochs(
        model,
        _input_decay_optimizer(model, config),
        x_train,
        y_train,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr_at=lambda e: cosine_lr(
            e, config.epochs, config.learning_rate, config.final_learning_rate, config.warmup_epochs
        ),
        seed=config.seed,
        on_epoch=_epoch_reporter(model, config, (x_train, y_train), (x_val, y_val), history, callback),
    )
    seconds = time.perf_counter() - started

    train_metrics = evaluate_tensors(model, x_train, y_train)
    val_metrics = evaluate_tensors(model, x_val, y_val)
    ceiling = bayes_ceiling(val)
    model.eval()
    return model, TrainingResult(
        final_loss=history[-1].loss,  # the guide's "Final Loss" is the last epoch's loss, as printed
        final_accuracy=train_metrics[PRIMARY_HEAD]["accuracy"],
        val_loss=mean_loss(val_metrics),
        val_accuracy=val_metrics[PRIMARY_HEAD]["accuracy"],
        bayes_ceiling=ceiling[PRIMARY_HEAD],
        per_head=val_metrics,
        train_per_head=train_metrics,
        bayes_ceiling_per_head=ceiling,
        epochs=config.epochs,
        batch_size=config.batch_size,
        n_train=len(train),
        n_val=len(val),
        seconds=seconds,
        threads=torch.get_num_threads(),
        history=history,
    )
