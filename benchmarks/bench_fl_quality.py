"""What federated learning buys a new learner, measured so that it cannot be tuned to.

Per seed (population, evaluation cohort, round-0 main model and all round randomness follow it), a
population of 10,000 learners (``--quick``: 1,000) goes through 52 weekly rounds (``--rounds``;
quick: 4) under three configurations: the guide's defaults (DP on, z = 0.1, every learner, clip
1.0), the ``PRIVACY_PRESET=user-level`` preset, and no DP. Each week the active learners train at
once (:func:`aivo_fl.ml.simulation.week.train_active_learners`), then the product's round runs on
their deltas through :class:`~aivo_fl.ml.simulation.server.SimulatedServer`, that is
:func:`aivo_fl.ml.round.run.run_round` with the product's gate on the drawn learners' held-out
interactions and the curriculum validation split.

Protocol (:mod:`aivo_fl.ml.simulation.population_rounds`): knobs are frozen in code and chosen on
TUNING_SEEDS only; a reported run uses REPORTED_SEEDS (``--full``: all of them; default: the first).
Every figure is a mean over the seeds with a 95% bootstrap interval (seeds, then learners within a
seed, resampled: :mod:`aivo_fl.ml.simulation.intervals`); differences between configurations are
paired (same seeds, same learners). Yardsticks on the evaluation cohort: the strongest central model
(:mod:`aivo_fl.ml.simulation.central`: depth and epochs chosen on a validation split of training
learners, trained on the pooled training data up to each checkpoint round), the head-matched
oracle (the clones' layers only) and the personalized Bayes ceiling. The curriculum is judged on a
test split that neither the gate nor tuning sees.

    python -m benchmarks fl_quality [--quick]
    python -m benchmarks.bench_fl_quality [--quick] [--rounds N] [--seeds S ...] [--full] [--learners N] [--depth guide]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from aivo_fl.config import load_settings
from aivo_fl.ml.model import PERSONALIZATION_DEPTHS, CurriculumNet
from aivo_fl.ml.round.options import PrivacySettings
from aivo_fl.ml.runtime import configure_cpu
from aivo_fl.ml.samples import Samples
from aivo_fl.ml.simulation.population import Population, PopulationConfig
from aivo_fl.ml.simulation.population_rounds import (
    CONFIGURATIONS,
    REPORTED_SEEDS,
    TUNING_SEEDS,
    YEAR,
    Knobs,
    World,
    build_world,
    run_configuration,
)
from aivo_fl.ml.simulation.world import generate_curriculum
from aivo_fl.ml.training.main_model import TrainingConfig, train_model
from benchmarks.fl_quality_report import plot, print_row_header, row_line, summarize, table
from benchmarks.report import machine, machine_line

RESULTS = Path(__file__).resolve().parent / "results"
TUNING_RESULTS = RESULTS / "fl_quality_tuning"


def curriculum_of(quick: bool, seed: int) -> Samples:
    return generate_curriculum(3_000 if quick else 10_000, seed=seed)


def train_round0(quick: bool, seed: int) -> CurriculumNet:
    """The curriculum-trained main model every configuration of a seed starts from."""
    config = TrainingConfig(epochs=10 if quick else 30, seed=seed, log_every=10**6, num_threads=1)
    main, _ = train_model(curriculum_of(quick, seed), config)
    return main


def population_of(n_learners: int, seed: int) -> Population:
    return Population(PopulationConfig(n_learners=n_learners, eval_learners=max(n_learners // 20, 20), seed=seed))


def privacy_of(configuration: str) -> PrivacySettings:
    return load_settings(_env_file=None, **CONFIGURATIONS[configuration]).privacy()


def world_of(seed: int, quick: bool, n_learners: int, rounds: int, knobs: Knobs) -> World:
    # Curriculum, its validation split (the gate's) and its test split (judged, never selected on)
    # are separate draws of the same fixed world.
    return build_world(
        train_round0(quick, seed),
        population_of(n_learners, seed),
        rounds,
        knobs.depth,
        curriculum_of(quick, seed),
        generate_curriculum(2_000, seed=10_000 + seed),
        generate_curriculum(2_000, seed=20_000 + seed),
        seed,
    )


# The world a forked worker runs its configuration on (inherited, never pickled).
_SHARED: dict[str, Any] = {}


def _run_one(name: str) -> tuple[str, dict[str, Any]]:
    world, knobs = _SHARED["world"], _SHARED["knobs"]
    began = time.perf_counter()
    result = run_configuration(
        world, privacy_of(name), knobs, on_row=lambda r: print(row_line(world.seed, name, r), flush=True)
    )
    return name, {**result, "seconds": time.perf_counter() - began}


def run_seed(
    seed: int, quick: bool, n_learners: int, rounds: int, knobs: Knobs, configurations: Sequence[str], workers: int
) -> dict[str, Any]:
    """The seed's world once, then its configurations, each in its own forked process when
    ``workers`` > 1 (one thread each: the configurations are independent)."""
    started = time.perf_counter()
    world = world_of(seed, quick, n_learners, rounds, knobs)
    setup = time.perf_counter() - started
    print(f"seed {seed}: world and yardsticks in {setup:.0f} s; strongest central model {world.central}", flush=True)
    print_row_header()
    _SHARED.update(world=world, knobs=knobs)
    if workers > 1:
        pool = multiprocessing.get_context("fork").Pool(min(workers, len(configurations)))
        runs = dict(pool.map(_run_one, configurations, chunksize=1))
        pool.close()
        pool.join()  # reaped, so their CPU time and memory count in RUSAGE_CHILDREN
    else:
        runs = dict(_run_one(name) for name in configurations)
    return {"seed": seed, "world": world, "setup_seconds": setup, "configurations": runs}


def check_seeds(seeds: Sequence[int]) -> str:
    """'reported' or 'tuning'; a run never mixes them, and never uses an undeclared seed."""
    if set(seeds) <= set(REPORTED_SEEDS):
        return "reported"
    if set(seeds) <= set(TUNING_SEEDS):
        return "tuning"
    raise ValueError(
        f"seeds must all be reported seeds {REPORTED_SEEDS} or all tuning seeds {TUNING_SEEDS}, got {seeds}"
    )


def run(
    quick: bool = False,
    seeds: Sequence[int] = REPORTED_SEEDS[:1],
    rounds: int | None = None,
    knobs: Knobs | None = None,
    n_learners: int | None = None,
    configurations: Sequence[str] = tuple(CONFIGURATIONS),
    workers: int = len(CONFIGURATIONS),
) -> dict[str, Any]:
    kind = check_seeds(seeds)
    configure_cpu(1)
    torch.manual_seed(0)
    knobs = knobs or Knobs()
    n_learners = n_learners or (1_000 if quick else 10_000)
    rounds = rounds or (4 if quick else YEAR)
    started = time.perf_counter()
    per_seed = [run_seed(s, quick, n_learners, rounds, knobs, configurations, workers) for s in seeds]
    if os.environ.get("FL_QUALITY_RAW"):  # keep the raw measurements (to re-summarize without re-running)
        with open(os.environ["FL_QUALITY_RAW"], "wb") as raw:
            pickle.dump(per_seed, raw)
    result = {
        "benchmark": "fl_quality",
        "kind": kind,
        "seeds": list(seeds),
        "tuning_seeds": list(TUNING_SEEDS),
        "reported_seeds": list(REPORTED_SEEDS),
        "quick": quick,
        "learners": n_learners,
        "evaluation_learners": len(per_seed[0]["world"].population.eval_learners),
        "rounds": rounds,
        "knobs": knobs.describe(),
        **summarize(per_seed, configurations),
        "total_seconds": time.perf_counter() - started,
        # Peak resident memory of this process (Linux reports KiB) and the machine's load while it ran.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        # CPU time of the run and its workers: on a shared machine the wall clock measures the others too.
        "cpu_seconds": sum(
            u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        ),
        "load_average_1min": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }
    png = output_stem(result).with_suffix(".png")
    plot(result, png)
    return {**result, "plot": str(png.relative_to(RESULTS.parent))}


def output_stem(result: dict[str, Any]) -> Path:
    depth = "" if result["knobs"]["depth"] == Knobs.depth else f"_{result['knobs']['depth']}"
    quick = "_quick" if result["quick"] else ""
    if result["kind"] == "tuning":
        seeds = "-".join(str(s) for s in result["seeds"])
        return TUNING_RESULTS / f"fl_quality_seeds{seeds}_r{result['rounds']}{depth}{quick}"
    size = "" if result["learners"] == (1_000 if result["quick"] else 10_000) else f"_{result['learners']}"
    return RESULTS / f"fl_quality{depth}{size}{quick}"


def write(result: dict[str, Any]) -> Path:
    stem = output_stem(result)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
    return stem.with_suffix(".json")


def main() -> None:
    """Seeds: --seeds (all reported or all tuning seeds), --full (every reported seed)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--full", action="store_true", help=f"every reported seed {REPORTED_SEEDS}")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--learners", type=int, default=None, help="population size (default 10,000; quick 1,000)")
    parser.add_argument("--depth", default=Knobs.depth, choices=sorted(PERSONALIZATION_DEPTHS))
    parser.add_argument("--workers", type=int, default=len(CONFIGURATIONS), help="configurations run at once")
    parser.add_argument("--configurations", nargs="+", default=list(CONFIGURATIONS), choices=list(CONFIGURATIONS))
    args = parser.parse_args()
    seeds = REPORTED_SEEDS if args.full else (args.seeds or REPORTED_SEEDS[:1])
    try:
        check_seeds(seeds)
    except ValueError as error:
        parser.error(str(error))
    if (args.rounds is not None and args.rounds < 1) or (args.learners is not None and args.learners < 100):
        parser.error("--rounds must be >= 1 and --learners >= 100")
    knobs = Knobs(depth=args.depth)
    result = run(args.quick, seeds, args.rounds, knobs, args.learners, args.configurations, args.workers)
    result = {**result, "machine": machine()}
    print(table(result))
    print(machine_line(result["machine"]))
    print(f"written {write(result)}")


if __name__ == "__main__":
    main()
