"""Registry commands: migrate, stats, history, eligible."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from aivo_fl.cli.output import print_fields, print_json, print_table
from aivo_fl.config import Settings, load_settings
from aivo_fl.registry import ModelRegistry, migrate
from aivo_fl.registry.app_tables import AppTables
from aivo_fl.registry.database import describe_target, unavailable


def open_registry(settings: Settings, *, require_schema: bool = True) -> ModelRegistry:
    with reaching(settings):
        registry = ModelRegistry(settings.database_url, app_tables=AppTables.from_settings(settings))
    if require_schema:
        registry.require_current_schema()
    return registry


@contextmanager
def reaching(settings: Settings) -> Iterator[None]:
    """Opening or migrating the database: failing to connect, or to create a SQLite file's folder,
    is "Can't reach database" naming the target (exit 3), never a traceback."""
    try:
        yield
    except sa.exc.OperationalError as exc:
        raise unavailable(settings.sqlalchemy_url, exc) from None
    except OSError as exc:
        raise unavailable(settings.sqlalchemy_url, OSError(f"{exc.strerror}: {exc.filename}")) from None


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("migrate", help="create or upgrade the registry schema (Alembic)")
    p.add_argument("--revision", default="head", help="target revision: head (default), an id, or base")
    p.set_defaults(func=cmd_migrate)

    p = commands.add_parser("stats", help="registry statistics")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_stats)

    p = commands.add_parser("history", help="federated aggregation history")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_history)

    p = commands.add_parser("eligible", help="learners whose latest training is inside the aggregation window")
    p.add_argument("--days", type=positive_int, default=7, help="window in days (default 7)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_eligible)


def positive_int(text: str) -> int:
    """argparse type for counts and days (here and in the pipeline commands)."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings()
    registry = open_registry(settings, require_schema=False)
    print(f"Migrating registry at {describe_target(registry.engine.url)}...")
    with reaching(settings):
        before, after = migrate(registry.engine, args.revision, registry.app)
    if before == after:
        print(f"✓ Already at revision {after or 'base'}; nothing to do")
    else:
        print(f"✓ Migrated {before or 'base'} -> {after or 'base'}")
    for line in registry.app.describe():
        print(f"  {line}")
    return 0


def statistics_payload(registry: ModelRegistry, settings: Settings) -> dict[str, Any]:
    # The accountant is a heavy import: only `stats` needs it.
    from aivo_fl.operations.privacy_report import privacy_summary

    privacy = privacy_summary(
        registry,
        enabled=settings.enable_differential_privacy,
        delta=settings.privacy_delta,
        epsilon_budget=settings.privacy_epsilon_budget,
        learner_epsilon_budget=settings.privacy_learner_epsilon_budget,
    )
    skipped = registry.count_unusable_interactions()
    return {**registry.get_statistics(), "skippedInteractions": skipped, "privacy": privacy}


def cmd_stats(args: argparse.Namespace) -> int:
    settings = load_settings()
    registry = open_registry(settings)
    stats = statistics_payload(registry, settings)
    if args.json:
        print_json(stats)
        return 0
    active = registry.get_active_version()
    print_fields(
        "Registry statistics",
        [
            ("Main model versions", stats["totalMainVersions"]),
            ("Active main version", active.version if active else None),
            ("Learner models", stats["totalLearnerModels"]),
            ("Active learner models", stats["activeLearnerModels"]),
            ("Federated updates", stats["totalFederatedUpdates"]),
            ("Training sessions", stats["totalTrainingSessions"]),
        ],
    )
    print()
    skipped = stats["skippedInteractions"]
    print_fields(
        f"Interaction rows training skips ({sum(skipped.values())}, docs/operations.md)",
        [(reason, count) for reason, count in skipped.items()],
    )
    print()
    _print_privacy(stats["privacy"])
    return 0


def _epsilon_text(epsilon: float | None, delta: float) -> str:
    return "no guarantee" if epsilon is None else f"{epsilon:.4g} at delta {delta:g}"


def _print_privacy(privacy: dict[str, Any]) -> None:
    budget = privacy["epsilonBudget"]
    print_fields(
        f"Differential privacy (recomposed from {privacy['rounds']} recorded round(s))",
        [
            ("Worst-case learner epsilon", _epsilon_text(privacy["worstCaseLearnerEpsilon"], privacy["delta"])),
            ("Epsilon budget", "none set" if budget is None else f"{budget:g}"),
            ("Rounds with noise", f"{privacy['noisedRounds']} of {privacy['rounds']}"),
            ("Last round's noise multiplier", privacy["noiseMultiplier"]),
            ("Last round's clip norm", privacy["clipNorm"]),
            ("Last round's sample rate", privacy["sampleRate"]),
            ("RDP cross-check", _epsilon_text(privacy["rdpCrossCheck"], privacy["delta"])),
            ("Next round", "differential privacy ON" if privacy["enabled"] else "differential privacy OFF"),
            ("Accountant", privacy["accountant"]),
        ],
    )
    print(f"  ({privacy['headline']})")
    if privacy["overBudget"]:
        spent = _epsilon_text(privacy["worstCaseLearnerEpsilon"], privacy["delta"])
        print(f"✗ Over budget: worst-case learner epsilon {spent} is past PRIVACY_EPSILON_BUDGET {budget:g}")
    if privacy["warning"]:
        print(f"⚠ {privacy['warning']}")


