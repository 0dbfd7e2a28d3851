"""erase_everywhere and its helpers, called directly on a real registry, store and log file."""

from __future__ import annotations

from pathlib import Path

import pytest

from aivo_fl.operations.app_simulation import simulate_new_learners
from aivo_fl.operations.erasure import erasable, erase_everywhere, scrub_log
from aivo_fl.operations.learners import clone_learners, train_learner_locally
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry
from tests.app_side import delete_learner_in_app
from tests.trained import TrainedMain

KEY = b"erasure-test-key-32-bytes-long!!"


def quiet(_: str) -> None:
    pass


def test_scrub_log_replaces_whole_ids_only(tmp_path: Path) -> None:
    log = tmp_path / "aggregation.log"
    log.write_text(
        "round 1: learner-1 included\nround 1: learner-10 included\nlearner-1,learner-2 clipped\nnothing here\n",
        encoding="utf-8",
    )
    assert scrub_log(log, "learner-1", "anon-x") == 2
    assert log.read_text(encoding="utf-8") == (
        "round 1: anon-x included\nround 1: learner-10 included\nanon-x,learner-2 clipped\nnothing here\n"
    )
    assert scrub_log(log, "learner-1", "anon-x") == 0  # a second run changes nothing
    assert scrub_log(tmp_path / "missing.log", "learner-1", "anon-x") == 0


def test_erasable_drops_path_like_ids_and_counts_them() -> None:
    assert erasable(["learner-1", "../etc", "learner-2", "a/b"]) == (["learner-1", "learner-2"], 2)


@pytest.fixture
def store(tmp_path: Path, registry: ModelRegistry, trained_main: TrainedMain) -> ModelStore:
    store = ModelStore(tmp_path / "main-aivo", tmp_path / "learners")
    trained_main.install(registry, store)
    return store


def test_erase_everywhere_removes_files_rows_and_log_mentions_and_spares_others(
    tmp_path: Path, registry: ModelRegistry, store: ModelStore
) -> None:
    gone, kept = simulate_new_learners(registry, 2, interactions=40)
    clone_learners(registry, store, [gone, kept])
    for learner_id in (gone, kept):
        train_learner_locally(registry, store, learner_id, epochs=1)
    log = tmp_path / "logs" / "aggregation.log"
    log.parent.mkdir()
    log.write_text(f"trained {gone}\ntrained {kept}\n", encoding="utf-8")
    delete_learner_in_app(registry, gone)

    erased = erase_everywhere(registry, store, gone, KEY, log)

    assert erased.files > 0 and not store.learner_dir(gone).exists()
    rows = erased.rows
    assert rows["interactions"] == 40 and rows["training_sessions"] == 1
    assert rows["personalized_models"] == 1 and rows["learner_rows"] == 1
    assert erased.log_lines == 1
    text = log.read_text(encoding="utf-8")
    assert gone not in text and erased.pseudonym in text and kept in text
    assert gone not in str(erased.summary()) and gone not in erased.pseudonym
    assert registry.get_personalized_model(gone) is None
    # The other learner is untouched.
    assert store.learner_dir(kept).is_dir()
    assert registry.get_personalized_model(kept) is not None
    assert registry.get_interactions(kept).features.shape[0] == 40

    again = erase_everywhere(registry, store, gone, KEY, log)  # a crashed run finished again: harmless
    assert again.files == 0 and again.log_lines == 0 and set(again.rows.values()) == {0}
