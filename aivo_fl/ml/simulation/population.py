"""A seeded population of learners for federated rounds: who is there, who is active, what they do.

Built on the curriculum world of `data.py`: every learner shares the population's shift away from
the curriculum (what federated learning should discover) and has a personal shift on top (what a
clone should learn). Realistic traffic: interactions per active week are lognormal (many learners
do little, a few do a lot), a learner is active in a week with a personal probability, learners
arrive over the weeks and leave. A fixed evaluation cohort never trains: it measures what a new
learner gets from the main model (cold start). Everything is vectorised: 10,000 learners' weekly
data come from one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from aivo_fl.ml.samples import Samples, check_fraction
from aivo_fl.ml.simulation.world import _personal_shifts, _repeat_rows, _sample, _Shift


@dataclass(frozen=True)
class PopulationConfig:
    n_learners: int = 10_000
    seed: int = 0
    eval_learners: int = 500  # fixed cold-start cohort, never trained
    eval_interactions: int = 40  # per evaluation learner
    median_weekly_interactions: float = 8.0
    interactions_sigma: float = 1.0  # lognormal spread of a learner's weekly rate
    max_weekly_interactions: int = 400
    initial_fraction: float = 0.6  # present in week 1; the others arrive over `arrival_weeks`
    arrival_weeks: int = 12
    weekly_leave_probability: float = 0.03
    heldout_fraction: float = 0.25  # of each learner's interactions, for personalized evaluation

    def __post_init__(self) -> None:
        if self.n_learners < 1 or not 0 <= self.eval_learners < self.n_learners:
            raise ValueError("need n_learners >= 1 and 0 <= eval_learners < n_learners")
        check_fraction("heldout_fraction", self.heldout_fraction)


@dataclass(frozen=True)
class Interactions:
    """Interactions of many learners, grouped by learner (rows of one learner are contiguous)."""

    samples: Samples
    learner: np.ndarray  # (n,) int64 population index of each row
    heldout: np.ndarray  # (n,) bool: held out for personalized evaluation

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def learners(self) -> np.ndarray:
        return np.unique(self.learner)

    def train(self) -> Interactions:
        return self._rows(~self.heldout)

    def evaluation(self) -> Interactions:
        return self._rows(self.heldout)

    def _rows(self, mask: np.ndarray) -> Interactions:
        index = np.flatnonzero(mask)
        return Interactions(self.samples.subset(index), self.learner[index], self.heldout[index])

    def by_learner(self) -> dict[int, Samples]:
        starts = np.flatnonzero(np.r_[True, self.learner[1:] != self.learner[:-1]])
        ends = np.r_[starts[1:], len(self.learner)]
        return {int(self.learner[a]): self.samples.subset(np.arange(a, b)) for a, b in zip(starts, ends, strict=True)}


def concat_samples(parts: list[Samples]) -> Samples:
    return Samples(
        features=np.concatenate([p.features for p in parts]),
        targets={h: np.concatenate([p.targets[h] for p in parts]) for h in parts[0].targets},
        bayes_labels={h: np.concatenate([p.bayes_labels[h] for p in parts]) for h in parts[0].bayes_labels},
    )


def concat_interactions(parts: list[Interactions]) -> Interactions:
    return Interactions(
        concat_samples([p.samples for p in parts]),
        np.concatenate([p.learner for p in parts]),
        np.concatenate([p.heldout for p in parts]),
    )


class Population:
    """N learners with fixed personal shifts, traffic and lifetimes; data drawn per week on demand."""

    def __init__(self, config: PopulationConfig | None = None) -> None:
        self.config = config = config or PopulationConfig()
        rng = np.random.default_rng([config.seed, 7])
        n = config.n_learners
        self.ids = np.array([f"learner-{i:05d}" for i in range(n)])
        self.shifts: _Shift = _personal_shifts(rng, n)
        self.weekly_rate = np.minimum(
            config.median_weekly_interactions * np.exp(config.interactions_sigma * rng.standard_normal(n)),
            config.max_weekly_interactions,
        )
        self.activity = rng.beta(2.0, 2.0, n)  # chance of being active in a week they are around
        late = rng.random(n) >= config.initial_fraction
        self.arrival_week = np.where(late, rng.integers(2, config.arrival_weeks + 1, n), 1)
        self.leave_week = self.arrival_week + rng.geometric(max(config.weekly_leave_probability, 1e-9), n)
        self.is_eval = np.zeros(n, dtype=bool)
        self.is_eval[rng.choice(n, config.eval_learners, replace=False)] = True

    @property
    def eval_learners(self) -> np.ndarray:
        return np.flatnonzero(self.is_eval)

    def present(self, week: int) -> np.ndarray:
        """Training learners who have arrived and not left by `week` (1-based)."""
        here = (self.arrival_week <= week) & (week < self.leave_week) & ~self.is_eval
        return np.flatnonzero(here)

    def active(self, week: int) -> np.ndarray:
        """Training learners with interactions in `week`: present, and active this week."""
        present = self.present(week)
        draw = np.random.default_rng([self.config.seed, 11, week]).random(self.config.n_learners)
        return present[draw[present] < self.activity[present]]

    def week(self, week: int) -> Interactions:
        """The interactions of `week`'s active training learners (each has at least 2)."""
        if week < 1:
            raise ValueError(f"week must be >= 1, got {week}")
        learners = self.active(week)
        rng = np.random.default_rng([self.config.seed, 13, week])
        counts = np.maximum(rng.poisson(self.weekly_rate[learners]), 2)
        return self._draw(rng, learners, counts)

    @cached_property
    def evaluation_cohort(self) -> Interactions:
        """The fixed cold-start set: every evaluation learner's interactions, none ever trained on."""
        learners = self.eval_learners
        rng = np.random.default_rng([self.config.seed, 17])
        counts = np.full(len(learners), self.config.eval_interactions)
        return self._draw(rng, learners, counts)

    def weeks(self, first: int, last: int) -> Interactions:
        return concat_interactions([self.week(w) for w in range(first, last + 1)])

    def _draw(self, rng: np.random.Generator, learners: np.ndarray, counts: np.ndarray) -> Interactions:
        rows = np.repeat(learners, counts)
        samples = _sample(rng, len(rows), _repeat_rows(self.shifts, rows))
        # Held out positionally within each learner's week, counting back from its last interaction
        # (always held out), so every learner with 2+ interactions has both sides.
        from_end = np.repeat(np.cumsum(counts), counts) - 1 - np.arange(len(rows))
        every = max(2, round(1.0 / self.config.heldout_fraction))
        return Interactions(samples, rows.astype(np.int64), from_end % every == 0)
