"""The private gate's query: how the drawn learners' held-out data may speak to the gate.

Each drawn learner reports one vector: for every candidate the round may promote (the full server
step, then 1/2, 1/4, 1/8 of it), their own held-out accuracy under that candidate minus under the
active version. The vector is clipped to L2 norm ``GATE_CLIP``, the vectors are summed, Gaussian
noise of std ``gate_noise_multiplier x GATE_CLIP`` is added to every coordinate, and the sum is
divided by the round's fixed denominator (the expected cohort), as the update query is. Adding or
removing one learner moves the sum by at most ``GATE_CLIP``: a Gaussian query at noise multiplier
``gate_noise_multiplier`` on the same Poisson-sampled learners, so it composes with the update query
(and adaptive clipping's count) into ONE Gaussian mechanism with noise multiplier
``(z**-2 + z_count**-2 + z_gate**-2) ** -1/2``, which is what the round is charged.

Its noise multiplier follows the update's: ``z / sqrt(GATE_SHARE)``, so the gate takes a fixed
share (10%) of the round's privacy cost whatever the deployment's noise, and the planner calibrates
the update noise with the gate included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# A learner's accuracy change over a handful of held-out interactions is a few tenths at most; a
# vector of four such changes (one per step the round may promote) rarely reaches 0.5 in L2.
GATE_CLIP = 0.5
# The gate's share of a round's privacy cost, in units of z**-2 (the update query's being 1).
GATE_SHARE = 0.1


def gate_noise_multiplier(noise_multiplier: float) -> float:
    """The gate query's noise multiplier for an update query at ``noise_multiplier`` (0: no noise)."""
    if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
        raise ValueError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier}")
    return noise_multiplier / math.sqrt(GATE_SHARE)


@dataclass(frozen=True)
class NoisedChanges:
    """The released figures: for each candidate, the mean change in learners' held-out accuracy."""

    means: tuple[float, ...]  # fraction (0.01 = one point), per candidate, in the order given
    noise_std: float  # std of the noise on each mean (0: exact, released without noise)
    learners: int  # how many learners reported (not released under DP: the cohort size is noised too)

    @property
    def private(self) -> bool:
        return self.noise_std > 0


def clipped(changes: np.ndarray, clip: float = GATE_CLIP) -> np.ndarray:
    """Each row scaled down to L2 norm ``clip`` at most."""
    norms = np.linalg.norm(changes, axis=1, keepdims=True)
    scale = np.minimum(1.0, clip / np.maximum(norms, 1e-300))
    return changes * scale


def noised_changes(
    changes: np.ndarray,
    noise_multiplier: float,
    denominator: float,
    rng: np.random.Generator,
) -> NoisedChanges:
    """(learners x candidates) accuracy changes -> the released, noised mean per candidate.

    ``denominator`` is the round's expected cohort: fixed before the draw, like the update query's.
    """
    if changes.ndim != 2:
        raise ValueError(f"changes must be (learners x candidates), got shape {changes.shape}")
    if not denominator > 0:
        raise ValueError(f"denominator must be > 0, got {denominator}")
    total = clipped(changes).sum(axis=0)
    std = noise_multiplier * GATE_CLIP
    noisy = total + rng.normal(0.0, std, size=total.shape) if std > 0 else total
    return NoisedChanges(tuple(float(x) for x in noisy / denominator), std / denominator, len(changes))


def exact_changes(changes: np.ndarray) -> NoisedChanges:
    """Without DP: the plain mean per candidate over the learners who reported (no guarantee)."""
    if len(changes) == 0:
        return NoisedChanges(tuple(0.0 for _ in range(changes.shape[1])), 0.0, 0)
    return NoisedChanges(tuple(float(x) for x in changes.mean(axis=0)), 0.0, len(changes))


def accuracy_changes(correct: Sequence[np.ndarray], totals: np.ndarray) -> np.ndarray:
    """Per learner, each candidate's accuracy minus the active version's.

    ``correct[0]`` are the active version's correct counts per learner, ``correct[j]`` candidate
    j's; a learner without held-out data reports zeros (they still count in the denominator)."""
    safe = np.maximum(totals, 1).astype(np.float64)
    base = correct[0] / safe
    return np.stack([(c / safe) - base for c in correct[1:]], axis=1) * (totals > 0)[:, None]
