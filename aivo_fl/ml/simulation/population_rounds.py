"""A seeded population of learners through weekly federated rounds, in memory: each week every
active learner trains at once (:mod:`aivo_fl.ml.simulation.week`), then the product's round runs on
their deltas (:class:`~aivo_fl.ml.simulation.server.SimulatedServer`); the main model is scored
against the yardsticks of :mod:`aivo_fl.ml.simulation.evaluation` after every round."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from aivo_fl.ml.aggregation.server_optimizers import server_optimizer
from aivo_fl.ml.model import CurriculumNet, freeze_trunk, frozen_layers_for
from aivo_fl.ml.privacy.ledger import compose_rounds
from aivo_fl.ml.round.backtrack import MAX_HALVINGS
from aivo_fl.ml.round.gate import Tolerances
from aivo_fl.ml.round.gather import LearnerUpdate
from aivo_fl.ml.round.options import AnchorOptions, PrivacySettings, RoundOptions
from aivo_fl.ml.samples import Samples
from aivo_fl.ml.simulation.evaluation import (
    accuracy,
    cold_start_accuracy,
    gap_closed,
    personalized_accuracy,
    train_oracle,
)
from aivo_fl.ml.simulation.population import Interactions, Population, concat_interactions
from aivo_fl.ml.simulation.server import SimulatedServer
from aivo_fl.ml.simulation.week import Tensors, train_active_learners
from aivo_fl.ml.training.local import LocalTrainingConfig, personal_tensors
from aivo_fl.ml.training.main_model import TrainingConfig, split_curriculum

YEAR = 52
FIRST_WEEK = datetime(2026, 1, 5, tzinfo=UTC)
# The privacy configurations compared, as the environment's settings (explicit, so a shell's .env
# cannot change them): `aivo_fl.config.load_settings(**overrides).privacy()` turns one into knobs.
CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "guide defaults": dict(enable_differential_privacy=True, noise_multiplier=0.1, clip_norm="1.0"),
    "user-level preset": dict(privacy_preset="user-level"),
    "no DP": dict(enable_differential_privacy=False),
}


@dataclass(frozen=True)
class Knobs:
    """What a simulation may choose beyond the product's round options."""

    depth: str = "heads"
    server_optimizer: str = RoundOptions.server_optimizer
    server_learning_rate: float | None = None  # None: the product's default for the optimizer
    local: LocalTrainingConfig = field(default_factory=lambda: LocalTrainingConfig(epochs=5, proximal_mu=0.1))
    # The gate's cumulative curriculum guard (the product's default is 5 points).
    curriculum_tolerance: float = 0.03
    anchor: AnchorOptions | None = RoundOptions.anchor
    halvings: int = MAX_HALVINGS

    def options(self) -> RoundOptions:
        return RoundOptions(
            server_optimizer=self.server_optimizer, learning_rate=self.server_learning_rate, anchor=self.anchor
        )

    def describe(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "server_optimizer": self.server_optimizer,
            "server_learning_rate": server_optimizer(self.server_optimizer, self.server_learning_rate).learning_rate,
            "local": self.local.__dict__,
            "curriculum_tolerance": self.curriculum_tolerance,
            "anchor": None if self.anchor is None else self.anchor.__dict__,
            "halvings": self.halvings,
        }


@dataclass(frozen=True)
class World:
    """What every configuration shares: the population, the round-0 model, the yardsticks."""

    population: Population
    weeks: int
    round0: CurriculumNet
    curriculum_val: Samples
    curriculum_train: Samples  # what the main model was trained on: the server holds it
    oracle: float  # the oracle's cold-start accuracy
    oracle_curriculum: float  # what fitting the population costs the curriculum, centrally


def oracle_interactions(population: Population, weeks: int) -> Interactions:
    """The oracle's data: every week's training interactions of the training learners, pooled."""
    return concat_interactions([population.week(w).train() for w in range(1, weeks + 1)])


def build_world(
    main: CurriculumNet,
    population: Population,
    weeks: int,
    depth: str,
    curriculum: Samples,
    curriculum_val: Samples,
    seed: int = 0,
) -> World:
    """``main`` (trained on ``curriculum``) at personalization ``depth``, and the oracle trained on
    ``weeks`` of ``population``."""
    main = copy.deepcopy(main)
    main.frozen_layers = frozen_layers_for(depth)
    freeze_trunk(main)
    oracle = train_oracle(main, oracle_interactions(population, weeks).samples)
    # The training split the main model was fitted on (train_model's own split), never validation or test.
    defaults = TrainingConfig()
    train = split_curriculum(curriculum, defaults.val_fraction, defaults.test_fraction, seed).train
    cold, curriculum_accuracy = accuracy(oracle, population.evaluation_cohort.samples), accuracy(oracle, curriculum_val)
    return World(population, weeks, main, curriculum_val, train, cold, curriculum_accuracy)


