"""A simulated cohort going through federated rounds end to end, on disk, without a database.

Each round: every learner trains its clone locally (rebasing onto the active main version first),
the server aggregates the deltas, the gate evaluates the candidate on the learners' held-out data
and the curriculum, and an accepted candidate becomes the next main version.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np

from aivo_fl.ml.artifacts import save_main_model
from aivo_fl.ml.batched_training import LocalTrainingConfig
from aivo_fl.ml.cloning import clone_for_learner, load_learner_model
from aivo_fl.ml.data import LearnerData, generate_cohort, generate_curriculum
from aivo_fl.ml.federated_round import (
    LearnerUpdate,
    PrivacySettings,
    RoundOptions,
    aggregate_round,
    next_version,
)
from aivo_fl.ml.local_training import train_learner
from aivo_fl.ml.model import CurriculumNet, head_state
from aivo_fl.ml.privacy import PrivacyEvent
from aivo_fl.ml.training import TrainingConfig, train_model
from aivo_fl.ml.validation_gate import (
    DEFAULT_CURRICULUM_TOLERANCE,
    DEFAULT_TOLERANCE,
    correct_count,
    federated_accuracy,
    validate_candidate,
    with_heads,
)

FIRST_VERSION = "1.0.0"
# DP on, but with enough noise headroom for a dozen learners: the env default (0.1) is reported
# with its warning; real privacy needs thousands of learners per round. The clip norm sits near
# the local updates' own norms (0.15-0.3 with SGD and the proximal term): at 1.0 the noise,
# which scales with it, would drown a dozen learners' signal.
DEFAULT_PRIVACY = PrivacySettings(enabled=True, noise_multiplier=0.1, clip_norm=0.25)


def _personalized_accuracy(main_root: Path, learners_root: Path, cohort: list[LearnerData]) -> float:
    correct = total = 0
    for learner in cohort:
        model, _ = load_learner_model(main_root, learners_root, learner.learner_id)
        c, n = correct_count(model, learner.heldout)
        correct, total = correct + c, total + n
    return correct / total


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
    gate_tolerances: tuple[float, float] = (DEFAULT_TOLERANCE, DEFAULT_CURRICULUM_TOLERANCE),
) -> list[dict[str, Any]]:
    """Run ``rounds`` federated rounds over a synthetic cohort; one summary dict per round."""
    options = options or RoundOptions()
    with tempfile.TemporaryDirectory(prefix="aivo-sim-") as tmp:
        root = Path(work_dir) if work_dir is not None else Path(tmp)
        main_root, learners_root = root / "main", root / "learners"
        model, trained = train_model(
            generate_curriculum(curriculum_samples, seed),
            TrainingConfig(epochs=main_epochs, seed=seed, log_every=10**6, num_threads=1),
        )
        curriculum_val = generate_curriculum(1_000, seed + 1)
        save_main_model(main_root, FIRST_VERSION, model, {"val_accuracy": trained.val_accuracy}, seed)
        # Learners keep interacting between rounds: each round trains on that round's new
        # interactions (n_interactions of them, minus the held-out share), never the same data twice.
        cohort = generate_cohort(n_learners, seed, n_interactions * rounds)
        for learner in cohort:
            clone_for_learner(main_root, learners_root, learner.learner_id, FIRST_VERSION)
        return _run_rounds(
            model,
            main_root,
            learners_root,
            cohort,
            curriculum_val,
            rounds,
            local_epochs,
            options,
            privacy,
            seed,
            gate_tolerances,
        )


def _run_rounds(
    active: CurriculumNet,
    main_root: Path,
    learners_root: Path,
    cohort: list[LearnerData],
    curriculum_val: Any,
    rounds: int,
    local_epochs: int,
    options: RoundOptions,
    privacy: PrivacySettings,
    seed: int,
    gate_tolerances: tuple[float, float],
) -> list[dict[str, Any]]:
    history = [FIRST_VERSION]
    events: list[PrivacyEvent] = []
    ledger: dict[str, list[PrivacyEvent]] = {}
    heldouts = [learner.heldout for learner in cohort]
    rng = np.random.default_rng([seed, 99])
    summaries: list[dict[str, Any]] = []
    for round_no in range(1, rounds + 1):
        started = time.perf_counter()
        updates = []
        for learner in cohort:
            chunks = np.array_split(np.arange(len(learner.train)), rounds)
            session = train_learner(
                main_root,
                learners_root,
                learner.learner_id,
                learner.train.subset(chunks[round_no - 1]),
                learner.heldout,
                history[-1],
                LocalTrainingConfig(epochs=local_epochs),
            )
            updates.append(
                LearnerUpdate(
                    learner_id=learner.learner_id,
                    delta_path=Path(session.delta_path),
                    num_samples=session.samples,
                    source_version=session.source_version,
                    trained_at=session.finished_at,
                    improvement=session.accuracy_after - session.accuracy_before,
                )
            )
        now = max(u.trained_at for u in updates)
        result = aggregate_round(
            head_state(active),
            history[-1],
            history,
            updates,
            options,
            privacy,
            events,
            ledger,
            now if now.tzinfo else now.replace(tzinfo=UTC),
            rng,
            learners_root=learners_root,
        )
        if result.privacy_event is not None:
            events.append(result.privacy_event)
            for c in result.included:
                ledger.setdefault(c.learner_id, []).append(result.privacy_event)
        assert result.candidate_heads is not None
        candidate = with_heads(active, result.candidate_heads)
        gate = validate_candidate(active, candidate, heldouts, curriculum_val, *gate_tolerances)
        version_before = history[-1]
        if gate.accepted:
            version = next_version(version_before)
            save_main_model(
                main_root,
                version,
                candidate,
                {"heldout_accuracy": gate.heldout_accuracy_after},
                seed,
                parent_version=version_before,
            )
            history.append(version)
            active = candidate
        summaries.append(
            {
                "round": round_no,
                "version_before": version_before,
                "version_after": history[-1],
                "accepted": gate.accepted,
                "gate_reason": gate.reason,
                "main_accuracy_before": gate.heldout_accuracy_before,
                "main_accuracy_after": gate.heldout_accuracy_after,
                "main_accuracy_on_learners": federated_accuracy(active, heldouts),
                "personalized_accuracy": _personalized_accuracy(main_root, learners_root, cohort),
                "curriculum_accuracy": federated_accuracy(active, [curriculum_val]),
                "included": len(result.included),
                "excluded": len(result.excluded),
                "epsilon_round": result.epsilon_round,
                "epsilon_total": result.epsilon_total,
                "privacy_warning": result.privacy_warning,
                "seconds": time.perf_counter() - started,
            }
        )
    return summaries


def without_privacy(settings: PrivacySettings = DEFAULT_PRIVACY) -> PrivacySettings:
    return replace(settings, enabled=False)
