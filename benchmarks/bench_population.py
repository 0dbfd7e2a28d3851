"""The simulated school district: how fast a year of weeks is drawn, and what the year looks like.

A seeded population of 10,000 learners (``--quick``: 2,000) through 52 weekly draws (quick: 8):
seconds per week for the vectorised draw (every active learner's interactions, their faults),
against a plain per-learner loop (each active learner drawn on its own, the same world, timed on a
sample of the week's learners and scaled to all of them) and the floor of the week's random draws
alone (the normal and uniform numbers one week needs, nothing else). Beside it, what the year
looks like: learners present and active, interactions, late and broken updates per term, learners
who stopped, and how far the content moved. Week 2 then goes through the product's round with its
faults, against the same round without them, and the round's refusal reasons are tallied.

    python -m benchmarks population            # 10,000 learners, 52 weeks
    python -m benchmarks.bench_population --quick
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aivo_fl.ml.model import CurriculumNet, head_state
from aivo_fl.ml.round.gate import Tolerances
from aivo_fl.ml.round.gather import LearnerUpdate
from aivo_fl.ml.round.options import PrivacySettings, RoundOptions
from aivo_fl.ml.runtime import configure_cpu
from aivo_fl.ml.samples import NUM_FEATURES
from aivo_fl.ml.simulation.population import WEEKS_PER_YEAR, Population, PopulationConfig
from aivo_fl.ml.simulation.server import SimulatedServer
from aivo_fl.ml.simulation.world import _repeat_rows, _sample, generate_curriculum
from benchmarks.report import Column, cli
from benchmarks.report import table as text_table

LOOP_SAMPLE = 200  # learners timed one at a time, per measured week


def _vectorised_week(population: Population, week: int) -> dict[str, Any]:
    started, cpu = time.perf_counter(), time.process_time()
    data = population.week(week)
    faults = population.faults(week)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    return {
        "week": week,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,  # this process's CPU time: what the week costs when the machine is shared
        "present": len(population.present(week)),
        "active": len(data.learners),
        "interactions": len(data),
        "late": len(faults.days_late),
        "broken": len(faults.broken),
    }


def _loop_seconds_per_learner(population: Population, week: int) -> float:
    """The same week drawn one learner at a time (one `_sample` call each), per learner."""
    learners = population.active(week)[:LOOP_SAMPLE]
    rng = np.random.default_rng([population.config.seed, 31, week])
    counts = np.maximum(rng.poisson(population.weekly_rate[learners]), 2)
    shifts = population.shifts_at(learners, np.full(len(learners), week))
    started = time.perf_counter()
    for row, count in enumerate(counts):
        _sample(rng, int(count), _repeat_rows(shifts, np.full(int(count), row)))
    return (time.perf_counter() - started) / max(len(learners), 1)


def _floor_seconds(interactions: int, rng: np.random.Generator) -> float:
    """The random numbers a week of ``interactions`` needs (latents, feature noise, labels), alone."""
    started = time.perf_counter()
    rng.standard_normal((interactions, 8))
    rng.standard_normal((interactions, NUM_FEATURES))
    rng.random((interactions, 3))
    return time.perf_counter() - started


def _round_of_week(population: Population, week: int, with_faults: bool) -> dict[str, Any]:
    """One product round over the week's active learners (small random deltas from an untrained
    model: this measures the round's path, not learning), with or without the week's faults."""
    torch.manual_seed(0)
    server = SimulatedServer(CurriculumNet(), generate_curriculum(500, seed=0), generate_curriculum(500, seed=1))
    data = population.week(week)
    ids = [str(population.ids[i]) for i in data.learners]
    rng = np.random.default_rng(week)
    heads = head_state(server.active)
    deltas = {i: {k: (1e-3 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in heads.items()} for i in ids}
    now = datetime(2026, 1, 5, tzinfo=UTC) + timedelta(weeks=week)
    offered = [LearnerUpdate(i, Path(i), 10, server.version, now, float("nan")) for i in ids]
    heldout = {str(population.ids[i]): s for i, s in data.evaluation().by_learner().items()}
    faults = population.faults(week) if with_faults else None
    started = time.perf_counter()
    judged = server.round(
        offered,
        heldout,
        RoundOptions(anchor=None),
        PrivacySettings(enabled=False, noise_multiplier=0.0, clip_norm=1.0),
        now,
        rng,
        tolerances=Tolerances(learners=1.0, curriculum=1.0),
        in_memory=deltas,
        faults=faults,
    )
    seconds = time.perf_counter() - started
    reasons = Counter(
        "stale" if c.excluded_reason.startswith("stale") else c.excluded_reason
        for c in judged.result.excluded
        if c.excluded_reason is not None
    )
    return {"seconds": seconds, "offered": len(ids), "included": len(judged.result.included), "refused": reasons}


def _terms(population: Population, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per term: mean learners present and active per week, faults, who stopped, the content's move."""
    term_weeks = population.config.term_weeks
    out = []
    for term in range(1 + (rows[-1]["week"] - 1) // term_weeks):
        weeks = [r for r in rows if (r["week"] - 1) // term_weeks == term]
        first, last = weeks[0]["week"], weeks[-1]["week"]
        stopped = (population.leave_week > first) & (population.leave_week <= last + 1) & ~population.is_eval
        out.append(
            {
                "term": term + 1,
                "weeks": f"{first}-{last}",
                "present": float(np.mean([r["present"] for r in weeks])),
                "active": float(np.mean([r["active"] for r in weeks])),
                "interactions": float(np.mean([r["interactions"] for r in weeks])),
                "late": int(sum(r["late"] for r in weeks)),
                "broken": int(sum(r["broken"] for r in weeks)),
                "stopped": int(stopped.sum()),
                "arrived": int(((population.arrival_week >= max(first, 2)) & (population.arrival_week <= last)).sum()),
                "content_moved": float(np.linalg.norm(population.content_offsets(term)[term])),
            }
        )
    return out


def _engagement_quartiles(population: Population, rows: list[dict[str, Any]]) -> dict[str, float]:
    """Least vs most driven quarter of the training learners: active share, weeks stayed, late start."""
    training = ~population.is_eval
    low = training & (population.drive <= np.quantile(population.drive, 0.25))
    high = training & (population.drive >= np.quantile(population.drive, 0.75))
    stays = np.minimum(population.leave_week, WEEKS_PER_YEAR + 1) - population.arrival_week
    return {
        "activity_low": float(population.activity[low].mean()),
        "activity_high": float(population.activity[high].mean()),
        "weeks_stayed_low": float(np.median(stays[low])),
        "weeks_stayed_high": float(np.median(stays[high])),
        "late_start_low": float((population.arrival_week[low] > 1).mean()),
        "late_start_high": float((population.arrival_week[high] > 1).mean()),
        "weekly_rate_low": float(np.median(population.weekly_rate[low])),
        "weekly_rate_high": float(np.median(population.weekly_rate[high])),
    }


def run(quick: bool = False) -> dict[str, Any]:
    configure_cpu(1)  # one torch thread: the gate's forward passes spin-wait on a shared machine otherwise
    config = PopulationConfig(n_learners=2_000 if quick else 10_000, eval_learners=100 if quick else 500)
    weeks = 8 if quick else WEEKS_PER_YEAR
    started = time.perf_counter()
    population = Population(config)
    build_seconds = time.perf_counter() - started
    started = time.perf_counter()
    cohort = population.evaluation_cohort
    cohort_seconds = time.perf_counter() - started
    rows = [_vectorised_week(population, w) for w in range(1, weeks + 1)]
    measured = range(1, weeks + 1, max(1, weeks // 4))  # the loop and the floor on a few weeks
    loop = [_loop_seconds_per_learner(population, w) * rows[w - 1]["active"] for w in measured]
    floor = [_floor_seconds(rows[w - 1]["interactions"], np.random.default_rng(w)) for w in measured]
    vectorised = float(np.mean([rows[w - 1]["seconds"] for w in measured]))
    clean, faulty = _round_of_week(population, 2, False), _round_of_week(population, 2, True)
    return {
        "config": config.__dict__,
        "weeks": weeks,
        "build_seconds": build_seconds,
        "evaluation_cohort": {
            "learners": len(cohort.learners),
            "interactions": len(cohort),
            "seconds": cohort_seconds,
            "arrival_weeks": [
                int(population.arrival_week[population.eval_learners].min()),
                int(population.arrival_week[population.eval_learners].max()),
            ],
        },
        "speed": {
            "vectorised_s_per_week": vectorised,
            "loop_s_per_week": float(np.mean(loop)),
            "floor_s_per_week": float(np.mean(floor)),
            "loop_learners_timed_per_week": LOOP_SAMPLE,
            "speedup_vs_loop": float(np.mean(loop)) / vectorised,
            "vs_floor": vectorised / float(np.mean(floor)),
            "mean_s_per_week_all": float(np.mean([r["seconds"] for r in rows])),
            "max_s_per_week_all": float(np.max([r["seconds"] for r in rows])),
            "mean_cpu_s_per_week_all": float(np.mean([r["cpu_seconds"] for r in rows])),
            "mean_active_per_week": float(np.mean([r["active"] for r in rows])),
            "mean_interactions_per_week": float(np.mean([r["interactions"] for r in rows])),
        },
        "round_week_2": {"without_faults": clean, "with_faults": faulty},
        "terms": _terms(population, rows),
        "engagement_quartiles": _engagement_quartiles(population, rows),
        "per_week": rows,
    }


TERM_COLUMNS = [
    Column("term", "term"),
    Column("weeks", "weeks"),
    Column("present", "present/wk", "{:,.0f}"),
    Column("active", "active/wk", "{:,.0f}"),
    Column("interactions", "interactions/wk", "{:,.0f}"),
    Column("arrived", "arrived", "{:,}"),
    Column("stopped", "stopped", "{:,}"),
    Column("late", "late updates", "{:,}"),
    Column("broken", "broken uploads", "{:,}"),
    Column("content_moved", "content moved", "{:.2f}"),
]


def table(result: dict[str, Any]) -> str:
    speed, cohort, q = result["speed"], result["evaluation_cohort"], result["engagement_quartiles"]
    n, vectorised = result["config"]["n_learners"], speed["vectorised_s_per_week"]
    speed_rows = [
        {"draw": f"vectorised ({n:,} learners)", "s": vectorised, "x": 1.0},
        {"draw": "per-learner loop (scaled)", "s": speed["loop_s_per_week"], "x": speed["speedup_vs_loop"]},
        {"draw": "floor: the random draws alone", "s": speed["floor_s_per_week"], "x": 1 / speed["vs_floor"]},
    ]
    columns = [
        Column("draw", "one week's draw"),
        Column("s", "s/week", "{:.3f}"),
        Column("x", "vs vectorised", "{:.2f}x"),
    ]
    weeks = (
        f"all {result['weeks']} weeks: {speed['mean_s_per_week_all']:.3f} s a week on average "
        f"({speed['mean_cpu_s_per_week_all']:.3f} s of CPU), at most {speed['max_s_per_week_all']:.3f} s; "
        f"{speed['mean_active_per_week']:,.0f} active learners, {speed['mean_interactions_per_week']:,.0f} "
        "interactions a week"
    )
    built = (
        f"population built in {result['build_seconds']:.2f} s; cold-start cohort: {cohort['learners']} late "
        f"arrivals (weeks {cohort['arrival_weeks'][0]}-{cohort['arrival_weeks'][1]}), "
        f"{cohort['interactions']:,} interactions in {cohort['seconds']:.2f} s"
    )
    quarters = (
        "least vs most driven quarter (engagement + ability/2): "
        f"active {q['activity_low']:.0%} vs {q['activity_high']:.0%} of their weeks, "
        f"median weekly rate {q['weekly_rate_low']:.1f} vs {q['weekly_rate_high']:.1f}, "
        f"stay {q['weeks_stayed_low']:.0f} vs {q['weeks_stayed_high']:.0f} weeks (median), "
        f"start late {q['late_start_low']:.0%} vs {q['late_start_high']:.0%}"
    )
    terms = text_table(result["terms"], TERM_COLUMNS, title="the year, per term")
    clean, faulty = result["round_week_2"]["without_faults"], result["round_week_2"]["with_faults"]
    refused = ", ".join(f"{n} {reason}" for reason, n in sorted(faulty["refused"].items()))
    round_line = (
        f"week 2 through the product's round: {faulty['offered']:,} offered, {faulty['included']:,} included, "
        f"refused: {refused or 'none'}; {faulty['seconds']:.2f} s against {clean['seconds']:.2f} s without faults"
    )
    return "\n".join([text_table(speed_rows, columns), weeks, built, round_line, "", terms, "", quarters])


if __name__ == "__main__":
    cli("population", run, table, __doc__)
