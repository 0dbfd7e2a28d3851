"""The demo activates federated learning where the Dagster UI will see it too: in `.env`."""

from __future__ import annotations

from pathlib import Path

import pytest

from aivo_fl.cli.demo_command import activate
from aivo_fl.config import ConfigError, load_settings
from tests.cli.conftest import RunCli


def test_demo_writes_the_switch_to_dotenv_so_a_later_process_agrees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("USE_FEDERATED_LEARNING", raising=False)
    monkeypatch.delenv("AIVO_ERASURE_KEY", raising=False)
    (tmp_path / ".env").write_text("TRAINING_EPOCHS=7\n")
    assert activate().use_federated_learning
    # What `make dev` will load: a fresh read of the same folder, nothing forced in-process.
    later = load_settings()
    assert later.use_federated_learning and later.training_epochs == 7
    assert activate().use_federated_learning  # idempotent: nothing appended twice
    written = (tmp_path / ".env").read_text()
    assert written.count("USE_FEDERATED_LEARNING=true") == 1
    # A stable erasure key too, so erase_learners runs from the UI; generated once, kept after.
    assert written.count("AIVO_ERASURE_KEY=") == 1 and later.erasure_key is not None
    assert len(later.erasure_key.get_secret_value()) == 64


def test_an_explicit_off_is_not_overruled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("USE_FEDERATED_LEARNING", raising=False)
    (tmp_path / ".env").write_text("USE_FEDERATED_LEARNING=false\n")
    with pytest.raises(ConfigError, match="the demo activates federated learning"):
        activate()
    assert (tmp_path / ".env").read_text() == "USE_FEDERATED_LEARNING=false\n"


def test_demo_refuses_in_one_line_when_switched_off_in_the_environment(
    run_cli_subprocess: RunCli, tmp_path: Path
) -> None:
    result = run_cli_subprocess("demo", env={"USE_FEDERATED_LEARNING": "false"})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "USE_FEDERATED_LEARNING='false'" in result.stderr
    assert not (tmp_path / ".env").exists()
    assert not (tmp_path / "models").exists()
