"""The database password never appears in the CLI's output: bad configuration, unreachable database."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import RunCli

SECRET = "TopS3cret"


def _assert_hidden(result: object, *secrets: str) -> str:
    output = result.stdout + result.stderr  # type: ignore[attr-defined]
    for secret in secrets:
        assert secret not in output, output
    return output


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://admin:{SECRET}@db/aivo",  # the example: unsupported driver
        f"mysql://admin:{SECRET}@db/aivo",  # unknown scheme
        f"postgresql://admin:{SECRET}@db:notaport/aivo",  # unparseable port
    ],
)
@pytest.mark.parametrize("verbose", [False, True])
def test_a_bad_database_url_is_refused_without_its_password(run_cli: RunCli, url: str, verbose: bool) -> None:
    result = run_cli(*(["--verbose"] if verbose else []), "stats", env={"DATABASE_URL": url})
    lines = _assert_hidden(result, SECRET).strip().splitlines()  # --verbose adds the traceback first
    assert result.returncode == 2 and lines[-1].startswith("✗ Invalid configuration: DATABASE_URL=")
    assert "admin:***@db" in lines[-1] and (verbose or len(lines) == 1)


def test_a_password_with_an_at_sign_is_refused_whole(run_cli: RunCli) -> None:
    result = run_cli("stats", env={"DATABASE_URL": "postgresql://admin:Tw0@Halves9@127.0.0.1:1/aivo"})
    output = _assert_hidden(result, "Tw0", "Halves9")
    assert result.returncode == 2 and "percent-encode it as %40" in output


def test_a_bad_url_in_dotenv_is_masked_too(run_cli_subprocess: RunCli, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"DATABASE_URL=postgresql+psycopg://admin:{SECRET}@db/aivo\n")
    result = run_cli_subprocess("stats")  # a real process, reading the .env of its working folder
    _assert_hidden(result, SECRET)
    assert result.returncode == 2


@pytest.mark.parametrize("command", ["stats", "eligible"])
@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://admin:{SECRET}@127.0.0.1:1/aivo",  # nothing listens
        f"postgresql://aivo_no_such_role:{SECRET}@127.0.0.1:5432/aivo",  # the server refuses the login
    ],
)
def test_an_unreachable_database_is_named_without_its_password(run_cli: RunCli, command: str, url: str) -> None:
    result = run_cli("--verbose", command, env={"DATABASE_URL": url}, timeout=120)
    output = _assert_hidden(result, SECRET)
    assert result.returncode == 3 and "Can't reach database: PostgreSQL at 127.0.0.1" in output
