"""Step 3 composed: each candidate as the server would promote it, judged, with backtracking.

The candidate heads (the server step's, or a halved step's) go into the active model; when the
round anchors (``RoundOptions.anchor``), the server then fine-tunes them on its curriculum's
TRAINING split (:func:`aivo_fl.ml.round.anchor.anchor_round`), and the gate judges that
model, on learners' held-out data and the curriculum's VALIDATION split: what is judged is what
is promoted, and the gate's data never trained it. The operations layer and the benchmark both
call :func:`judge_round`, so the benchmark measures the product's round.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from aivo_fl.ml.model import CurriculumNet, head_state
from aivo_fl.ml.round.anchor import anchor_round
from aivo_fl.ml.round.backtrack import MAX_HALVINGS, Backtracked, backtrack
from aivo_fl.ml.round.candidate import RoundResult, RoundState
from aivo_fl.ml.round.gate import EvaluationSet, GateResult, Tolerances, gate, with_heads
from aivo_fl.ml.round.options import AnchorOptions
from aivo_fl.ml.samples import Samples


@dataclass(frozen=True)
class Judging:
    """What the server judges a round's candidates with."""

    active: CurriculumNet  # the base version: candidates are built on it and compared with it
    trained: CurriculumNet  # the last trained version: the cumulative curriculum guard's reference
    evaluation: EvaluationSet
    curriculum_train: Samples  # the split the main model was trained on: the anchor's data
    tolerances: Tolerances = field(default_factory=Tolerances)


def anchor_seed(state: RoundState) -> int:
    """The anchor's seed: the lineage's length, the same for a dry run and the real round on one state."""
    return len(state.lineage)


def anchor_record(options: AnchorOptions | None, curriculum: Samples, seed: int) -> dict[str, Any] | None:
    """What the round records about its anchoring (None: off)."""
    if options is None:
        return None
    return {
        "samples": min(options.samples, len(curriculum)),
        "epochs": options.epochs,
        "batchSize": options.batch_size,
        "learningRate": options.learning_rate,
        "seed": seed,
    }


def judge_round(
    result: RoundResult,
    state: RoundState,
    judging: Judging,
    anchor: AnchorOptions | None,
    halvings: int = MAX_HALVINGS,
) -> Backtracked:
    """The gate on each candidate (anchored when ``anchor`` is set), halving a refused server step.

    The returned result's ``candidate_heads`` are the judged model's (anchored) heads: what a
    promoted round persists."""
    seed = anchor_seed(state)

    def judge(heads: Mapping[str, np.ndarray]) -> tuple[CurriculumNet, GateResult]:
        candidate = with_heads(judging.active, heads)
        if anchor is not None:
            candidate = anchor_round(candidate, judging.curriculum_train, anchor, seed)
        verdict = gate(judging.active, candidate, judging.trained, judging.evaluation, judging.tolerances)
        return candidate, verdict

    judged = backtrack(result, state.base_heads, state.optimizer_state, judge, halvings)
    record = anchor_record(anchor, judging.curriculum_train, seed)
    heads = head_state(judged.candidate)
    return replace(judged, result=replace(judged.result, candidate_heads=heads, curriculum_anchor=record))
