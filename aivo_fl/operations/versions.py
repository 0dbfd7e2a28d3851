"""Choosing the next free main version number."""

from __future__ import annotations

from aivo_fl.ml.store.artifacts import main_version_dir, next_version
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry


def next_free_version(registry: ModelRegistry, store: ModelStore, current: str, bump: str) -> str:
    """Bump `current` past every version already registered or on disk.

    Rejected candidates keep their number, and a crash between writing a version's folder and
    registering it leaves an orphan folder; neither number is ever reused.
    """
    taken = {v.version for v in registry.list_main_versions()}
    version = next_version(current, bump)
    while version in taken or main_version_dir(store.main_root, version).exists():
        version = next_version(version, bump)
    return version
