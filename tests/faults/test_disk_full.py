"""The model store's disk fills up during cloning, local training and aggregation: each learner or
the round fails with one line (and the exit code the CLI would give), no partial file is trusted,
and the next run succeeds once space is back. The store lies on a small tmpfs filled by a file."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from aivo_fl.ml.round.options import PrivacySettings, RoundOptions
from aivo_fl.ml.store.artifacts import list_main_versions
from aivo_fl.ml.store.cloning import learner_heads
from aivo_fl.operations.aggregation import run_federated_aggregation
from aivo_fl.operations.app_simulation import simulate_new_learners
from aivo_fl.operations.errors import EXIT_FAILED, diagnose
from aivo_fl.operations.learners import clone_learners, train_learners_locally
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry, migrate
from aivo_fl.registry.schema import ModelVersionStatus
from tests.faults.disk import fill, small_disk
from tests.trained import TrainedMain

NO_SPACE = "No space left on device"
LEARNERS = 4


@dataclass
class World:
    registry: ModelRegistry
    store: ModelStore
    disk: Path
    learners: list[str]


@pytest.fixture
def world(tmp_path: Path, sqlite_url: str, trained_main: TrainedMain) -> Iterator[World]:
    registry = ModelRegistry(sqlite_url)
    migrate(registry.engine)
    with small_disk(tmp_path / "disk") as disk:
        store = ModelStore(disk / "main-aivo", disk / "learners")
        trained_main.install(registry, store)
        yield World(registry, store, disk, simulate_new_learners(registry, LEARNERS))
        registry.engine.dispose()


def _assert_one_line_no_space(exc: BaseException | str) -> None:
    line = exc if isinstance(exc, str) else diagnose(exc).line
    assert NO_SPACE in line and "\n" not in line, line
    if not isinstance(exc, str):
        assert diagnose(exc).exit_code == EXIT_FAILED


def _no_temporary_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name or ".trash-" in p.name]


def test_a_full_disk_while_cloning(world: World) -> None:
    filler = fill(world.disk)

    batch = clone_learners(world.registry, world.store, world.learners)

    assert batch.clones == [] and sorted(batch.failures) == sorted(world.learners)
    for line in batch.failures.values():
        _assert_one_line_no_space(line)
    assert world.registry.get_personalized_models(world.learners) == {}
    assert not world.store.learners_root.exists() or not any(world.store.learners_root.iterdir())

    filler.unlink()  # space is back
    again = clone_learners(world.registry, world.store, world.learners)
    assert not again.failures and len(again.clones) == LEARNERS


@pytest.mark.parametrize(
    ("trained_before", "leave"), [(False, 0), (False, 4096), (True, 0)], ids=["first", "first-one-page", "again"]
)
def test_a_full_disk_while_training(world: World, trained_before: bool, leave: int) -> None:
    """A first training adds a delta and heads to the copy-on-write clone: with one page free the
    disk fills between them. A later training replaces the files: it needs room for new ones first."""
    clone_learners(world.registry, world.store, world.learners)
    if trained_before:
        assert not train_learners_locally(world.registry, world.store, world.learners, epochs=1).failures
    sessions = {e.learner_id: e.session_id for e in world.registry.get_eligible_for_aggregation(7)}
    filler = fill(world.disk, leave)

    batch = train_learners_locally(world.registry, world.store, world.learners, epochs=1)

    assert batch.failures, "the disk was full: some learner must have failed"
    for exc in batch.failures.values():
        _assert_one_line_no_space(exc)
    assert _no_temporary_files(world.store.learners_root) == []
    latest = {e.learner_id: e.session_id for e in world.registry.get_eligible_for_aggregation(7)}
    for learner in batch.failures:
        assert latest.get(learner) == sessions.get(learner)  # no session for what could not be written

    filler.unlink()  # space is back: every learner trains (a clone left inconsistent is rebuilt)
    again = train_learners_locally(world.registry, world.store, world.learners, epochs=1)
    assert not again.failures and sorted(again.outcomes) == sorted(world.learners)
    for learner in world.learners:
        heads, _ = learner_heads(world.store.main_root, world.store.learners_root, learner)
        assert all(np.isfinite(t).all() for t in heads.values())


def test_a_full_disk_while_aggregating(world: World) -> None:
    clone_learners(world.registry, world.store, world.learners)
    assert not train_learners_locally(world.registry, world.store, world.learners, epochs=2).failures
    privacy = PrivacySettings(enabled=False, noise_multiplier=0.0, clip_norm=1.0)
    options = RoundOptions(min_learners=2, learning_rate=1e-6)
    filler = fill(world.disk)

    with pytest.raises(OSError) as failed:
        run_federated_aggregation(
            world.registry, world.store, privacy, options, report=lambda _: None, rng=np.random.default_rng(0)
        )

    _assert_one_line_no_space(failed.value)
    assert [(v.version, v.status) for v in world.registry.list_main_versions()] == [
        ("1.0.0", ModelVersionStatus.ACTIVE)
    ]
    assert world.registry.get_federated_updates() == []
    assert list_main_versions(world.store.main_root) == ["1.0.0"]  # no partial version left to load
    assert _no_temporary_files(world.store.main_root) == []

    filler.unlink()  # space is back
    outcome = run_federated_aggregation(
        world.registry, world.store, privacy, options, report=lambda _: None, rng=np.random.default_rng(0)
    )
    assert outcome.promoted and outcome.new_version == "1.1.0"
