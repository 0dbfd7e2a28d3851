"""What a crash leaves in the model store is cleaned up; live writes and registered versions are not."""

from __future__ import annotations

import os
import time
from pathlib import Path

from aivo_fl.operations.recovery import clean_store, reclaim_unregistered_version, remove_stale_staging
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry

HOUR = 3600


def _aged(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def _staging(root: Path, name: str, age: float) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"half-written")
    return _aged(path, age)


def test_stale_staging_and_trash_are_removed_fresh_staging_and_versions_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "main-aivo"
    stale = _staging(root, ".1.1.0.tmp-dead", HOUR)
    trash = _staging(root, ".1.0.0.trash-dead", HOUR)
    stale_file = root / ".manifest.json.tmp-dead"
    stale_file.touch()
    _aged(stale_file, HOUR)
    fresh = _staging(root, ".1.2.0.tmp-live", 5)  # a writer still at work
    version = _staging(root, "1.0.0", HOUR)  # a real version, old but not hidden staging
    hidden_other = _staging(root, ".keep", HOUR)

    removed = remove_stale_staging(root)

    assert set(removed) == {stale, trash, stale_file}
    assert not stale.exists() and not trash.exists() and not stale_file.exists()
    assert fresh.exists() and (fresh / "model.safetensors").read_bytes() == b"half-written"
    assert (version / "model.safetensors").exists()
    assert hidden_other.exists()


def test_staging_symlink_is_unlinked_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "learners"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    link = root / ".learner-1.tmp-evil"
    link.symlink_to(outside, target_is_directory=True)
    then = time.time() - HOUR
    os.utime(link, (then, then), follow_symlinks=False)

    assert remove_stale_staging(root) == [link]
    assert not link.is_symlink()
    assert (outside / "precious").read_text() == "keep me"


def test_missing_root_is_nothing_to_do(tmp_path: Path) -> None:
    assert remove_stale_staging(tmp_path / "does-not-exist") == []


def test_clean_store_cleans_both_roots_and_reports_once(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "main-aivo", tmp_path / "learners")
    main_stale = _staging(store.main_root, ".2.0.0.tmp-x", HOUR)
    learner_stale = _staging(store.learners_root, ".learner-a.tmp-y", HOUR)
    lines: list[str] = []
    clean_store(store, lines.append)
    assert not main_stale.exists() and not learner_stale.exists()
    assert len(lines) == 1 and "2" in lines[0]

    lines.clear()
    clean_store(store, lines.append)  # nothing left: nothing said
    assert lines == []


def test_unregistered_first_version_is_reclaimed_registered_one_is_kept(
    tmp_path: Path, registry: ModelRegistry
) -> None:
    store = ModelStore(tmp_path / "main-aivo", tmp_path / "learners")
    orphan = _staging(store.main_root, "1.0.0", 0)
    lines: list[str] = []

    reclaim_unregistered_version(registry, store, "1.0.0", lines.append)
    assert not orphan.exists()
    assert len(lines) == 1 and str(orphan) in lines[0]

    kept = _staging(store.main_root, "1.0.0", 0)
    registry.register_main_version("1.0.0", str(kept), {})
    lines.clear()
    reclaim_unregistered_version(registry, store, "1.0.0", lines.append)
    assert (kept / "model.safetensors").exists()
    assert lines == []


def test_reclaiming_an_absent_version_does_nothing(tmp_path: Path, registry: ModelRegistry) -> None:
    store = ModelStore(tmp_path / "main-aivo", tmp_path / "learners")
    lines: list[str] = []
    reclaim_unregistered_version(registry, store, "1.0.0", lines.append)
    assert lines == []
