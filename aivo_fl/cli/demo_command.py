"""`aivo-fl demo`: the main job on the embedded default, the whole federated cycle end to end.

Every stage goes through Dagster on the local instance (the same jobs and sensors the daemon
would run), so `make dev` afterwards shows the demo's runs, learner buckets and checks.
"""

from __future__ import annotations

import argparse
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dotenv import dotenv_values

from aivo_fl.cli import registry_commands
from aivo_fl.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from aivo_fl.ml.samples import Samples
    from aivo_fl.registry import ModelRegistry

SWITCH = "USE_FEDERATED_LEARNING"
# Cold start is measured on learners the demo never registers: 200 x 40 interactions (8,000: a
# standard error of about half a point).
NEWCOMERS = 200
NEWCOMER_INTERACTIONS = 40
ERASURE_KEY = "AIVO_ERASURE_KEY"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "demo",
        help="the main job: migrate, train, simulate learners, clone, train locally, aggregate, report",
    )
    p.add_argument("--learners", type=int, default=50, help="simulated learners (default 50)")
    p.add_argument("--rounds", type=int, default=3, help="aggregation rounds (default 3)")
    p.set_defaults(func=cmd_demo)


def _stage(title: str) -> float:
    print(f"\n━━ {title} ━━", flush=True)
    return time.perf_counter()


def _tick_and_run(defs, instance, sensor: str, job: str) -> int:  # type: ignore[no-untyped-def]
    from aivo_fl.cli.dagster_runs import run_job
    from aivo_fl.cli.dead_runs import release_dead_runs
    from aivo_fl.defs.ticks import tick_sensor

    # A run killed earlier must not look in flight to the sensor (nothing else marks it failed here).
    release_dead_runs(instance)
    data = tick_sensor(defs, instance, sensor)
    if data.skip_message:
        print(f"{sensor}: {data.skip_message}")
    for request in data.run_requests or []:
        run_job(defs, instance, job, tags=request.tags)
    return len(data.run_requests or [])


def activate(env_file: Path = Path(".env")) -> Settings:
    """Switch federated learning on the way the guide's step 3 does: in `.env`, which `make dev` reads too.

    Switching it on only inside the demo's process would leave the UI (another process) with it
    off: sensors skipping and every federated run failing. An explicit `false` is the operator's
    decision, so the demo stops rather than overrule it.
    """
    present = {**(dotenv_values(env_file) if env_file.exists() else {}), **os.environ}
    explicit = present.get(SWITCH)
    if explicit is not None and not load_settings().use_federated_learning:
        raise ConfigError(
            f"{SWITCH}={explicit!r} (environment or {env_file}): the demo activates federated learning, set it to true"
        )
    added = {SWITCH: "true"} if explicit is None else {}
    if not present.get(ERASURE_KEY):
        added[ERASURE_KEY] = secrets.token_hex(32)  # erasing a learner needs a stable key; none is set yet
    if added:
        with env_file.open("a", encoding="utf-8") as f:
            f.write("# Added by `aivo-fl demo` (activation step 3): `make dev` sees the same state.\n")
            f.writelines(f"{name}={value}\n" for name, value in added.items())
        print(f"✓ {', '.join(added)} written to {env_file} (the Dagster UI reads it too)")
    return load_settings()


def newcomers(seed: int = 0) -> Samples:
    """Learners who never register nor train: the main model is all they get (cold start)."""
    from aivo_fl.ml.simulation.population import concat_samples
    from aivo_fl.ml.simulation.world import generate_learner_activity

    return concat_samples(
        [generate_learner_activity(f"newcomer-{i:04d}", seed, 1, NEWCOMER_INTERACTIONS) for i in range(NEWCOMERS)]
    )


