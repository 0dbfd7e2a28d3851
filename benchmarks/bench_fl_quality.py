"""Does federated learning improve the main model? Measured against a central oracle, per round.

A seeded population of 10,000 learners (``--quick``: 1,000) goes through 12 weekly rounds (quick:
4) under three configurations: the guide's defaults (DP on, z = 0.1, every learner, clip 1.0), the
``PRIVACY_PRESET=user-level`` preset, and no DP. Each week the active learners train their personal
layers locally, all at once (:func:`aivo_fl.ml.simulation.week.train_active_learners`: the clone
from main + its kept personalization, the update it sends from main, with the proximal term);
then the product's own round runs on their deltas held in memory:
:func:`aivo_fl.ml.round.candidate.build_candidate` (screening, Poisson sampling, fixed denominator,
budgets, adaptive clipping, DpClipped, server optimizer), then
:func:`aivo_fl.ml.round.judge.judge_round`: the server's anchoring of each candidate to its
curriculum's training split (:mod:`aivo_fl.ml.round.anchor`), the gate on the contributors'
held-out interactions and the curriculum validation set, and backtracking (a refused step is
retried at 1/2, 1/4, 1/8), exactly as in production.

Per round: cold start (the main model on a fixed evaluation cohort that never trains: what a new
learner gets), personalized (each contributor's clone on its own held-out interactions, next to the
main model on the same data), curriculum accuracy, epsilon (worst-case learner, the real accountant
over the recorded rounds) and gap closed = (cold - round 0) / (oracle - round 0). The oracle is the
same model with the same trainable layers trained centrally, without privacy, on the pooled
training interactions of every week's training learners (never the evaluation cohort).

    python -m benchmarks fl_quality [--quick]
    python -m benchmarks.bench_fl_quality --depth guide --configurations "user-level preset" "no DP"
"""

from __future__ import annotations

import argparse
import json
import math
import os
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
from aivo_fl.ml.simulation.population_rounds import CONFIGURATIONS, YEAR, Knobs, build_world, run_configuration
from aivo_fl.ml.simulation.world import generate_curriculum
from aivo_fl.ml.training.main_model import TrainingConfig, train_model
from benchmarks.report import Column, machine, machine_line
from benchmarks.report import table as report_table

RESULTS = Path(__file__).resolve().parent / "results"
PLOT_PATH = RESULTS / "fl_quality.png"


def curriculum_of(quick: bool, seed: int = 0) -> Samples:
    return generate_curriculum(3_000 if quick else 10_000, seed=seed)


def train_round0(quick: bool, seed: int = 0) -> CurriculumNet:
    """The curriculum-trained main model every configuration starts from."""
    config = TrainingConfig(epochs=10 if quick else 30, seed=seed, log_every=10**6, num_threads=1)
    main, _ = train_model(curriculum_of(quick, seed), config)
    return main


