"""Nothing non-finite is ever written: the checks around a learner's training.

A clone holding a NaN or an infinity (written before these checks, or by hand) is refused before
training (`NonFiniteClone`, so the operations layer rebuilds it from the active main version), and
a learner whose training produced one keeps its previous clone (`NonFiniteTraining`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from aivo_fl.ml.store.safe_files import ArtifactError

NON_FINITE_WEIGHTS = "non-finite weights"


class NonFiniteClone(ArtifactError):
    """A clone's personal layers hold a NaN or an infinity: it has to be rebuilt."""

    reason = NON_FINITE_WEIGHTS


class NonFiniteTraining(ValueError):
    """Training gave a non-finite loss or weight; nothing of it was written."""


def all_finite(tensors: Mapping[str, np.ndarray | torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(torch.as_tensor(t)).all()) for t in tensors.values())


def check_clone(learner_id: str, heads: Mapping[str, np.ndarray]) -> None:
    if not all_finite(heads):
        raise NonFiniteClone(f"learner {learner_id!r}: the clone's personal layers hold {NON_FINITE_WEIGHTS}")


def check_trained(
    learner_id: str,
    trained: Mapping[str, torch.Tensor],
    update: Mapping[str, torch.Tensor],
    metrics: tuple[Mapping[str, Mapping[str, float]], ...],
) -> None:
    """Refuse a training whose weights, update or held-out losses before/after are not all finite."""
    losses = [m["loss"] for metric in metrics for m in metric.values()]
    if not np.isfinite(losses).all():
        what = "loss"
    elif not all_finite(trained):
        what = "weight"
    elif not all_finite(update):
        what = "update"
    else:
        return
    raise NonFiniteTraining(f"learner {learner_id!r}: training gave a non-finite {what}; the previous clone is kept")
