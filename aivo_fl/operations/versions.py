"""Choosing the next free main version number."""

from __future__ import annotations

from aivo_fl.ml.artifacts import main_version_dir, validate_version
from aivo_fl.operations.store import ModelStore
from aivo_fl.registry import ModelRegistry


def next_version(version: str, bump: str = "minor") -> str:
    """Semver bump: a trained main model takes the next major version, an aggregated one a minor."""
    major, minor, _ = (int(p) for p in validate_version(version).split("."))
    if bump == "major":
        return f"{major + 1}.0.0"
    if bump == "minor":
        return f"{major}.{minor + 1}.0"
    raise ValueError(f"bump must be major or minor, got {bump!r}")


def trained_version(version: str) -> str:
    """The trained (non-aggregated) version an aggregated version descends from: its major x.0.0."""
    return f"{validate_version(version).split('.')[0]}.0.0"


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