def score_active_version(
    registry: ModelRegistry, settings: Settings, cohort: Samples, round_number: int
) -> dict[str, Any]:
    """The active main version on the newcomers and on its curriculum validation split, and the
    privacy spent so far (composed from the recorded rounds)."""
    from aivo_fl.cli.registry_commands import statistics_payload
    from aivo_fl.ml.simulation.evaluation import accuracy
    from aivo_fl.ml.store.artifacts import load_main_model
    from aivo_fl.operations.aggregation import curriculum_validation_split
    from aivo_fl.operations.store import ModelStore

    store = ModelStore.from_settings(settings)
    active = registry.get_active_version()
    model, _ = load_main_model(store.main_root, active.version)
    privacy = statistics_payload(registry, settings)["privacy"]
    return {
        "round": round_number,
        "version": active.version,
        "cold_start": accuracy(model, cohort),
        "curriculum": accuracy(model, curriculum_validation_split(active, store)),
        "epsilon": privacy["worstCaseLearnerEpsilon"] if privacy["rounds"] else 0.0,
        "delta": privacy["delta"],
    }


def print_rounds(rows: list[dict[str, Any]]) -> None:
    print(f"{'round':>5}  {'version':<8} {'cold start':>10} {'curriculum':>10}  epsilon")
    for r in rows:
        epsilon = "no guarantee" if r["epsilon"] is None else f"{r['epsilon']:.3g} at delta {r['delta']:g}"
        print(f"{r['round']:>5}  {r['version']:<8} {r['cold_start']:>10.2%} {r['curriculum']:>10.2%}  {epsilon}")
    gain = 100 * (rows[-1]["cold_start"] - rows[0]["cold_start"])
    print(f"A new learner's main model: {gain:+.1f} points on {NEWCOMERS} newcomers who never trained.")


def cmd_demo(args: argparse.Namespace) -> int:
    # Heavy imports (Dagster, torch) only when the command runs: `aivo-fl stats` stays quick.
    from aivo_fl.cli.dagster_runs import RunFailed, definitions, local_instance, run_job
    from aivo_fl.defs.run_tags import TRIGGER_TAG
    from aivo_fl.operations.app_simulation import simulate_activity, simulate_new_learners

    started = time.perf_counter()
    settings = activate()
    _stage("1. Migrate the registry")
    registry_commands.cmd_migrate(argparse.Namespace(revision="head"))
    registry = registry_commands.open_registry(settings)
    instance = local_instance()
    defs = definitions(settings)
    try:
        _stage("2. Train the main model (Dagster job train_main_model)")
        run_job(defs, instance, "train_main_model")

        cohort = newcomers()
        rows = [score_active_version(registry, settings, cohort, 0)]

        _stage(f"3. Simulate {args.learners} learners completing their baseline")
        learners = simulate_new_learners(registry, args.learners)
        print(f"✓ {len(learners)} learners ({learners[0]} .. {learners[-1]})")

        _stage("4. Tick new_learner_sensor and clone")
        runs = _tick_and_run(defs, instance, "new_learner_sensor", "clone_learners")
        print(f"✓ {runs} cloning run(s) for {len(learners)} learners (runs cover learner buckets)")

        for round_number in range(1, args.rounds + 1):
            _stage(f"5.{round_number} Week {round_number}: learners train locally, then aggregation")
            if round_number > 1:
                added = simulate_activity(registry, learners, week=round_number)
                print(f"✓ {added} new interactions from the learners this week")
            runs = _tick_and_run(defs, instance, "learner_activity_sensor", "train_learners")
            print(f"✓ {runs} local training run(s)")
            try:
                run_job(defs, instance, "federated_aggregation", tags={TRIGGER_TAG: "demo"})
            except RunFailed as exc:
                # A rejected or refused round is part of the story, not the end of the demo.
                print(f"✗ {exc}")
            rows.append(score_active_version(registry, settings, cohort, round_number))
    except RunFailed as exc:
        print(f"✗ {exc}")
        return 1

    _stage("6. Registry statistics")
    registry_commands.cmd_stats(argparse.Namespace(json=False))
    _stage("7. Aggregation history")
    registry_commands.cmd_history(argparse.Namespace(json=False))
    _stage("8. Per round: the main model for a new learner, the curriculum, privacy spent")
    print_rounds(rows)
    print(f"\nDone in {time.perf_counter() - started:.0f} s. Open the Dagster UI with `make dev`.")
    return 0
