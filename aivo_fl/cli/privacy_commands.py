"""`aivo-fl privacy-plan`: the noise and sample rate that meet an epsilon target over a year of rounds."""

from __future__ import annotations

import argparse
from typing import Any

from aivo_fl.cli.output import print_json
from aivo_fl.cli.registry_commands import open_registry, positive_int
from aivo_fl.config import load_settings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "privacy-plan", help="noise multiplier and sample rate meeting an epsilon target (PLD accountant)"
    )
    p.add_argument("--target-epsilon", type=_positive_float, required=True, help="epsilon after all the rounds")
    p.add_argument("--rounds", type=positive_int, default=52, help="rounds the target must cover (default 52)")
    p.add_argument(
        "--population",
        type=positive_int,
        help="eligible learners per round (default: the learners who trained in the last AGGREGATION_MAX_STALE_DAYS)",
    )
    p.add_argument("--delta", type=_positive_float, help="delta (default: PRIVACY_DELTA)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_privacy_plan)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number greater than 0, got {text}")
    return value


def cmd_privacy_plan(args: argparse.Namespace) -> int:
    from aivo_fl.ml.privacy.planner import plan

    settings = load_settings()
    population = args.population
    if population is None:
        registry = open_registry(settings)
        population = len(registry.get_eligible_for_aggregation(settings.aggregation_max_stale_days))
        if population == 0:
            print("✗ No eligible learners in the registry: give the population with --population N")
            return 1
    delta = args.delta or settings.privacy_delta
    adaptive = settings.clip_norm == "auto"
    result = plan(args.target_epsilon, args.rounds, population, delta, adaptive=adaptive)
    if args.json:
        print_json(_payload(result))
        return 0
    print(
        f"Privacy plan: epsilon {args.target_epsilon:g} over {args.rounds} rounds at delta {delta:g}, "
        f"{population:,} eligible learners (PLD accountant; the gate's query and "
        f"{'adaptive clipping' if adaptive else 'a fixed clip norm'} included)"
    )
    print(f"{'sample rate':>11}  {'noise mult.':>11}  {'cohort':>8}  {'noise/clip':>10}  {'epsilon':>7}")
    for row in result.rows:
        mark = "  <- recommended" if row is result.recommended else ("" if row.useful else "  (too noisy)")
        print(
            f"{row.sample_rate:>11g}  {row.noise_multiplier:>11.3g}  {row.expected_cohort:>8,.0f}  "
            f"{row.relative_noise:>10.2g}  {row.epsilon:>7.3g}{mark}"
        )
    print(("✓ " if result.recommended else "✗ ") + result.line())
    return 0 if result.recommended else 1


def _payload(result: Any) -> dict[str, Any]:
    row = result.recommended
    return {
        "targetEpsilon": result.target_epsilon,
        "rounds": result.rounds,
        "delta": result.delta,
        "population": result.population,
        "maxRelativeNoise": result.max_relative_noise,
        "rows": [vars(r) for r in result.rows],
        "recommended": None if row is None else vars(row),
        "populationNeeded": result.population_needed,
        "summary": result.line(),
    }
