"""The activation guide's operator scripts: train, test cloning, aggregate, simulate learners."""

from __future__ import annotations

import argparse
import sys

from aivo_fl.cli.registry_commands import open_registry
from aivo_fl.config import load_settings
from aivo_fl.ml.aggregation import DEFAULT_LEARNING_RATE, STRATEGIES
from aivo_fl.ml.round_status import RoundStatus

EXIT_FAILED = 1


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "train-main-model",
        help="generate the curriculum, train the main model, save and register it (a Dagster run)",
    )
    p.set_defaults(func=cmd_train_main_model)

    p = commands.add_parser("test-model-cloning", help="clone a test learner and verify the clone step by step")
    p.set_defaults(func=cmd_test_model_cloning)

    p = commands.add_parser(
        "run-federated-aggregation", help="aggregate the learners' deltas into a new main version (a Dagster run)"
    )
    p.add_argument("--dry-run", action="store_true", help="compute and report the round; write nothing")
    p.add_argument("--min-learners", type=_positive_int, default=3, help="fewest usable learners (default 3)")
    p.add_argument("--strategy", choices=STRATEGIES, default="fedavg", help="aggregation strategy (default fedavg)")
    p.add_argument(
        "--max-stale", type=_positive_int, default=7, metavar="DAYS", help="ignore older training (default 7)"
    )
    p.add_argument(
        "--learning-rate",
        type=_positive_float,
        default=DEFAULT_LEARNING_RATE,
        help=f"server step on the aggregated delta (default {DEFAULT_LEARNING_RATE:g})",
    )
    p.set_defaults(func=cmd_run_federated_aggregation)

    p = commands.add_parser(
        "simulate-learners", help="stand in for the AIVO app: learners with completed baselines and interactions"
    )
    p.add_argument("--count", type=_positive_int, required=True, help="how many learners to create")
    p.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    p.set_defaults(func=cmd_simulate_learners)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _fail(exc: Exception) -> int:
    print(f"✗ {exc}", file=sys.stderr)
    return EXIT_FAILED


def cmd_train_main_model(args: argparse.Namespace) -> int:
    from aivo_fl.cli.dagster_runs import RunFailed, definitions, local_instance, run_job

    settings = load_settings()
    open_registry(settings)  # schema check before a long run
    print("=== Training Main AIVO Model ===\n")
    try:
        run_job(definitions(settings), local_instance(), "train_main_model")
    except RunFailed as exc:
        return _fail(exc)
    return 0


def cmd_test_model_cloning(args: argparse.Namespace) -> int:
    from aivo_fl.operations.cloning_check import CloningCheckFailed, run_cloning_check
    from aivo_fl.operations.store import ModelStore

    settings = load_settings()
    registry = open_registry(settings)
    try:
        run_cloning_check(registry, ModelStore.from_settings(settings))
    except CloningCheckFailed as exc:
        return _fail(exc)
    return 0


def cmd_run_federated_aggregation(args: argparse.Namespace) -> int:
    settings = load_settings()
    registry = open_registry(settings)
    options = {
        "min_learners": args.min_learners,
        "strategy": args.strategy,
        "max_stale_days": args.max_stale,
        "learning_rate": args.learning_rate,
    }
    from aivo_fl.cli.dagster_runs import RunFailed, definitions, local_instance, run_job

    if args.dry_run:
        # A dry run reads only: it does not even add a run to Dagster's history.
        from aivo_fl.ml.federated_round import NoEligibleLearners, RoundOptions
        from aivo_fl.ml.privacy import PrivacyBudgetExceeded
        from aivo_fl.operations.aggregation import privacy_settings_from, run_federated_aggregation
        from aivo_fl.operations.store import ModelStore

        if not settings.use_federated_learning:
            print("(USE_FEDERATED_LEARNING is off: a real round would refuse to run)")
        try:
            run_federated_aggregation(
                registry,
                ModelStore.from_settings(settings),
                privacy_settings_from(settings),
                RoundOptions(**options, dry_run=True),
            )
        except (NoEligibleLearners, PrivacyBudgetExceeded, ValueError) as exc:
            return _fail(exc)
        return 0
    try:
        result = run_job(
            definitions(settings),
            local_instance(),
            "federated_aggregation",
            run_config={"ops": {"federated_main_model": {"config": options}}},
            tags={"aivo/trigger": "cli"},
        )
    except RunFailed as exc:
        return _fail(exc)
    status = result.asset_materializations_for_node("federated_main_model")[-1].metadata["status"].value
    return 0 if status == RoundStatus.PROMOTED else EXIT_FAILED


def cmd_simulate_learners(args: argparse.Namespace) -> int:
    from aivo_fl.operations.app_simulation import simulate_new_learners

    registry = open_registry(load_settings())
    created = simulate_new_learners(registry, args.count, seed=args.seed)
    print(f"✓ Created {len(created)} learners with completed baselines ({created[0]} .. {created[-1]})")
    return 0
