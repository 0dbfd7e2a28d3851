"""`.env.federated.example` documents every setting, with the defaults the code really has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aivo_fl.config import Settings

EXAMPLE = Path(__file__).resolve().parents[1] / ".env.federated.example"


def test_every_setting_is_listed() -> None:
    listed = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", EXAMPLE.read_text(), flags=re.MULTILINE))
    variables = {field.alias for field in Settings.model_fields.values()}
    assert variables - listed == set(), "settings missing from .env.federated.example"
    assert listed - variables == set(), "names in .env.federated.example that no setting reads"


def test_the_values_it_sets_are_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for field in Settings.model_fields.values():
        monkeypatch.delenv(field.alias, raising=False)
    monkeypatch.chdir(tmp_path)
    from_example = Settings(_env_file=EXAMPLE)  # type: ignore[call-arg]
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert from_example.use_federated_learning and not defaults.use_federated_learning
    assert from_example.model_dump(exclude={"use_federated_learning"}) == defaults.model_dump(
        exclude={"use_federated_learning"}
    )
