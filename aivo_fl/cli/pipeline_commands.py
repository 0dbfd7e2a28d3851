"""The activation guide's operator scripts: train, test cloning, aggregate, simulate learners."""

from __future__ import annotations

import argparse

from aivo_fl.cli.registry_commands import open_registry, positive_int
from aivo_fl.config import load_settings
from aivo_fl.ml.aggregation.strategies import STRATEGIES
from aivo_fl.ml.round.options import RoundOptions


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
    defaults = RoundOptions()
    p.add_argument(
        "--min-learners",
        type=positive_int,
        default=defaults.min_learners,
        help=f"fewest usable learners (default {defaults.min_learners})",
    )
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=defaults.strategy,
        help=f"aggregation strategy (default {defaults.strategy})",
    )
    p.add_argument(
        "--max-stale",
        type=positive_int,
        default=defaults.max_stale_days,
        metavar="DAYS",
        help=f"ignore older training (default {defaults.max_stale_days})",
    )
    p.add_argument(
        "--learning-rate",
        type=_positive_float,
        default=None,
        help="server learning rate (default: SERVER_LEARNING_RATE, else the server optimizer's own: 6 for sgd)",
    )
    p.set_defaults(func=cmd_run_federated_aggregation)

    p = commands.add_parser(
        "simulate-learners", help="stand in for the AIVO app: learners with completed baselines and interactions"
    )
    p.add_argument("--count", type=positive_int, required=True, help="how many learners to create")
    p.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    p.set_defaults(func=cmd_simulate_learners)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def cmd_train_main_model(args: argparse.Namespace) -> int:
    # A failure (RunFailed, a refusal) propagates to `main`, which prints its one line and exit code.
    from aivo_fl.cli.dagster_runs import definitions, local_instance, run_job

    settings = load_settings()
    open_registry(settings)  # schema check before a long run
    print("=== Training Main AIVO Model ===\n")
    run_job(definitions(settings), local_instance(), "train_main_model")
    return 0


def cmd_test_model_cloning(args: argparse.Namespace) -> int:
    from aivo_fl.operations.cloning_check import run_cloning_check
    from aivo_fl.operations.store import ModelStore

    settings = load_settings()
    registry = open_registry(settings)
    run_cloning_check(registry, ModelStore.from_settings(settings))
    return 0


def cmd_run_federated_aggregation(args: argparse.Namespace) -> int:
    settings = load_settings()
    registry = open_registry(settings)
    options = {
        "min_learners": args.min_learners,
        "strategy": args.strategy,
        "max_stale_days": args.max_stale,
        "learning_rate": args.learning_rate,  # None: the run takes SERVER_LEARNING_RATE from the settings
    }
    from aivo_fl.cli.dagster_runs import definitions, local_instance, run_job

    if args.dry_run:
        # A dry run reads only: it does not even add a run to Dagster's history.
        from aivo_fl.operations.aggregation import round_options, run_federated_aggregation
        from aivo_fl.operations.store import ModelStore

        if not settings.use_federated_learning:
            print("(USE_FEDERATED_LEARNING is off: a real round would refuse to run)")
        run_federated_aggregation(
            registry,
            ModelStore.from_settings(settings),
            settings.privacy(),
            round_options(settings, **options, dry_run=True),
        )
        return 0
    # A rejected round fails the blocking check `candidate_not_degraded`, so the run fails with
    # the gate's "Performance degradation: ..." line (exit 1).
    from aivo_fl.cli.dead_runs import release_dead_runs, require_free_slot
    from aivo_fl.defs.assets.federated import AGGREGATION_POOL
    from aivo_fl.defs.run_tags import TRIGGER_TAG

    instance = local_instance()
    release_dead_runs(instance)
    require_free_slot(instance, AGGREGATION_POOL)
    run_job(
        definitions(settings),
        instance,
        "federated_aggregation",
        run_config={"ops": {"federated_main_model": {"config": options}}},
        tags={TRIGGER_TAG: "cli"},
    )
    return 0


def cmd_simulate_learners(args: argparse.Namespace) -> int:
    from aivo_fl.operations.app_simulation import simulate_new_learners

    registry = open_registry(load_settings())
    created = simulate_new_learners(registry, args.count, seed=args.seed)
    print(f"✓ Created {len(created)} learners with completed baselines ({created[0]} .. {created[-1]})")
    return 0
