"""Local training of learners' personal layers: one learner at a time, or many at once.

Both paths do exactly the same maths, so they agree to float rounding (a test holds them to 1e-5):

* the frozen bottom layers run once per sample (`shared_features`), never per step;
* mini-batch SGD over the personal layers, each learner's own shuffle every epoch (keys derived
  from (seed, learner key, epoch, position), so the order does not depend on who else trains);
* loss = mean over heads of the mean cross-entropy + mu/2 * ||theta - theta_main||^2, the
  proximal term of FedProx/Ditto: a learner with a handful of interactions cannot wander far
  from the main model, one with many can.

`train_many` stacks the learners' personal parameters along a new leading dimension
(`aivo_fl.ml.stacked_layers`): every step of every learner in a group is one batched matmul
per layer, and each weight's gradient and proximal SGD update are one in-place `baddbmm_`.
Learners are sorted by sample count and grouped, so padding (masked out of the loss and of the
update) stays small even with skewed counts.

`train_personal_and_update` is what a learner's week does (after Ditto, Li et al. 2021): its clone
trains from its own personal layers (the personalization it keeps), and the update it sends the
server is a second fit of the same data from the main model's layers. An update taken from the
clone would count the shared progress twice: once in the main model that moved, once more in the
clone's offset, so returning learners would push every move back (measured in fl_quality: a
server step that rings round after round). The update is normalized by the learner's local steps
(FedNova, Wang et al. 2020) to what a one-batch learner's ``epochs`` steps give: otherwise a
learner with many interactions, weighted by its samples AND taking more steps, pulls the main
model toward its own personal shift.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from aivo_fl.ml.data import HEAD_CLASSES
from aivo_fl.ml.model import CurriculumNet, is_personal, samples_to_tensors
from aivo_fl.ml.population import Interactions
from aivo_fl.ml.stacked_layers import Op, forward, fuse_heads, personal_ops, sgd_step, split_heads

DEFAULT_PROXIMAL_MU = 0.1
DEFAULT_GROUP_SIZE = 256
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


def _loss_terms(logits: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """Per learner: mean over heads of the masked mean cross-entropy. logits (L, B, C), y (L, B, H)."""
    count = mask.sum(dim=1).clamp(min=1)
    total = torch.zeros(logits.shape[0], dtype=logits.dtype)
    for i, part in enumerate(torch.split(logits, _HEAD_SIZES, dim=2)):
        nll = -torch.log_softmax(part, dim=2).gather(2, y[:, :, i : i + 1]).squeeze(2)
        total = total + (nll * mask).sum(dim=1) / count
    return total / len(_HEAD_SIZES)


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


def _train_group(
    ops: list[Op],
    params: dict[str, Tensor],
    anchor: dict[str, Tensor],
    data: tuple[Tensor, Tensor],
    first: np.ndarray,
    counts: np.ndarray,
    keys: np.ndarray,
    config: LocalTrainingConfig,
) -> None:
    """Train one group in place: ``params`` are its stacked (heads fused) personal tensors, learner i's
    samples are rows ``first[i] : first[i] + counts[i]`` of ``data`` (features, targets); counts ascending."""
    feats, targets = data
    width = int(counts.max())
    base, count = torch.from_numpy(first)[:, None], torch.from_numpy(counts)[:, None]
    for epoch in range(config.epochs):
        order = torch.from_numpy(epoch_orders(keys, counts, width, config.seed, epoch))
        # Padding (order >= count, sorted last) points at the learner's first sample: a real row,
        # masked out of the loss, so its gradient is exactly zero. No padded copy of the data.
        index = base + torch.where(order < count, order, 0)
        valid = (order < count).to(feats.dtype)
        for begin in range(0, width, config.batch_size):
            # Learners are sorted by count, so those with data left at this step are a suffix:
            # the step costs only what they need, not what the largest learner needs.
            a = int(np.searchsorted(counts, begin, side="right"))
            rows = index[a:, begin : begin + config.batch_size]
            live = {k: v[a:] for k, v in params.items()}  # views: the step updates `params` in place
            run = forward(ops, live, feats[rows])
            loss = _loss_terms(run.logits, targets[rows], valid[a:, begin : begin + config.batch_size]).sum()
            sgd_step(ops, live, anchor, run, loss, config.learning_rate, config.proximal_mu)


def train_many(
    model: CurriculumNet,
    learners: Sequence[LearnerBatch],
    starts: Sequence[dict[str, Tensor]],
    config: LocalTrainingConfig,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> list[dict[str, Tensor]]:
    """Train every learner's personal layers (from `starts[i]`, anchored at `model`'s) in batched groups.

    Returns each learner's trained personal tensors, in the input order.
    """
    if len(learners) != len(starts):
        raise ValueError(f"{len(learners)} learners but {len(starts)} start points")
    counts = np.array([learner.x.shape[0] for learner in learners], dtype=np.int64)
    if not learners:
        return []
    if counts.min() < 1:
        raise ValueError("every learner needs at least one sample")
    anchor = personal_tensors(model)
    ops, fused_anchor = personal_ops(model), fuse_heads(anchor)
    with torch.no_grad():  # the frozen layers run once per sample, as one matmul for everyone
        feats = model.shared_features(torch.cat([learner.x for learner in learners]))
    data = (feats, torch.cat([learner.y for learner in learners]))
    first = np.cumsum(counts) - counts
    keys = np.array([learner.key for learner in learners])
    by_size = np.argsort(counts, kind="stable")
    out: list[dict[str, Tensor]] = [{} for _ in learners]
    for begin in range(0, len(by_size), group_size):
        group = by_size[begin : begin + group_size]
        # The stack is the only copy: trained in place, returned as per-learner views.
        params = fuse_heads({k: torch.stack([starts[i][k] for i in group]) for k in anchor})
        _train_group(ops, params, fused_anchor, data, first[group], counts[group], keys[group], config)
        trained = split_heads(params)
        for j, i in enumerate(group):
            out[i] = {k: v[j] for k, v in trained.items()}
    return out


def local_steps(samples: int, config: LocalTrainingConfig) -> int:
    """SGD steps a learner with ``samples`` training interactions takes locally."""
    return config.epochs * math.ceil(samples / config.batch_size)


def train_personal_and_update(
    model: CurriculumNet,
    learners: Sequence[LearnerBatch],
    starts: Sequence[dict[str, Tensor]],
    config: LocalTrainingConfig,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]:
    """(each learner's personal layers trained from ``starts[i]``, each learner's update for the
    server): the update is the same training from ``model``'s personal layers, minus them, scaled
    by ``epochs / local steps``. One :func:`train_many` call trains both."""
    main = personal_tensors(model)
    trained = train_many(model, [*learners, *learners], [*starts, *([main] * len(learners))], config, group_size)
    personal, from_main = trained[: len(learners)], trained[len(learners) :]
    updates = []
    for learner, fitted in zip(learners, from_main, strict=True):
        scale = config.epochs / local_steps(int(learner.x.shape[0]), config)
        updates.append({k: (fitted[k] - main[k]) * scale for k in main})
    return personal, updates


def evaluate_many(
    model: CurriculumNet,
    samples: Sequence[tuple[Tensor, Tensor]],
    params: Sequence[dict[str, Tensor]],
    group_size: int = 256,
) -> list[dict[str, dict[str, float]]]:
    """Learner i's personal layers `params[i]` (on `model`'s frozen layers) on its own `samples[i]`
    (x, y): per head, mean cross-entropy and accuracy, as :func:`aivo_fl.ml.model.evaluate` gives
    for one learner, for a group of learners at once. A learner without samples gets NaN."""
    ops, out = personal_ops(model), []
    with torch.no_grad():
        for first in range(0, len(samples), group_size):
            group = range(first, min(first + group_size, len(samples)))
            counts = [samples[i][0].shape[0] for i in group]
            h = torch.split(model.shared_features(torch.cat([samples[i][0] for i in group])), counts)
            width = max(max(counts), 1)
            feats = torch.zeros(len(counts), width, h[0].shape[1], dtype=h[0].dtype)
            targets = torch.zeros(len(counts), width, len(_HEAD_SIZES), dtype=torch.int64)
            for j, i in enumerate(group):
                feats[j, : counts[j]], targets[j, : counts[j]] = h[j], samples[i][1]
            stacked = fuse_heads({k: torch.stack([params[i][k] for i in group]) for k in params[first]})
            logits = forward(ops, stacked, feats).logits
            valid = torch.arange(width)[None, :] < torch.tensor(counts)[:, None]
            out.extend(_head_metrics(logits, targets, valid))
    return out


def _head_metrics(logits: Tensor, y: Tensor, valid: Tensor) -> list[dict[str, dict[str, float]]]:
    """Per learner and head, the masked mean cross-entropy and accuracy. logits (L, B, C), y (L, B, H)."""
    count = valid.sum(dim=1).to(logits.dtype)  # 0 for a learner without samples: NaN, as evaluate gives
    metrics: dict[str, tuple[list[float], list[float]]] = {}
    for i, (head, part) in enumerate(zip(HEAD_CLASSES, torch.split(logits, _HEAD_SIZES, dim=2), strict=True)):
        target = y[:, :, i]
        nll = -torch.log_softmax(part, dim=2).gather(2, target[:, :, None]).squeeze(2)
        hits = (part.argmax(dim=2) == target) & valid
        loss = (nll * valid).sum(dim=1) / count
        metrics[head] = (loss.tolist(), (hits.sum(dim=1) / count).tolist())
    return [
        {head: {"loss": losses[j], "accuracy": accuracy[j]} for head, (losses, accuracy) in metrics.items()}
        for j in range(logits.shape[0])
    ]


Tensors = dict[str, Tensor]


@dataclass(frozen=True)
class WeekUpdates:
    """One week of local training: each active learner's update and its new personal offset."""

    learners: list[int]
    deltas: list[Tensors]  # what the learner sends: its step-normalized fit from main (train_personal_and_update)
    samples: list[int]
    offsets: dict[int, Tensors]  # trained - main: the personalisation the learner keeps


def train_active_learners(
    model: CurriculumNet,
    week_train: Interactions,
    offsets: dict[int, Tensors],
    config: LocalTrainingConfig,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> WeekUpdates:
    """Train every learner in `week_train` at once: its personal layers from main + its kept offset
    (the rebase), its update from main (:func:`train_personal_and_update`)."""
    main = personal_tensors(model)
    data = week_train.by_learner()
    learners = list(data)
    starts = [{k: main[k] + offsets[i][k] for k in main} if i in offsets else main for i in learners]
    batches = [LearnerBatch(i, *samples_to_tensors(data[i])) for i in learners]
    trained, updates = train_personal_and_update(model, batches, starts, config, group_size)
    return WeekUpdates(
        learners=learners,
        deltas=updates,
        samples=[len(data[i]) for i in learners],
        offsets={**offsets, **{i: {k: t[k] - main[k] for k in main} for i, t in zip(learners, trained, strict=True)}},
    )
