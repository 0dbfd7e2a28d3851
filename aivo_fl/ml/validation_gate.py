"""Accept a candidate main model only if it does not make things worse.

Federated evaluation: each learner's held-out set is scored on its own and only the per-learner
counts (correct, total) are pooled, exactly what a device would report back. The same check runs on
the curriculum validation set so a round cannot buy learner accuracy by forgetting the curriculum.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from aivo_fl.ml.data import PRIMARY_HEAD, Samples
from aivo_fl.ml.model import CurriculumNet, load_head_state

# Two accuracy points. A pooled held-out set of ~1,000 learner interactions has a paired
# (same-samples) standard error of roughly one point for a model change that flips a handful of
# predictions, so a tighter gate would reject harmless noisy rounds; a looser one would let a
# clearly harmful round through.
DEFAULT_TOLERANCE = 0.02
# The cohort really differs from the curriculum (easier content, more video), so fitting real
# learners costs some curriculum accuracy by design. The curriculum check guards against
# forgetting, not against adaptation: it allows a larger drop than the learners' check.
DEFAULT_CURRICULUM_TOLERANCE = 0.05


@dataclass(frozen=True)
class GateResult:
    accepted: bool
    reason: str | None
    heldout_accuracy_before: float
    heldout_accuracy_after: float
    curriculum_accuracy_before: float
    curriculum_accuracy_after: float
    performance_improvement: float  # percentage points on the learners' held-out data
    heldout_samples: int


def correct_count(model: CurriculumNet, samples: Samples, head: str = PRIMARY_HEAD) -> tuple[int, int]:
    """(correct predictions, samples) for one head on one data set."""
    if len(samples) == 0:
        return 0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = model(torch.from_numpy(np.ascontiguousarray(samples.features, dtype=np.float32)))[head]
            predicted = logits.argmax(dim=1).numpy()
    finally:
        model.train(was_training)
    return int(np.sum(predicted == samples.targets[head])), len(samples)


def federated_accuracy(model: CurriculumNet, heldouts: Sequence[Samples], head: str = PRIMARY_HEAD) -> float:
    """Pooled accuracy from per-learner (correct, total) counts only."""
    counts = [correct_count(model, s, head) for s in heldouts]
    total = sum(n for _, n in counts)
    return sum(c for c, _ in counts) / total if total else float("nan")


def with_heads(active_model: CurriculumNet, heads: Mapping[str, np.ndarray]) -> CurriculumNet:
    """A copy of ``active_model`` carrying ``heads`` (the trunk is shared knowledge, unchanged)."""
    candidate = copy.deepcopy(active_model)
    load_head_state(candidate, dict(heads))
    return candidate


def validate_candidate(
    active_model: CurriculumNet,
    candidate_model: CurriculumNet,
    learner_heldouts: Sequence[Samples],
    curriculum_val: Samples,
    tolerance: float = DEFAULT_TOLERANCE,
    curriculum_tolerance: float = DEFAULT_CURRICULUM_TOLERANCE,
) -> GateResult:
    """Reject if learners' held-out accuracy drops by more than ``tolerance``, or curriculum accuracy
    by more than ``curriculum_tolerance`` (both as fractions: 0.02 = two percentage points)."""
    if not learner_heldouts or sum(len(s) for s in learner_heldouts) == 0:
        raise ValueError("the gate needs learners' held-out samples")
    before = federated_accuracy(active_model, learner_heldouts)
    after = federated_accuracy(candidate_model, learner_heldouts)
    cur_before = federated_accuracy(active_model, [curriculum_val])
    cur_after = federated_accuracy(candidate_model, [curriculum_val])
    problems = [
        f"{label} accuracy {b:.1%} -> {a:.1%} ({100 * (a - b):+.1f} pp, tolerance {100 * tol:.1f} pp)"
        for label, b, a, tol in (
            ("learners' held-out", before, after, tolerance),
            ("curriculum", cur_before, cur_after, curriculum_tolerance),
        )
        if a < b - tol
    ]
    reason = f"Performance degradation: {'; '.join(problems)}" if problems else None
    return GateResult(
        accepted=not problems,
        reason=reason,
        heldout_accuracy_before=before,
        heldout_accuracy_after=after,
        curriculum_accuracy_before=cur_before,
        curriculum_accuracy_after=cur_after,
        performance_improvement=100.0 * (after - before),
        heldout_samples=sum(len(s) for s in learner_heldouts),
    )
