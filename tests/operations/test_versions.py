"""Version numbers: trained models take majors, aggregation rounds minors; the trained origin of a lineage."""

from __future__ import annotations

import pytest

from aivo_fl.ml.store.artifacts import next_version, trained_version


def test_next_version() -> None:
    assert next_version("1.0.0") == "1.1.0"
    assert next_version("1.9.3") == "1.10.0"
    assert next_version("1.2.3", "major") == "2.0.0"
    for bad in ("v1.0", "1.0", "01.0.0", "../1.0.0"):
        with pytest.raises(ValueError):
            next_version(bad)
    with pytest.raises(ValueError, match="major or minor"):
        next_version("1.0.0", "patch")


def test_trained_version_is_the_lineage_major() -> None:
    assert trained_version("3.7.0") == "3.0.0"
    assert trained_version("2.0.0") == "2.0.0"
    with pytest.raises(ValueError):
        trained_version("latest")