def _offered(
    ids: list[str], learners: list[int], samples: list[int], version: str, now: datetime
) -> list[LearnerUpdate]:
    # FedAvg weighs by samples only; the local improvement is not measured here (NaN = not known).
    return [
        LearnerUpdate(ids[i], Path(ids[i]), n, version, now, float("nan"))
        for i, n in zip(learners, samples, strict=True)
    ]


def _week(
    world: World,
    server: SimulatedServer,
    offsets: dict[int, Tensors],
    week: int,
    privacy: PrivacySettings,
    knobs: Knobs,
    rng: np.random.Generator,
) -> dict[str, Any]:
    data = world.population.week(week)
    update = train_active_learners(server.active, data.train(), offsets, replace(knobs.local, seed=week))
    offsets.update(update.offsets)
    now = FIRST_WEEK + timedelta(weeks=week)
    ids = world.population.ids
    deltas = {ids[i]: {k: v.numpy() for k, v in d.items()} for i, d in zip(update.learners, update.deltas, strict=True)}
    judged = server.round(
        _offered(ids, update.learners, update.samples, server.version, now),
        {ids[i]: samples for i, samples in data.evaluation().by_learner().items()},
        knobs.options(),
        privacy,
        now,
        rng,
        tolerances=Tolerances(curriculum=knobs.curriculum_tolerance),
        halvings=knobs.halvings,
        in_memory=deltas,
        faults=world.population.faults(week),
    )
    result = judged.result
    return {
        "learners": len(update.learners),
        "included": len(result.included),
        "accepted": judged.verdict.accepted,
        "gate_reason": judged.verdict.reason,
        "step_scale": judged.step_scale,
        "clip_norm": result.clip_norm,
        "epsilon": result.privacy.epsilon_total,
        **_personalized(server.active, offsets, data.evaluation()),
    }


def _personalized(active: CurriculumNet, offsets: dict[int, Tensors], heldout: Interactions) -> dict[str, float]:
    main = personal_tensors(active)
    personal = {i: {k: main[k] + o[k] for k in o} for i, o in offsets.items()}
    result = personalized_accuracy(active, personal, heldout)
    return {"personalized_clones": result.clones, "personalized_main": result.main}


def _scores(world: World, model: CurriculumNet, round0_cold: float) -> dict[str, float]:
    cold = cold_start_accuracy(model, world.population.evaluation_cohort)
    return {
        "cold_start": cold,
        "curriculum": accuracy(model, world.curriculum_val),
        "gap_closed": gap_closed(cold, round0_cold, world.oracle),
    }


def run_configuration(
    world: World,
    privacy: PrivacySettings,
    knobs: Knobs,
    seed: int = 0,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every week's round under ``privacy``; one row per round (round 0 = the curriculum model),
    each handed to ``on_row`` as it completes."""
    server = SimulatedServer(copy.deepcopy(world.round0), world.curriculum_train, world.curriculum_val)
    offsets: dict[int, Tensors] = {}  # each learner's kept personalization
    round0_cold = cold_start_accuracy(world.round0, world.population.evaluation_cohort)
    rows = [{"round": 0, **_scores(world, world.round0, round0_cold), "epsilon": 0.0, "seconds": 0.0}]
    rng = np.random.default_rng([seed, 99])
    for week in range(1, world.weeks + 1):
        started = time.perf_counter()
        row = _week(world, server, offsets, week, privacy, knobs, rng)
        scores = _scores(world, server.active, round0_cold)
        rows.append({"round": week, **scores, **row, "seconds": time.perf_counter() - started})
        if on_row is not None:
            on_row(rows[-1])
    recorded = list(server.privacy.rounds)
    year = recorded + [recorded[-1]] * (YEAR - len(recorded)) if recorded else []
    return {
        "privacy": privacy.__dict__,
        "rounds": rows,
        "accuracy": rows[-1]["cold_start"],
        "epsilon_1": compose_rounds(recorded[:1], privacy.delta).epsilon if recorded else None,
        "epsilon_52": compose_rounds(year, privacy.delta).epsilon if year else None,
    }
