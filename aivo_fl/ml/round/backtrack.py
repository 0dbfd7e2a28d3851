"""Step 3 with backtracking: a candidate the gate rejects is rebuilt with a smaller server step.

A federated round's aggregate points downhill on the learners' data, but the server optimizer's
full step can overshoot the gate's guards (the cumulative curriculum floor, above all): without a
retry, one such round freezes the lineage, since every later candidate overshoots the same way.
Backtracking rebuilds the candidate from the SAME aggregate with the server step scaled by 1/2,
1/4, ... and promotes the first that passes.

Privacy: every retry's candidate is post-processing of the aggregate the round already released
(same noise, same data). Under DP the gate judges every step at once on ONE privatized query, the
drawn learners' accuracy changes for all of them (:mod:`aivo_fl.ml.privacy.gate_query`), charged
with the round; backtracking then picks the first step that passes on those released figures
(:func:`first_accepted`). Without DP the steps are judged one after another (:func:`backtrack`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from aivo_fl.ml.aggregation.server_optimizers import State, server_optimizer
from aivo_fl.ml.model import CurriculumNet
from aivo_fl.ml.round.aggregate import step
from aivo_fl.ml.round.candidate import RoundResult
from aivo_fl.ml.round.gate import GateResult

# Retries after the full step: scales 1/2, 1/4, 1/8. A step an eighth the size that still fails the
# gate means the aggregate's direction is wrong, not its length.
MAX_HALVINGS = 3

# The candidate heads -> (candidate model, the gate's verdict on it); the caller's evaluation data.
Judge = Callable[[Mapping[str, np.ndarray]], tuple[CurriculumNet, GateResult]]


@dataclass(frozen=True)
class Backtracked:
    result: RoundResult  # the accepted step's candidate heads and optimizer state (the full step's if none)
    candidate: CurriculumNet
    verdict: GateResult  # the accepted step's verdict, or the full step's rejection
    tries: int  # candidates judged

    @property
    def step_scale(self) -> float:
        """The accepted scale of the server step (1.0 if none passed), as its result records it."""
        return self.result.step_scale


def rescaled(result: RoundResult, base_heads: Mapping[str, np.ndarray], state: State, scale: float) -> RoundResult:
    """``result`` rebuilt from its own aggregate with the server step scaled by ``scale``.

    ``state`` is the base version's optimizer state (the one ``result`` was built from)."""
    optimizer = server_optimizer(result.server_optimizer, result.learning_rate * scale)
    moved = step(result.aggregate, [], base_heads, optimizer, state)
    return replace(result, candidate_heads=moved.heads, optimizer_state=moved.optimizer_state, step_scale=scale)


def candidate_steps(
    result: RoundResult, base_heads: Mapping[str, np.ndarray], state: State, halvings: int = MAX_HALVINGS
) -> list[RoundResult]:
    """The full step and its halvings (1, 1/2, 1/4, ...), each rebuilt from the same aggregate."""
    return [result] + [rescaled(result, base_heads, state, 0.5**i) for i in range(1, halvings + 1)]


def first_accepted(steps: Sequence[RoundResult], judged: Sequence[tuple[CurriculumNet, GateResult]]) -> Backtracked:
    """The first step whose verdict accepts; else the full step's rejection (all judged already)."""
    for tries, (step_result, (candidate, verdict)) in enumerate(zip(steps, judged, strict=True), start=1):
        if verdict.accepted:
            return Backtracked(step_result, candidate, verdict, tries)
    candidate, verdict = judged[0]
    return Backtracked(steps[0], candidate, verdict, len(steps))


def backtrack(
    result: RoundResult,
    base_heads: Mapping[str, np.ndarray],
    state: State,
    judge: Judge,
    halvings: int = MAX_HALVINGS,
) -> Backtracked:
    """Judge the full step, then halve it up to ``halvings`` times until the gate accepts.

    If none passes, the full step's candidate and verdict are returned: the round is rejected
    exactly as without backtracking (same reason), and the caller keeps the old optimizer state.
    """
    candidate, verdict = judge(result.candidate_heads)
    full = Backtracked(result, candidate, verdict, 1)
    if verdict.accepted:
        return full
    for tries in range(2, halvings + 2):
        trial = rescaled(result, base_heads, state, 0.5 ** (tries - 1))
        candidate, verdict = judge(trial.candidate_heads)
        if verdict.accepted:
            return Backtracked(trial, candidate, verdict, tries)
    return replace(full, tries=halvings + 1)
