"""What a crash leaves in the model store, cleaned up so the next run never trips over it.

A version or clone is written into a hidden staging folder (`.<name>.tmp-<uuid>`) and renamed
into place, then registered. A SIGKILL can leave a staging folder (during the write) or a
complete but unregistered version folder (between the rename and the registry transaction).
Staging folders are hidden and uniquely named, so they are never read; old ones are removed.
An unregistered folder of the first version is removed so the first model is still 1.0.0; later
unregistered numbers are skipped by `next_free_version` (a number is never reused).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from aivo_fl.ml.store.artifacts import main_version_dir
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry

# A staging folder lives for well under a second; one older than this belongs to a dead writer.
STAGING_MAX_AGE_SECONDS = 600


def remove_stale_staging(root: Path, *, max_age: float = STAGING_MAX_AGE_SECONDS) -> list[Path]:
    """Remove hidden staging (`.<name>.tmp-*`) and trash (`.<name>.trash-*`) entries older than
    `max_age` seconds directly under `root`."""
    if not root.is_dir():
        return []
    cutoff = time.time() - max_age
    removed = []
    for path in [*root.glob(".*.tmp-*"), *root.glob(".*.trash-*")]:
        if path.lstat().st_mtime >= cutoff:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def reclaim_unregistered_version(
    registry: ModelRegistry, store: ModelStore, version: str, report: Callable[[str], None]
) -> None:
    """Remove `version`'s folder if the registry does not know it (a crash before registering)."""
    directory = main_version_dir(store.main_root, version)
    if directory.exists() and version not in {v.version for v in registry.list_main_versions()}:
        shutil.rmtree(directory)
        report(f"Removed {directory}: saved but never registered (an interrupted run)")


def clean_store(store: ModelStore, report: Callable[[str], None]) -> None:
    removed = remove_stale_staging(store.main_root) + remove_stale_staging(store.learners_root)
    if removed:
        report(f"Removed {len(removed)} staging folder(s) left by interrupted writes")
