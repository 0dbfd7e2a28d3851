"""Local training of many learners at once: the same maths as the plain loop
(:func:`aivo_fl.ml.training.local.train_one`, held to it at 1e-5 by a test), batched.

`train_many` stacks the learners' personal parameters along a new leading dimension
(:mod:`aivo_fl.ml.training.stacked_layers`): every step of every learner in a group is one batched
matmul per layer, and each weight's gradient and proximal SGD update are one in-place `baddbmm_`.
Learners are sorted by sample count and grouped, so padding (masked out of the loss and of the
update) stays small even with skewed counts.

`train_personal_and_update` is what a learner's week does (after Ditto, Li et al. 2021): its clone
trains from its own personal layers (the personalization it keeps), and the update it sends the
server is a second fit of the same data from the main model's layers. An update taken from the
clone would count the shared progress twice: once in the main model that moved, once more in the
clone's offset, so returning learners would push every move back round after round. The update is
normalized by the learner's local steps (FedNova, Wang et al. 2020) to what a one-batch learner's
``epochs`` steps give: otherwise a learner with many interactions, weighted by its samples AND
taking more steps, pulls the main model toward its own personal shift.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from aivo_fl.ml.model import CurriculumNet
from aivo_fl.ml.samples import HEAD_CLASSES
from aivo_fl.ml.training.local import LearnerBatch, LocalTrainingConfig, epoch_orders, local_steps, personal_tensors
from aivo_fl.ml.training.stacked_layers import Op, forward, fuse_heads, personal_ops, sgd_step, split_heads

DEFAULT_GROUP_SIZE = 256


_HEAD_SIZES = list(HEAD_CLASSES.values())


def _loss_terms(logits: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """Per learner: mean over heads of the masked mean cross-entropy. logits (L, B, C), y (L, B, H)."""
    count = mask.sum(dim=1).clamp(min=1)
    total = torch.zeros(logits.shape[0], dtype=logits.dtype)
    for i, part in enumerate(torch.split(logits, _HEAD_SIZES, dim=2)):
        nll = -torch.log_softmax(part, dim=2).gather(2, y[:, :, i : i + 1]).squeeze(2)
        total = total + (nll * mask).sum(dim=1) / count
    return total / len(_HEAD_SIZES)


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
