"""Local training of one learner's personal layers: the configuration, the learner's stable
shuffle, and the plain loop (autograd and ``torch.optim.SGD``), the reference the batched path
(:mod:`aivo_fl.ml.training.batched`) is held to.

* the frozen bottom layers run once per sample (``shared_features``), never per step;
* mini-batch SGD over the personal layers, each learner's own shuffle every epoch (keys derived
  from (seed, learner key, epoch, position), so the order does not depend on who else trains);
* loss = mean over heads of the mean cross-entropy + mu/2 * ||theta - theta_main||^2, the
  proximal term of FedProx/Ditto: a learner with a handful of interactions cannot wander far
  from the main model, one with many can.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from aivo_fl.ml.model import CurriculumNet, is_personal
from aivo_fl.ml.samples import HEAD_CLASSES

DEFAULT_PROXIMAL_MU = 0.1
_HEAD_SIZES = list(HEAD_CLASSES.values())


_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class LocalTrainingConfig:
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 0.05  # plain SGD, as in FedAvg / FedProx
    proximal_mu: float = DEFAULT_PROXIMAL_MU
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0 or self.proximal_mu < 0:
            raise ValueError("need epochs >= 1, batch_size >= 1, learning_rate > 0 and proximal_mu >= 0")


@dataclass(frozen=True)
class LearnerBatch:
    """One learner's local data: its stable key (for the shuffle), inputs (n, 256), targets (n, heads)."""

    key: int
    x: Tensor
    y: Tensor


def learner_key(learner_id: str) -> int:
    """A stable 63-bit key for a learner id: seeds the learner's shuffle wherever it trains."""
    return int.from_bytes(hashlib.sha256(learner_id.encode()).digest()[:8], "little") >> 1


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (z + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def epoch_orders(keys: np.ndarray, counts: np.ndarray, width: int, seed: int, epoch: int) -> np.ndarray:
    """(learners, width) int64: row i is a permutation of range(counts[i]), padding (index >= count) last."""
    base = _splitmix64(_splitmix64(np.uint64(seed) ^ _splitmix64(np.asarray(keys, np.uint64))) + np.uint64(epoch))
    position = np.arange(width, dtype=np.uint64)
    draws = _splitmix64(base[:, None] ^ _splitmix64(position)[None, :])
    draws[position[None, :] >= np.asarray(counts, np.uint64)[:, None]] = _MASK64  # padding sorts last
    return np.argsort(draws, axis=1, kind="stable").astype(np.int64)


def personal_tensors(model: CurriculumNet) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if is_personal(model, k)}


def train_one(
    model: CurriculumNet, learner: LearnerBatch, anchor: dict[str, Tensor], config: LocalTrainingConfig
) -> None:
    """The plain loop: train `model`'s personal layers in place on one learner (autograd + torch.optim.SGD)."""
    params = [p for k, p in model.named_parameters() if is_personal(model, k)]
    names = [k for k, _ in model.named_parameters() if is_personal(model, k)]
    optimizer = torch.optim.SGD(params, lr=config.learning_rate)
    with torch.no_grad():
        h = model.shared_features(learner.x)
    n = h.shape[0]
    for epoch in range(config.epochs):
        order = torch.from_numpy(epoch_orders(np.array([learner.key]), np.array([n]), n, config.seed, epoch)[0])
        for start in range(0, n, config.batch_size):
            index = order[start : start + config.batch_size]
            logits = model.fused_logits(h[index], start=model.frozen_layers)
            y = learner.y[index]
            loss = sum(
                F.cross_entropy(part, y[:, i]) for i, part in enumerate(torch.split(logits, _HEAD_SIZES, dim=1))
            ) / len(_HEAD_SIZES)
            if config.proximal_mu:
                loss = loss + 0.5 * config.proximal_mu * sum(
                    ((p - anchor[k]) ** 2).sum() for k, p in zip(names, params, strict=True)
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def local_steps(samples: int, config: LocalTrainingConfig) -> int:
    """SGD steps a learner with ``samples`` training interactions takes locally."""
    return config.epochs * math.ceil(samples / config.batch_size)
