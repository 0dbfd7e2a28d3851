"""The database password never reaches Dagster's storage, the code location or any output."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import zlib
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.faults.conftest import SMALL, TIMEOUT, RunCli

PASSWORD = "S3cretPw"


def _with_password(url: str) -> str:
    # Trust authentication ignores the password, so the URL still connects.
    return make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


def _stored_texts(dagster_home: Path) -> list[tuple[str, str]]:
    """Every file under DAGSTER_HOME, and every value of every SQLite table, decompressed
    (Dagster stores run and job snapshots zlib-compressed, so a plain grep would miss them)."""
    texts = []
    for path in dagster_home.rglob("*"):
        if not path.is_file():
            continue
        texts.append((str(path), path.read_bytes().decode("latin-1")))
        if path.suffix != ".db":
            continue
        with sqlite3.connect(path) as db:
            for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
                for row in db.execute(f'SELECT * FROM "{table}"'):
                    for value in row:
                        if isinstance(value, bytes):
                            with contextlib.suppress(zlib.error):
                                value = zlib.decompress(value)
                            value = value.decode("latin-1")
                        texts.append((f"{path}:{table}", str(value)))
    return texts


def test_password_from_dotenv_is_in_no_run_storage_and_no_output(
    run_cli: RunCli, postgres_url: str, tmp_path: Path
) -> None:
    # Configured through .env, the way an operator following the guide does it.
    (tmp_path / ".env").write_text(
        f"DATABASE_URL={_with_password(postgres_url)}\n" + "".join(f"{k}={v}\n" for k, v in SMALL.items())
    )
    outputs = [run_cli("migrate"), run_cli("demo", "--learners", "4", "--rounds", "1", timeout=TIMEOUT)]
    assert outputs[-1].returncode == 0, outputs[-1].stderr
    outputs.append(run_cli("run-federated-aggregation", "--min-learners", "100"))  # a refusal
    assert outputs[-1].returncode == 1

    texts = _stored_texts(tmp_path / "dagster_home")
    assert any("snapshots" in where for where, _ in texts)  # the search did reach run storage
    assert [where for where, text in texts if PASSWORD in text] == []
    for result in outputs:
        assert PASSWORD not in result.stdout + result.stderr


def test_code_location_binds_the_password_from_dotenv_only_as_an_env_var(postgres_url: str, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"DATABASE_URL={_with_password(postgres_url)}\n")
    script = (
        "from dagster._serdes import serialize_value\n"
        "from aivo_fl.config import load_settings\n"
        "from aivo_fl.definitions import build_definitions\n"
        "defs = build_definitions(load_settings())  # what the code location's `defs()` returns\n"
        "print(type(defs.resources['registry'].database_url).__name__)\n"
        "for job in defs.resolve_all_job_defs():\n"
        "    print(serialize_value(job.get_job_snapshot()))\n"
        "import os; from sqlalchemy.engine import make_url\n"
        "print(make_url(os.environ['DATABASE_URL']).database)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "EnvVar"
    assert PASSWORD not in result.stdout + result.stderr
    # ...and the reference resolves (in steps and sensors) to the database from .env.
    assert result.stdout.strip().splitlines()[-1] == make_url(postgres_url).database
