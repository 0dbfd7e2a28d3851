"""URL passwords are hidden in messages and log lines, however the URL is written."""

from __future__ import annotations

import logging

import pytest

from aivo_fl.redaction import HidePasswords, hide_password, hide_secrets, url_password


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://admin:TopS3cret@db/aivo", "postgresql://admin:***@db/aivo"),
        ("postgresql+psycopg2://admin:TopS3cret@db:5432/aivo?x=1", "postgresql+psycopg2://admin:***@db:5432/aivo?x=1"),
        ("postgresql://admin:Tw0@Halves9@db/aivo", "postgresql://admin:***@db/aivo"),  # unencoded '@'
        ("postgresql://admin:a/b'c@db/aivo", "postgresql://admin:***@db/aivo"),
        ("DATABASE_URL='mysql://u:TopS3cret@h/d': unknown", "DATABASE_URL='mysql://u:***@h/d': unknown"),
        ("postgresql://admin@db/aivo", "postgresql://admin@db/aivo"),  # no password: unchanged
        ("sqlite:///./models/registry.db", "sqlite:///./models/registry.db"),
    ],
)
def test_hide_password(text: str, shown: str) -> None:
    assert hide_password(text) == shown


def test_a_password_with_a_space_is_hidden_by_value() -> None:
    url = "postgresql://admin:Top S3cret@db/aivo"
    assert url_password(url) == "Top S3cret"
    message = hide_secrets(f"DATABASE_URL={url!r}: could not parse 'Top S3cret'", url_password(url))
    assert "Top" not in message and "S3cret" not in message


def test_log_records_lose_their_passwords(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("aivo_fl.test_redaction")
    caplog.handler.addFilter(HidePasswords())
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("connecting to %s", "postgresql://admin:TopS3cret@db/aivo")
    assert "TopS3cret" not in caplog.text and "postgresql://admin:***@db/aivo" in caplog.text
