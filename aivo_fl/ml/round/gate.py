"""Step 3 of a round, gate: promote a candidate only if it does not make things worse.

Under DP the contributing learners speak to the gate only through a privatized figure, charged
with the round (:class:`PrivateChange`, computed by :mod:`aivo_fl.ml.round.judge`); without DP
their held-out data is scored exactly, as below.

The candidate is judged on learners' held-out data, part by part (an :class:`EvaluationSet` names
them: the contributing learners' held-out interactions, a fixed evaluation cohort who never train,
...). Federated evaluation: each learner's set is scored on its own and only (correct, total)
counts are pooled, what a device would report back.

Curriculum accuracy is a guard against forgetting. It is bounded CUMULATIVELY: measured from the
last trained (non-aggregated, major) version, not from the previous round, so small per-round
losses (DP noise, the cohort's drift) cannot add up unchecked over many rounds.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from aivo_fl.ml.model import CurriculumNet, load_head_state
from aivo_fl.ml.samples import PRIMARY_HEAD, Samples

# Two accuracy points per round on learners' data. A pooled held-out set of ~1,000 interactions has
# a paired (same-samples) standard error of roughly one point for a model change that flips a
# handful of predictions: a tighter gate would reject harmless noisy rounds, a looser one would let
# a clearly harmful round through.
DEFAULT_TOLERANCE = 0.02
# Five points below the trained version's curriculum accuracy, in total over all rounds. The cohort
# really differs from the curriculum (easier content, more video), so fitting real learners costs
# some curriculum accuracy by design: the guard is against forgetting, not against adaptation.
DEFAULT_CURRICULUM_TOLERANCE = 0.05


# The evaluation part every round has: the held-out interactions of the learners drawn into it.
CONTRIBUTORS = "contributing learners"


@dataclass(frozen=True)
class EvaluationSet:
    learners: Mapping[str, Sequence[Samples]]  # named parts, each a list of per-learner held-out sets
    curriculum: Samples  # the validation split the trained version was scored on


@dataclass(frozen=True)
class Tolerances:
    learners: float = DEFAULT_TOLERANCE  # per round, per part (fraction: 0.02 = two points)
    curriculum: float = DEFAULT_CURRICULUM_TOLERANCE  # cumulative, from the trained version


class PrivateChange(NamedTuple):
    """The contributing learners' part as the private gate sees it: the released (noised) mean change
    of their held-out accuracy, candidate minus active (:mod:`aivo_fl.ml.privacy.gate_query`)."""

    change: float | None  # fraction; None: not judged (a dry run under DP releases nothing)
    noise_std: float  # std of the noise on ``change``


class PartScore(NamedTuple):  # one evaluation part's pooled accuracy before and after the round
    before: float
    after: float
    samples: int


@dataclass(frozen=True)
class GateResult:
    accepted: bool
    reason: str | None
    parts: dict[str, PartScore]
    heldout_accuracy_before: float | None  # the exact learner parts pooled (None: only the private view)
    heldout_accuracy_after: float | None
    curriculum_accuracy_before: float
    curriculum_accuracy_after: float
    curriculum_reference: float  # the trained version's curriculum accuracy: the cumulative floor's origin
    heldout_samples: int | None  # None under DP: the held-out samples' count is learners' data too
    private: PrivateChange | None = None  # the contributing learners' part, privatized (DP on)

    @property
    def performance_improvement(self) -> float | None:
        """Percentage points on the learners' held-out data: the privatized mean change under DP, the
        pooled exact one without it; None when the learners' part was not judged."""
        if self.private is not None:
            return None if self.private.change is None else 100.0 * self.private.change
        assert self.heldout_accuracy_after is not None and self.heldout_accuracy_before is not None
        return 100.0 * (self.heldout_accuracy_after - self.heldout_accuracy_before)

    @property
    def improvement_noise_std(self) -> float:
        """Std (points) of the noise on :attr:`performance_improvement`: 0 for an exact figure."""
        return 100.0 * self.private.noise_std if self.private is not None else 0.0


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