def _privacy_line(recorded: dict[str, Any]) -> str:
    """What a round used, in one line (the raw record is in `history --json` under "privacy")."""
    if not recorded["dpEnabled"]:
        return "OFF (released without noise: no guarantee)"
    clip = f"clip norm {recorded['clipNorm']:.4g}"
    if recorded.get("clipTargetQuantile") is not None:
        clip += f" (adaptive, target quantile {recorded['clipTargetQuantile']:g})"
    population = recorded.get("eligiblePopulation")
    sampled = f"sample rate {recorded['sampleRate']:g}"
    if population is not None:
        sampled += f" of {population:,} eligible (denominator {recorded['denominator']:,.4g})"
    return f"noise multiplier {recorded['noiseMultiplier']:g}, {clip}, {sampled}, delta {recorded['delta']:g}"


WITHHELD = "withheld: differential privacy (the draw stays in the registry)"


def released_update(update: dict[str, Any]) -> dict[str, Any]:
    """A recorded round as the CLI releases it: under DP the learners it drew or charged are counts
    withheld or given as the public population, never ids (they stay in the registry)."""
    if not update["privacy"]["dpEnabled"]:
        return update
    return update | {
        "contributingLearners": WITHHELD,
        "chargedLearners": WITHHELD,
        "eligiblePopulation": update["privacy"].get("eligiblePopulation"),
    }


def cmd_history(args: argparse.Namespace) -> int:
    updates = [released_update(u) for u in open_registry(load_settings()).get_federated_updates()]
    if args.json:
        print_json(updates)
        return 0
    if not updates:
        print("No federated updates yet.")
        return 0
    for update in updates:
        improvement = update["performanceImprovement"]
        print(f"Update {update['updateId']}:")
        print(f"  - Date: {update['aggregatedAt']}")
        learners = update["contributingLearners"]
        print(f"  - Learners: {learners if isinstance(learners, str) else len(learners)}")
        print(f"  - Strategy: {update['aggregationStrategy']}")
        print(f"  - Improvement: {_improvement_text(improvement, update['metrics'])}")
        if update["accuracyBefore"] is not None:
            print(f"  - Accuracy: {update['accuracyBefore']:.2%} -> {update['accuracyAfter']:.2%} (learners' held-out)")
        print(f"  - Privacy: {_privacy_line(update['privacy'])}")
        if update["epsilonRound"] is not None:
            total = _epsilon_text(update["epsilonTotal"], update["privacy"]["delta"])
            print(f"  - Epsilon: {update['epsilonRound']:.4g} this round, {total} in total")
        print(f"  - Result: {update['status']} {update['baseVersion']} -> {update['newVersion'] or '(kept)'}")
        if update["rejectionReason"]:
            print(f"  - Reason: {update['rejectionReason']}")
    return 0


def _improvement_text(improvement: float | None, metrics: dict[str, Any]) -> str:
    if improvement is None:
        return "-"
    std = metrics.get("improvementNoiseStd") or 0.0
    return f"{improvement:+.2f} points" + (f" (privatized, noise std {std:.2f} points)" if std else "")


def cmd_eligible(args: argparse.Namespace) -> int:
    eligible = open_registry(load_settings()).get_eligible_for_aggregation(args.days)
    if args.json:
        print_json(
            [
                {
                    "learnerId": e.learner_id,
                    "sourceVersion": e.source_version,
                    "samples": e.samples,
                    "deltaNorm": e.delta_norm,
                    "improvement": e.improvement,
                    "completedAt": e.completed_at.isoformat(),
                }
                for e in eligible
            ]
        )
        return 0
    print(f"{len(eligible)} learners ready for aggregation (trained within {args.days} days)")
    if eligible:
        print_table(
            ["learner", "source", "samples", "delta norm", "improvement", "trained at"],
            [
                (
                    e.learner_id,
                    e.source_version,
                    e.samples,
                    e.delta_norm,
                    e.improvement,
                    f"{e.completed_at:%Y-%m-%d %H:%M}",
                )
                for e in eligible
            ],
        )
    return 0