def population_of(n_learners: int, seed: int = 0) -> Population:
    return Population(PopulationConfig(n_learners=n_learners, eval_learners=max(n_learners // 20, 20), seed=seed))


def privacy_of(configuration: str) -> PrivacySettings:
    return load_settings(**CONFIGURATIONS[configuration]).privacy()


def run(
    quick: bool = False,
    knobs: Knobs | None = None,
    n_learners: int | None = None,
    weeks: int | None = None,
    configurations: Sequence[str] = tuple(CONFIGURATIONS),
    plot_path: Path = PLOT_PATH,
) -> dict[str, Any]:
    configure_cpu(1)
    torch.manual_seed(0)
    knobs = knobs or Knobs()
    n_learners = n_learners or (1_000 if quick else 10_000)
    weeks = weeks or (4 if quick else 12)
    started = time.perf_counter()
    curriculum = curriculum_of(quick)
    world = build_world(
        train_round0(quick),
        population_of(n_learners),
        weeks,
        knobs.depth,
        curriculum,
        generate_curriculum(2_000, seed=1),
    )
    setup = time.perf_counter() - started
    print(HEADER, flush=True)
    results = {
        name: run_configuration(world, privacy_of(name), knobs, on_row=lambda r, n=name: print(_row(n, r), flush=True))
        for name in configurations
    }
    result = {
        "learners": n_learners,
        "evaluation_learners": len(world.population.eval_learners),
        "weeks": weeks,
        "knobs": knobs.describe(),
        "oracle": world.oracle,
        "oracle_curriculum": world.oracle_curriculum,
        "setup_seconds": setup,
        "total_seconds": time.perf_counter() - started,
        # Peak resident memory of this process (Linux reports KiB) and the machine's load while it ran.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_average_1min": os.getloadavg()[0],
        "configurations": results,
        "plot": str(plot_path),
    }
    _plot(result, plot_path)
    return result


def _fmt(value: float | None, pattern: str = "{:.2%}") -> str:
    if value is None:
        return "none"  # no guarantee: deltas released without noise
    return "-" if isinstance(value, float) and math.isnan(value) else pattern.format(value)


HEADER = (
    f"{'configuration':<18} {'round':>5} {'cold start':>10} {'clones':>7} {'main':>7} {'curric.':>7} "
    f"{'epsilon':>9} {'gap':>6} {'gate':>6} {'s':>6}"
)


def _row(name: str, r: dict[str, Any]) -> str:
    gate_verdict = "" if r["round"] == 0 else ("ok" if r["accepted"] else "reject")
    return (
        f"{name:<18} {r['round']:>5} {_fmt(r['cold_start']):>10} "
        f"{_fmt(r.get('personalized_clones', math.nan)):>7} {_fmt(r.get('personalized_main', math.nan)):>7} "
        f"{_fmt(r['curriculum']):>7} {_fmt(r['epsilon'], '{:.3g}'):>9} {_fmt(r['gap_closed'], '{:.0%}'):>6} "
        f"{gate_verdict:>6} {r['seconds']:>6.1f}"
    )


COLUMNS = (
    Column("configuration", "configuration"),
    Column("round", "round"),
    Column("cold_start", "cold start", "{:.2%}"),
    Column("personalized_clones", "clones", "{:.2%}"),
    Column("personalized_main", "main", "{:.2%}"),
    Column("curriculum", "curric.", "{:.2%}"),
    Column("epsilon", "epsilon", "{:.3g}"),
    Column("gap_closed", "gap to oracle closed", "{:.0%}"),
    Column("gate", "gate"),
    Column("seconds", "s", "{:.1f}"),
)


def table(result: dict[str, Any]) -> str:
    """Every round of every configuration against the central oracle (the plain baseline); epsilon "-"
    means no guarantee (deltas released without noise)."""
    rows = [
        {"configuration": name, **r, "gate": "" if r["round"] == 0 else ("ok" if r["accepted"] else "reject")}
        for name, c in result["configurations"].items()
        for r in c["rounds"]
    ]
    title = (
        f"{result['learners']:,} learners ({result['evaluation_learners']} held out for cold start), "
        f"{result['weeks']} weekly rounds; knobs {result['knobs']}; oracle {result['oracle']:.2%} "
        f"(its curriculum accuracy {result['oracle_curriculum']:.2%}); {result['total_seconds']:.0f} s in all, "
        f"load average {result['load_average_1min']:.1f}"
    )
    out = [report_table(rows, COLUMNS, title)]
    for name, c in result["configurations"].items():
        out.append(
            f"{name:<18} epsilon after 1 round {_fmt(c['epsilon_1'], '{:.3g}')}, after {YEAR} "
            f"{_fmt(c['epsilon_52'], '{:.3g}')} (delta {c['privacy']['delta']:g})"
        )
    return "\n".join(out)


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cold, curriculum) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, c in result["configurations"].items():
        rounds = [r["round"] for r in c["rounds"]]
        cold.plot(rounds, [100 * r["cold_start"] for r in c["rounds"]], marker="o", label=name)
        curriculum.plot(rounds, [100 * r["curriculum"] for r in c["rounds"]], marker="o", label=name)
    cold.axhline(100 * result["oracle"], color="black", linestyle="--", label="central oracle")
    cold.set(title="cold start (held-out learners)", xlabel="weekly round", ylabel="accuracy (%)")
    curriculum.set(title="curriculum validation", xlabel="weekly round", ylabel="accuracy (%)")
    cold.legend(fontsize=8)
    fig.suptitle(f"{result['learners']:,} learners, {result['weeks']} rounds, depth {result['knobs']['depth']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """Another depth or a subset of configurations: ``python -m benchmarks.bench_fl_quality --depth
    guide --configurations "user-level preset" "no DP"`` writes results/fl_quality_<depth>.json/png."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--depth", default=Knobs.depth, choices=sorted(PERSONALIZATION_DEPTHS))
    parser.add_argument("--configurations", nargs="+", default=list(CONFIGURATIONS), choices=list(CONFIGURATIONS))
    args = parser.parse_args()
    stem = RESULTS / f"fl_quality_{args.depth}{'_quick' if args.quick else ''}"
    result = run(args.quick, Knobs(depth=args.depth), None, None, args.configurations, stem.with_suffix(".png"))
    result = {"benchmark": "fl_quality", "quick": args.quick, **result, "machine": machine()}
    print(table(result))
    print(machine_line(result["machine"]))
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