def pooled_counts(model: CurriculumNet, sets: Sequence[Samples]) -> tuple[int, int]:
    counts = [correct_count(model, s) for s in sets]
    return sum(c for c, _ in counts), sum(n for _, n in counts)


def federated_accuracy(model: CurriculumNet, sets: Sequence[Samples]) -> float:
    """Pooled accuracy from per-learner (correct, total) counts only."""
    correct, total = pooled_counts(model, sets)
    return correct / total if total else float("nan")


def with_heads(model: CurriculumNet, heads: Mapping[str, np.ndarray]) -> CurriculumNet:
    """A copy of ``model`` carrying ``heads`` (the trunk is shared knowledge, unchanged)."""
    candidate = copy.deepcopy(model)
    load_head_state(candidate, dict(heads))
    return candidate


def _drop(label: str, before: float, after: float, tolerance: float) -> str | None:
    if after >= before - tolerance:
        return None
    change = f"{100 * (after - before):+.1f} pp, tolerance {100 * tolerance:.1f} pp"
    return f"{label} accuracy {before:.1%} -> {after:.1%} ({change})"


def _curriculum_problem(before: float, after: float, reference: float, tolerance: float) -> str | None:
    # Only a round that loses curriculum accuracy can fail: a lineage already below the floor (an
    # older, looser gate) may still take rounds that recover.
    if after >= reference - tolerance or after >= before:
        return None
    return (
        f"curriculum accuracy {before:.1%} -> {after:.1%}, {100 * (reference - after):.1f} pp below the trained "
        f"version's {reference:.1%} (cumulative tolerance {100 * tolerance:.1f} pp)"
    )


def _private_drop(label: str, private: PrivateChange, tolerance: float) -> str | None:
    if private.change is None or private.change >= -tolerance:
        return None
    return (
        f"{label} held-out accuracy changed by {100 * private.change:+.1f} pp (privatized mean, noise std "
        f"{100 * private.noise_std:.2f} pp; tolerance {100 * tolerance:.1f} pp)"
    )


def gate(
    active: CurriculumNet,
    candidate: CurriculumNet,
    trained: CurriculumNet,
    evaluation: EvaluationSet,
    tolerances: Tolerances = Tolerances(),
    private: PrivateChange | None = None,
) -> GateResult:
    """Judge ``candidate`` against the ``active`` version and the last ``trained`` version.

    With ``private`` (DP on) the contributing learners' part is judged on that released figure only;
    their held-out data is not scored here. Other learner parts are server-held (consented) sets."""
    parts: dict[str, PartScore] = {}
    pooled = np.zeros(3, dtype=np.int64)  # correct before, correct after, total
    for name, sets in evaluation.learners.items():
        if private is not None and name == CONTRIBUTORS:
            continue
        (c_before, total), (c_after, _) = pooled_counts(active, sets), pooled_counts(candidate, sets)
        if total:
            parts[name] = PartScore(c_before / total, c_after / total, total)
            pooled += (c_before, c_after, total)
    if not parts and private is None:
        raise ValueError("the gate needs learners' held-out samples")
    curriculum = [evaluation.curriculum]
    cur_before, cur_after = federated_accuracy(active, curriculum), federated_accuracy(candidate, curriculum)
    reference = federated_accuracy(trained, curriculum)
    problems = [_drop(f"{name} held-out", p.before, p.after, tolerances.learners) for name, p in parts.items()]
    if private is not None:
        problems.append(_private_drop(CONTRIBUTORS, private, tolerances.learners))
    problems.append(_curriculum_problem(cur_before, cur_after, reference, tolerances.curriculum))
    found = [p for p in problems if p]
    exact = private is None
    return GateResult(
        accepted=not found,
        reason=f"Performance degradation: {'; '.join(found)}" if found else None,
        parts=parts,
        heldout_accuracy_before=float(pooled[0] / pooled[2]) if exact else None,
        heldout_accuracy_after=float(pooled[1] / pooled[2]) if exact else None,
        curriculum_accuracy_before=cur_before,
        curriculum_accuracy_after=cur_after,
        curriculum_reference=reference,
        heldout_samples=int(pooled[2]) if exact else None,
        private=private,
    )
