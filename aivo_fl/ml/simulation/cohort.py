"""A small cohort through federated rounds with the real files: every learner cloned and trained
from the model store, rounds run by :class:`~aivo_fl.ml.simulation.server.SimulatedServer` (the
product's driver, without a database).

Each round every learner trains its clone locally (rebasing onto the active main version first) on
that round's share of its interactions; an accepted candidate is saved as the next main version.
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np

from aivo_fl.ml.model import CurriculumNet
from aivo_fl.ml.round.gate import Tolerances, correct_count, federated_accuracy
from aivo_fl.ml.round.gather import LearnerUpdate
from aivo_fl.ml.round.options import PrivacySettings, RoundOptions
from aivo_fl.ml.samples import LearnerData
from aivo_fl.ml.simulation.server import FIRST_VERSION, SimulatedServer
from aivo_fl.ml.simulation.world import generate_cohort, generate_curriculum
from aivo_fl.ml.store.cloning import clone_for_learner, load_learner_model
from aivo_fl.ml.training.clones import train_learner
from aivo_fl.ml.training.local import LocalTrainingConfig
from aivo_fl.ml.training.main_model import TrainingConfig, split_curriculum, train_model

# DP on with the environment's default noise multiplier (0.1): epsilon is reported with its warning.
# The clip norm sits near the local updates' own norms (0.15-0.3 with SGD and the proximal term):
# at 1.0 the noise, which scales with it, would drown a dozen learners' signal.
DEFAULT_PRIVACY = PrivacySettings(enabled=True, noise_multiplier=0.1, clip_norm=0.25)


def _personalized_accuracy(main_root: Path, learners_root: Path, learners: list[LearnerData]) -> float:
    correct = total = 0
    for learner in learners:
        model, _ = load_learner_model(main_root, learners_root, learner.learner_id)
        c, n = correct_count(model, learner.heldout)
        correct, total = correct + c, total + n
    return correct / total


def _train_learners(
    server: SimulatedServer, learners_root: Path, learners: list[LearnerData], round_no: int, rounds: int, epochs: int
) -> list[LearnerUpdate]:
    # Learners keep interacting between rounds: each round trains on that round's share of their
    # interactions, never the same data twice.
    assert server.main_root is not None
    updates = []
    for learner in learners:
        chunks = np.array_split(np.arange(len(learner.train)), rounds)
        session = train_learner(
            server.main_root,
            learners_root,
            learner.learner_id,
            learner.train.subset(chunks[round_no - 1]),
            learner.heldout,
            server.version,
            LocalTrainingConfig(epochs=epochs),
        )
        trained_at = session.finished_at if session.finished_at.tzinfo else session.finished_at.replace(tzinfo=UTC)
        updates.append(
            LearnerUpdate(
                learner.learner_id,
                Path(session.delta_path),
                session.samples,
                session.source_version,
                trained_at,
                session.improvement,
            )
        )
    return updates


def _summary(
    server: SimulatedServer,
    learners_root: Path,
    learners: list[LearnerData],
    judged: Any,
    before: tuple[str, CurriculumNet],
) -> dict[str, Any]:
    """The simulation's own measures (it holds every learner's data; nothing here is released)."""
    result, verdict = judged.result, judged.verdict
    heldouts = [learner.heldout for learner in learners]
    assert server.main_root is not None
    after = federated_accuracy(server.active, heldouts)
    return {
        "version_before": before[0],
        "version_after": server.version,
        "accepted": verdict.accepted,
        "gate_reason": verdict.reason,
        "gate_change_points": verdict.performance_improvement,  # privatized under DP
        "main_accuracy_before": federated_accuracy(before[1], heldouts),
        "main_accuracy_after": after,
        "main_accuracy_on_learners": after,
        "personalized_accuracy": _personalized_accuracy(server.main_root, learners_root, learners),
        "curriculum_accuracy": federated_accuracy(server.active, [server.curriculum_val]),
        "curriculum_reference": verdict.curriculum_reference,
        "step_scale": judged.step_scale,
        "included": len(result.included),
        "excluded": len(result.excluded),
        "epsilon_round": result.privacy.epsilon_round,
        "epsilon_total": result.privacy.epsilon_total,
        "privacy_warning": result.privacy.warning,
    }


def _trained_main(curriculum_samples: int, main_epochs: int, seed: int) -> tuple[CurriculumNet, TrainingConfig]:
    config = TrainingConfig(epochs=main_epochs, seed=seed, log_every=10**6, num_threads=1)
    model, _ = train_model(generate_curriculum(curriculum_samples, seed), config)
    return model, config


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
    tolerances: Tolerances | None = None,
) -> list[dict[str, Any]]:
    """Run ``rounds`` federated rounds over a synthetic cohort; one summary dict per round."""
    with tempfile.TemporaryDirectory(prefix="aivo-sim-") as tmp:
        root = Path(work_dir) if work_dir is not None else Path(tmp)
        model, config = _trained_main(curriculum_samples, main_epochs, seed)
        curriculum_train = split_curriculum(
            generate_curriculum(curriculum_samples, seed), config.val_fraction, config.test_fraction, seed
        ).train
        server = SimulatedServer(model, curriculum_train, generate_curriculum(1_000, seed + 1), root / "main")
        learners_root = root / "learners"
        learners = generate_cohort(n_learners, seed, n_interactions * rounds)
        for learner in learners:
            clone_for_learner(root / "main", learners_root, learner.learner_id, FIRST_VERSION)
        rng = np.random.default_rng([seed, 99])
        summaries = []
        for round_no in range(1, rounds + 1):
            started = time.perf_counter()
            updates = _train_learners(server, learners_root, learners, round_no, rounds, local_epochs)
            before = (server.version, server.active)
            judged = server.round(
                updates,
                {learner.learner_id: learner.heldout for learner in learners},
                options or RoundOptions(),
                privacy,
                max(u.trained_at for u in updates),
                rng,
                tolerances=tolerances,
                learners_root=learners_root,
            )
            summary = _summary(server, learners_root, learners, judged, before)
            summaries.append({"round": round_no, **summary, "seconds": time.perf_counter() - started})
        return summaries
