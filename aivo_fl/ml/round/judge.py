"""Step 3 composed: each candidate as the server would promote it, judged, with backtracking.

The candidate heads (the server step's, or a halved step's) go into the active model; when the
round anchors (``RoundOptions.anchor``), the server then fine-tunes them on its curriculum's
TRAINING split (:func:`aivo_fl.ml.round.anchor.anchor_round`), and the gate judges that
model, on learners' held-out data and the curriculum's VALIDATION split: what is judged is what
is promoted, and the gate's data never trained it. The operations layer and the benchmark both
call :func:`judge_round`, so the benchmark measures the product's round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from aivo_fl.ml.model import CurriculumNet, head_state
from aivo_fl.ml.privacy.gate_query import accuracy_changes, noised_changes
from aivo_fl.ml.round.anchor import anchor_round
from aivo_fl.ml.round.backtrack import MAX_HALVINGS, Backtracked, backtrack, candidate_steps, first_accepted
from aivo_fl.ml.round.candidate import RoundResult, RoundState
from aivo_fl.ml.round.gate import (
    CONTRIBUTORS,
    EvaluationSet,
    GateResult,
    PrivateChange,
    Tolerances,
    federated_accuracy,
    gate,
    with_heads,
)
from aivo_fl.ml.round.options import AnchorOptions
from aivo_fl.ml.samples import PRIMARY_HEAD, Samples


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
    rng: np.random.Generator | None = None,
) -> Backtracked:
    """The gate on each candidate (anchored when ``anchor`` is set), halving a refused server step.

    Under DP (the round's record carries a gate noise multiplier) every step is judged at once on
    one privatized query (:func:`private_verdicts`); a dry run, which releases and charges nothing,
    judges the learners' part not at all. The returned result's ``candidate_heads`` are the judged
    model's (anchored) heads: what a promoted round persists."""
    seed = anchor_seed(state)

    def candidate_of(heads: Mapping[str, np.ndarray]) -> CurriculumNet:
        candidate = with_heads(judging.active, heads)
        return candidate if anchor is None else anchor_round(candidate, judging.curriculum_train, anchor, seed)

    def judge(heads: Mapping[str, np.ndarray]) -> tuple[CurriculumNet, GateResult]:
        candidate = candidate_of(heads)
        return candidate, gate(judging.active, candidate, judging.trained, judging.evaluation, judging.tolerances)

    record = result.privacy.record
    if record.dp_enabled and result.dry_run:
        return Backtracked(result, judging.active, not_judged(judging), 0)
    if record.dp_enabled:
        steps = candidate_steps(result, state.base_heads, state.optimizer_state, halvings)
        models = [candidate_of(s.candidate_heads) for s in steps]
        judged = first_accepted(steps, private_verdicts(models, judging, result, rng or np.random.default_rng()))
    else:
        judged = backtrack(result, state.base_heads, state.optimizer_state, judge, halvings)
    heads = head_state(judged.candidate)
    anchored = anchor_record(anchor, judging.curriculum_train, seed)
    return replace(judged, result=replace(judged.result, candidate_heads=heads, curriculum_anchor=anchored))


NOT_JUDGED = "not judged: under differential privacy a dry run releases nothing that depends on learners' data"


def not_judged(judging: Judging) -> GateResult:
    """A dry run's verdict under DP: none. Even the curriculum accuracy of a candidate built from the
    learners' un-noised updates would release them uncharged; only the active version's is shown."""
    active = federated_accuracy(judging.active, [judging.evaluation.curriculum])
    reference = federated_accuracy(judging.trained, [judging.evaluation.curriculum])
    return GateResult(False, NOT_JUDGED, {}, None, None, active, active, reference, None, PrivateChange(None, 0.0))


def private_verdicts(
    models: Sequence[CurriculumNet], judging: Judging, result: RoundResult, rng: np.random.Generator
) -> list[tuple[CurriculumNet, GateResult]]:
    """Each candidate's verdict, its contributing-learners part from ONE noised query over all of them."""
    record = result.privacy.record
    sets = judging.evaluation.learners.get(CONTRIBUTORS, [])
    changes = learner_changes(judging.active, models, sets)
    released = noised_changes(changes, record.gate_noise_multiplier or 0.0, record.denominator or 1.0, rng)
    views = [PrivateChange(change, released.noise_std) for change in released.means]
    return [
        (model, gate(judging.active, model, judging.trained, judging.evaluation, judging.tolerances, view))
        for model, view in zip(models, views, strict=True)
    ]


def learner_changes(active: CurriculumNet, models: Sequence[CurriculumNet], sets: Sequence[Samples]) -> np.ndarray:
    """(learners x candidates): each learner's held-out accuracy under each candidate minus under
    ``active``; one forward pass per model over every learner's samples."""
    if not sets:
        return np.zeros((0, len(models)))
    features = torch.from_numpy(np.ascontiguousarray(np.concatenate([s.features for s in sets]), dtype=np.float32))
    targets = np.concatenate([s.targets[PRIMARY_HEAD] for s in sets])
    owner = np.repeat(np.arange(len(sets)), [len(s) for s in sets])
    totals = np.bincount(owner, minlength=len(sets))
    correct = [np.bincount(owner, weights=_hits(m, features, targets), minlength=len(sets)) for m in [active, *models]]
    return accuracy_changes(correct, totals)


def _hits(model: CurriculumNet, features: torch.Tensor, targets: np.ndarray) -> np.ndarray:
    """1.0 where ``model`` predicts the primary head's target, else 0.0."""
    if len(targets) == 0:
        return np.zeros(0)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            predicted = model(features)[PRIMARY_HEAD].argmax(dim=1).numpy()
    finally:
        model.train(was_training)
    return (predicted == targets).astype(np.float64)
