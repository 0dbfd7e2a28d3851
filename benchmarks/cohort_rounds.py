"""A simulated cohort through federated rounds, in memory: the product's round steps without a database.

Each round every learner trains its clone locally (rebasing onto the active main version first),
then the same steps as the operations layer run: :func:`aivo_fl.ml.round.build_candidate` (gather,
privacy accounting, strategy, server optimizer) and :func:`aivo_fl.ml.round.judge.judge_round`
(curriculum anchor, gate, backtracking); an accepted
candidate is saved as the next main version, with its server-optimizer state kept in memory.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np

from aivo_fl.ml.aggregation.server_optimizers import State
from aivo_fl.ml.artifacts import save_main_model
from aivo_fl.ml.batched_training import LocalTrainingConfig
from aivo_fl.ml.cloning import clone_for_learner, load_learner_model
from aivo_fl.ml.data import LearnerData, Samples, generate_cohort, generate_curriculum
from aivo_fl.ml.local_training import train_learner
from aivo_fl.ml.model import CurriculumNet, head_state
from aivo_fl.ml.round.accounting import PrivacyHistory
from aivo_fl.ml.round.candidate import RoundState, build_candidate
from aivo_fl.ml.round.gate import EvaluationSet, Tolerances, correct_count, federated_accuracy
from aivo_fl.ml.round.gather import LearnerUpdate
from aivo_fl.ml.round.judge import Judging, judge_round
from aivo_fl.ml.round.options import PrivacySettings, RoundOptions
from aivo_fl.ml.training import TrainingConfig, split_train_val, train_model
from aivo_fl.operations.versions import next_version

FIRST_VERSION = "1.0.0"
# DP on with the environment's default noise multiplier (0.1): epsilon is reported with its warning.
# The clip norm sits near the local updates' own norms (0.15-0.3 with SGD and the proximal term):
# at 1.0 the noise, which scales with it, would drown a dozen learners' signal.
DEFAULT_PRIVACY = PrivacySettings(enabled=True, noise_multiplier=0.1, clip_norm=0.25)
DEFAULT_TOLERANCES = Tolerances()


@dataclass
class Cohort:
    main_root: Path
    learners_root: Path
    learners: list[LearnerData]
    curriculum_val: Samples
    curriculum_train: Samples  # the split the main model was fitted on: the round's anchor data
    trained: CurriculumNet
    active: CurriculumNet
    lineage: list[str] = field(default_factory=lambda: [FIRST_VERSION])
    privacy_history: PrivacyHistory = field(default_factory=PrivacyHistory)
    optimizer_state: State = field(default_factory=dict)


def _personalized_accuracy(cohort: Cohort) -> float:
    correct = total = 0
    for learner in cohort.learners:
        model, _ = load_learner_model(cohort.main_root, cohort.learners_root, learner.learner_id)
        c, n = correct_count(model, learner.heldout)
        correct, total = correct + c, total + n
    return correct / total


def _train_learners(cohort: Cohort, round_no: int, rounds: int, local_epochs: int) -> list[LearnerUpdate]:
    # Learners keep interacting between rounds: each round trains on that round's share of their
    # interactions, never the same data twice.
    updates = []
    for learner in cohort.learners:
        chunks = np.array_split(np.arange(len(learner.train)), rounds)
        session = train_learner(
            cohort.main_root,
            cohort.learners_root,
            learner.learner_id,
            learner.train.subset(chunks[round_no - 1]),
            learner.heldout,
            cohort.lineage[-1],
            LocalTrainingConfig(epochs=local_epochs),
        )
        trained_at = session.finished_at if session.finished_at.tzinfo else session.finished_at.replace(tzinfo=UTC)
        improvement = session.accuracy_after - session.accuracy_before
        updates.append(
            LearnerUpdate(
                learner.learner_id,
                Path(session.delta_path),
                session.samples,
                session.source_version,
                trained_at,
                improvement,
            )
        )
    return updates


def _round(
    cohort: Cohort,
    updates: list[LearnerUpdate],
    options: RoundOptions,
    privacy: PrivacySettings,
    tolerances: Tolerances,
    rng: np.random.Generator,
) -> dict[str, Any]:
    state = RoundState(
        cohort.lineage[-1],
        head_state(cohort.active),
        list(cohort.lineage),
        updates,
        cohort.learners_root,
        cohort.privacy_history,
        cohort.optimizer_state,
    )
    result = build_candidate(state, options, privacy, max(u.trained_at for u in updates), rng)
    if result.privacy_record is not None:  # released whatever the gate says
        charged = [c.learner_id for c in result.contributions if c.charged]
        cohort.privacy_history = cohort.privacy_history.after(result.privacy_record, charged)
    heldouts = [learner.heldout for learner in cohort.learners]
    evaluation = EvaluationSet({"cohort": heldouts}, cohort.curriculum_val)
    judging = Judging(cohort.active, cohort.trained, evaluation, cohort.curriculum_train, tolerances)
    judged = judge_round(result, state, judging, options.anchor)
    candidate, verdict = judged.candidate, judged.verdict
    version_before = cohort.lineage[-1]
    if verdict.accepted:
        version = next_version(version_before)
        save_main_model(
            cohort.main_root,
            version,
            candidate,
            {"heldout_accuracy": verdict.heldout_accuracy_after},
            0,
            parent_version=version_before,
        )
        cohort.lineage.append(version)
        cohort.active, cohort.optimizer_state = candidate, judged.result.optimizer_state
    return {
        "version_before": version_before,
        "version_after": cohort.lineage[-1],
        "accepted": verdict.accepted,
        "gate_reason": verdict.reason,
        "main_accuracy_before": verdict.heldout_accuracy_before,
        "main_accuracy_after": verdict.heldout_accuracy_after,
        "main_accuracy_on_learners": federated_accuracy(cohort.active, heldouts),
        "personalized_accuracy": _personalized_accuracy(cohort),
        "curriculum_accuracy": federated_accuracy(cohort.active, [cohort.curriculum_val]),
        "curriculum_reference": verdict.curriculum_reference,
        "step_scale": judged.step_scale,
        "included": len(result.included),
        "excluded": len(result.excluded),
        "epsilon_round": result.privacy.epsilon_round,
        "epsilon_total": result.privacy.epsilon_total,
        "privacy_warning": result.privacy.warning,
    }


def simulate_rounds(
    n_learners: int = 12,
    rounds: int = 5,
    seed: int = 0,
    curriculum_samples: int = 3_000,
    main_epochs: int = 10,
    local_epochs: int = 5,
    n_interactions: int = 200,
    options: RoundOptions | None = None,
    privacy: PrivacySettings = DEFAULT_PRIVACY,
    work_dir: Path | None = None,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
) -> list[dict[str, Any]]:
    """Run ``rounds`` federated rounds over a synthetic cohort; one summary dict per round."""
    with tempfile.TemporaryDirectory(prefix="aivo-sim-") as tmp:
        root = Path(work_dir) if work_dir is not None else Path(tmp)
        curriculum = generate_curriculum(curriculum_samples, seed)
        config = TrainingConfig(epochs=main_epochs, seed=seed, log_every=10**6, num_threads=1)
        model, _ = train_model(curriculum, config)
        cohort = Cohort(
            root / "main",
            root / "learners",
            generate_cohort(n_learners, seed, n_interactions * rounds),
            generate_curriculum(1_000, seed + 1),
            split_train_val(curriculum, config.val_fraction, seed)[0],
            model,
            model,
        )
        save_main_model(cohort.main_root, FIRST_VERSION, model, {}, seed)
        for learner in cohort.learners:
            clone_for_learner(cohort.main_root, cohort.learners_root, learner.learner_id, FIRST_VERSION)
        rng = np.random.default_rng([seed, 99])
        summaries = []
        for round_no in range(1, rounds + 1):
            started = time.perf_counter()
            updates = _train_learners(cohort, round_no, rounds, local_epochs)
            summary = _round(cohort, updates, options or RoundOptions(), privacy, tolerances, rng)
            summaries.append({"round": round_no, **summary, "seconds": time.perf_counter() - started})
        return summaries
