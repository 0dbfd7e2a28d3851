"""A seeded population of learners for federated rounds: who is there, who is active, what they do.

Built on the curriculum world of :mod:`.world`: every learner shares the population's shift away
from the curriculum (what federated learning should discover) and has a personal shift on top (what
a clone should learn). Who a learner is drives what they do: a learner's *drive* (their engagement,
and their ability at half its weight, as a standard score) sets how often they are active, how much
they do in an active week, whether they join late and how soon they stop. Nothing stands still:
each learner's preferences drift over the year and the content moves a little each term. A real
week's trouble comes along (:meth:`Population.faults`): a few updates arrive too late, a few uploads
break. The cold-start cohort is drawn from the late arrivals, at the week they arrive, and never
trains. Everything is vectorised: 10,000 learners' weekly data come from one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from aivo_fl.ml.samples import HEAD_CLASSES, Samples, check_fraction
from aivo_fl.ml.simulation.faults import DAMAGES, WeekFaults
from aivo_fl.ml.simulation.world import (
    ABILITY,
    ENGAGEMENT,
    PERSONAL_MEAN_STD,
    PREFERENCES,
    _cohort_shift,
    _personal_shifts,
    _repeat_rows,
    _sample,
    _Shift,
)

WEEKS_PER_YEAR = 52


@dataclass(frozen=True)
class PopulationConfig:
    n_learners: int = 10_000
    seed: int = 0
    eval_learners: int = 500  # cold-start cohort: late arrivals, never trained
    eval_interactions: int = 40  # per evaluation learner, in the week they arrive
    median_weekly_interactions: float = 8.0  # at average drive
    interactions_sigma: float = 1.0  # lognormal spread of a learner's weekly rate
    max_weekly_interactions: int = 400
    initial_fraction: float = 0.6  # present in week 1 (at average drive); the others arrive later
    arrival_weeks: int = 26  # late arrivals join in weeks 2..arrival_weeks
    weekly_leave_probability: float = 0.015  # chance of stopping each week, at average drive
    heldout_fraction: float = 0.25  # of each learner's interactions, for personalized evaluation
    # Drive = (engagement + ability_weight x ability) as a standard score; the slopes are per unit of it.
    ability_weight: float = 0.5
    activity_slope: float = 1.0  # logit of being active in a week
    rate_slope: float = 0.4  # log of the weekly interactions
    arrival_slope: float = 0.5  # logit of arriving late (subtracted: driven learners start on time)
    churn_slope: float = 0.7  # log of the weekly chance of stopping (subtracted)
    # Drift: a learner's preferences (two preference factors, modality taste) move by this standard
    # deviation over a year; each term the content's mean moves by this much per factor.
    preference_drift: float = 0.4
    term_weeks: int = 13
    content_drift: float = 0.15
    # A week's trouble, as fractions of the active learners' updates.
    late_fraction: float = 0.02  # arrives 8-28 days after it was trained (past the round's 7-day window)
    broken_fraction: float = 0.005  # the upload is damaged (flipped byte, cut off, never landed)

    def __post_init__(self) -> None:
        if self.n_learners < 1 or not 0 <= self.eval_learners < self.n_learners:
            raise ValueError("need n_learners >= 1 and 0 <= eval_learners < n_learners")
        check_fraction("heldout_fraction", self.heldout_fraction)
        check_fraction("initial_fraction", self.initial_fraction)
        if self.arrival_weeks < 2 or self.term_weeks < 1:
            raise ValueError("need arrival_weeks >= 2 and term_weeks >= 1")
        if min(self.preference_drift, self.content_drift, self.late_fraction, self.broken_fraction) < 0:
            raise ValueError("drifts and fault fractions must be >= 0")
        if self.late_fraction + self.broken_fraction > 1:
            raise ValueError("late_fraction + broken_fraction must be <= 1")


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


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: np.ndarray | float) -> np.ndarray:
    return np.log(p) - np.log1p(-np.asarray(p))


class Population:
    """N learners with fixed personal shifts, traffic and lifetimes; data drawn per week on demand."""

    def __init__(self, config: PopulationConfig | None = None) -> None:
        self.config = config = config or PopulationConfig()
        rng = np.random.default_rng([config.seed, 7])
        n = config.n_learners
        self.ids = np.array([f"learner-{i:05d}" for i in range(n)])
        self.shifts: _Shift = _personal_shifts(rng, n)
        self.drive = self._drive()
        noise = config.interactions_sigma * rng.standard_normal(n)
        self.weekly_rate = np.minimum(
            config.median_weekly_interactions * np.exp(config.rate_slope * self.drive + noise),
            config.max_weekly_interactions,
        )
        # Chance of being active in a week they are around: personal, higher for driven learners.
        self.activity = _sigmoid(_logit(rng.beta(2.0, 2.0, n)) + config.activity_slope * self.drive)
        self.arrival_week, self.leave_week = self._lifetimes(rng)
        self.is_eval = np.zeros(n, dtype=bool)
        self.is_eval[self._cold_start_learners(rng)] = True
        # Per year of drift: the preference factors and the modality taste move along these.
        self.preference_velocity = rng.normal(0.0, config.preference_drift, (n, 2))
        self.modality_velocity = rng.normal(0.0, config.preference_drift, (n, HEAD_CLASSES["modality"]))

    def _drive(self) -> np.ndarray:
        """Each learner's engagement and ability (half weight) as one standard score."""
        z = (self.shifts.learner_mean - _cohort_shift().learner_mean) / PERSONAL_MEAN_STD
        w = self.config.ability_weight
        return (z[:, ENGAGEMENT] + w * z[:, ABILITY]) / np.sqrt(1.0 + w * w)

    def _lifetimes(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Arrival and stopping weeks: the less driven join late more often and stop sooner."""
        c, n = self.config, self.config.n_learners
        late = rng.random(n) < _sigmoid(_logit(1.0 - c.initial_fraction) - c.arrival_slope * self.drive)
        arrival = np.where(late, rng.integers(2, c.arrival_weeks + 1, n), 1)
        hazard = np.clip(c.weekly_leave_probability * np.exp(-c.churn_slope * self.drive), 1e-9, 1.0)
        return arrival, arrival + rng.geometric(hazard)

    def _cold_start_learners(self, rng: np.random.Generator) -> np.ndarray:
        late = np.flatnonzero(self.arrival_week > 1)
        if len(late) < self.config.eval_learners:
            raise ValueError(
                f"only {len(late)} late arrivals for {self.config.eval_learners} cold-start learners: "
                "lower eval_learners or initial_fraction"
            )
        return rng.choice(late, self.config.eval_learners, replace=False)

    @property
    def eval_learners(self) -> np.ndarray:
        return np.flatnonzero(self.is_eval)

    def present(self, week: int) -> np.ndarray:
        """Training learners who have arrived and not stopped by `week` (1-based)."""
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
        return self._draw(rng, learners, counts, np.full(len(learners), week))

    def faults(self, week: int) -> WeekFaults:
        """`week`'s trouble among its active learners' updates: late ones, broken uploads."""
        c = self.config
        active = self.active(week)
        rng = np.random.default_rng([c.seed, 23, week])
        u = rng.random(len(active))
        late = active[u < c.late_fraction]
        broken = active[(u >= c.late_fraction) & (u < c.late_fraction + c.broken_fraction)]
        days = rng.integers(8, 29, len(late))
        damages = rng.integers(0, len(DAMAGES), len(broken))
        return WeekFaults(
            days_late={str(self.ids[i]): int(d) for i, d in zip(late, days, strict=True)},
            broken={str(self.ids[i]): DAMAGES[k] for i, k in zip(broken, damages, strict=True)},
        )

    @cached_property
    def evaluation_cohort(self) -> Interactions:
        """The fixed cold-start set: every evaluation learner's interactions in the week they arrive,
        none ever trained on."""
        learners = self.eval_learners
        rng = np.random.default_rng([self.config.seed, 17])
        counts = np.full(len(learners), self.config.eval_interactions)
        return self._draw(rng, learners, counts, self.arrival_week[learners])

    def weeks(self, first: int, last: int) -> Interactions:
        return concat_interactions([self.week(w) for w in range(first, last + 1)])

    def shifts_at(self, learners: np.ndarray, weeks: np.ndarray) -> _Shift:
        """``learners``' shifts in ``weeks`` (one week each): their preferences drifted for the time
        since week 1, the content of that week's term."""
        years = ((np.asarray(weeks) - 1) / WEEKS_PER_YEAR)[:, None]
        base = _repeat_rows(self.shifts, learners)
        learner_mean = base.learner_mean.copy()
        learner_mean[:, PREFERENCES] += self.preference_velocity[learners] * years
        terms = (np.asarray(weeks) - 1) // self.config.term_weeks
        offsets = dict(base.logit_offsets)
        offsets["modality"] = offsets["modality"] + self.modality_velocity[learners] * years
        return _Shift(
            learner_mean=learner_mean,
            learner_std=base.learner_std,
            content_mean=base.content_mean + self.content_offsets(int(terms.max(initial=0)))[terms],
            content_std=base.content_std,
            logit_offsets=offsets,
            struggle=base.struggle,
        )

    def content_offsets(self, last_term: int) -> np.ndarray:
        """(last_term + 1, 4): how far the content's mean has moved in each term since the first
        (a seeded random walk, one step per term)."""
        factors = self.shifts.content_mean.shape[1]
        steps = [np.zeros(factors)] + [
            np.random.default_rng([self.config.seed, 19, term]).normal(0.0, self.config.content_drift, factors)
            for term in range(1, last_term + 1)
        ]
        return np.cumsum(steps, axis=0)

    def _draw(
        self, rng: np.random.Generator, learners: np.ndarray, counts: np.ndarray, weeks: np.ndarray
    ) -> Interactions:
        local = np.repeat(np.arange(len(learners)), counts)
        shift = _repeat_rows(self.shifts_at(learners, weeks), local)
        samples = _sample(rng, len(local), shift)
        # Held out positionally within each learner's week, counting back from its last interaction
        # (always held out), so every learner with 2+ interactions has both sides.
        from_end = np.repeat(np.cumsum(counts), counts) - 1 - np.arange(len(local))
        every = max(2, round(1.0 / self.config.heldout_fraction))
        return Interactions(samples, learners[local].astype(np.int64), from_end % every == 0)
